"""label_issues.html: the most suspicious images of a label audit, per head, with their given and predicted labels.

    python -m trainer.label_audit --data_dir out/data --job_dir out/audit --config demo   # writes the page

One self-contained file: thumbnails are embedded as JPEG data URIs (the page can be mailed or opened from a
bucket), every text goes through Jinja2's autoescaping (ids and class names come from the user's CSV).
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import jinja2
from PIL import Image

from trainer import atomic

THUMBNAIL_SIZE = (96, 192)  # width, height bound: person crops are about twice as tall as wide

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label audit: {{ dataset }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 10em; font-size: 0.8em; }
figure img { display: block; max-width: 100%; }
.given { color: #a00; } .predicted { color: #060; }
</style></head><body>
<h1>Label audit: {{ dataset }}</h1>
<p>{{ examples }} train examples, out-of-fold probabilities from {{ folds }} folds split by {{ folds_by }};
issues found by cleanlab (confident learning). Quality is the out-of-fold probability of the given label(s):
the lower, the more suspicious. All flagged examples are in label_issues.csv.</p>
<table id="summary"><tr><th>head</th><th>kind</th><th>examples audited</th><th>issues found</th><th>note</th></tr>
{% for name, h in heads.items() %}<tr><td>{{ name }}</td><td>{{ h.kind }}</td><td>{{ h.examples_audited }}</td>
<td>{{ h.issues_found }}</td><td>{{ h.get("skipped", "") }}</td></tr>
{% endfor %}</table>
{% for name, cards in sections.items() %}
<h2>{{ name }}: the {{ cards | length }} most suspicious of {{ heads[name].issues_found }} flagged</h2>
<div class="grid">{% for c in cards %}
<figure>{% if c.src %}<img src="{{ c.src }}" alt="{{ c.id }}">{% endif %}
<figcaption>#{{ c.rank }} {{ c.id }}<br><span class="given">given: {{ c.given }}</span><br>
<span class="predicted">predicted: {{ c.predicted }}</span><br>quality {{ "%.3f" % c.quality }}</figcaption></figure>
{% endfor %}</div>
{% endfor %}
</body></html>
"""


def thumbnail_uri(jpeg: bytes) -> str:
    """A small JPEG data URI of the image."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    image.thumbnail(THUMBNAIL_SIZE)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def shown_rows(rows: Sequence[Mapping], per_head: int) -> list[Mapping]:
    """The first `per_head` rows of each head (rows come most suspicious first within a head)."""
    return [r for r in rows if r["rank"] <= per_head]


def write_page(path: str, rows: Sequence[Mapping], summary: Mapping, jpegs: Mapping[str, bytes]) -> None:
    """The page for `rows` (those to show, see shown_rows), `summary` (label_issues.json's content) and the
    JPEG bytes of the shown images by id."""
    sections: dict[str, list[dict]] = {}
    for r in rows:
        sections.setdefault(r["head"], []).append({**r, "src": thumbnail_uri(jpegs[r["id"]]) if r["id"] in jpegs
                                                   else ""})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE).render(dataset=summary["dataset"], examples=summary["examples_audited"],
                                             folds=summary["folds"], folds_by=summary["folds_by"],
                                             heads=summary["heads"], sections=sections)
    atomic.write_text(path, html)

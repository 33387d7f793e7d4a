"""label_issues.html: the most suspicious images of a label audit, per head, with their given and predicted labels.

    python -m trainer.label_audit --data_dir out/data --job_dir out/audit --config demo   # writes the page

One self-contained file: thumbnails are embedded as JPEG data URIs (the page can be mailed or opened from a
bucket). The jinja2 template trainer/evaluation/templates/label_issues.html renders it with autoescaping on
(ids and class names come from the user's CSV).
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

from PIL import Image

from trainer.evaluation import pages
from trainer.jobdir import atomic

THUMBNAIL_SIZE = (96, 192)  # width, height bound: person crops are about twice as tall as wide

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
    html = pages.render(
        "label_issues.html",
        dataset=summary["dataset"], examples=summary["examples_audited"], folds=summary["folds"],
        folds_by=summary["folds_by"], heads=summary["heads"], sections=sections)
    atomic.write_text(path, html)

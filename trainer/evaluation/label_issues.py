"""Label issues from out-of-fold probabilities: cleanlab's confident learning per head, as CSV and JSON.

    python -m trainer.label_audit --data_dir out/data --job_dir out/audit --config demo   # calls find_issues

Single-label heads go through `cleanlab.filter.find_label_issues` (prune by noise rate) with the self-confidence
quality score (the out-of-fold probability of the given label); multi-label heads through cleanlab's multi-label
API, which treats each label as a binary task and scores an example by its least confident label. An issue is
an (example, head) pair: an image may be flagged on one head and trusted on the others.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from typing import Mapping, Sequence

import numpy as np

from tfds_person_attrs import csv_cells
from trainer.jobdir import atomic
from trainer.objective.thresholds import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)
CSV_FIELDS = ("id", "head", "rank", "given", "predicted", "quality")


def _names(classes: Sequence[str], on: np.ndarray) -> str:
    """A multi-label set as text: its class names joined by '|', '(none)' when empty."""
    return "|".join(c for c, o in zip(classes, on) if o) or "(none)"


def head_issues(attribute, labels: np.ndarray, probs: np.ndarray) -> dict:
    """{'flagged': bool [N], 'quality': [N] (low = suspicious), 'given', 'predicted': [N] text} for one head."""
    probs = np.asarray(probs, dtype=np.float64)
    if attribute.is_multi_label:
        # optional: the audit extra (cleanlab)
        from cleanlab.multilabel_classification.filter import find_label_issues

        # optional: the audit extra (cleanlab)
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        on = np.asarray(labels) >= DEFAULT_THRESHOLD
        label_lists = [list(np.flatnonzero(row)) for row in on]
        flagged = find_label_issues(label_lists, probs)
        quality = get_label_quality_scores(label_lists, probs)
        predicted = probs >= DEFAULT_THRESHOLD  # the default decision threshold
        given = [_names(attribute.classes, row) for row in on]
        predicted_text = [_names(attribute.classes, row) for row in predicted]
    else:
        # optional: the audit extra (cleanlab)
        from cleanlab.filter import find_label_issues

        # optional: the audit extra (cleanlab)
        from cleanlab.rank import get_label_quality_scores

        labels = np.asarray(labels, dtype=np.int64)
        probs = probs / probs.sum(axis=1, keepdims=True)  # softmax rows sum to 1 only up to rounding
        flagged = find_label_issues(labels, probs)
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
        given = [attribute.classes[i] for i in labels]
        predicted_text = [attribute.classes[i] for i in probs.argmax(axis=1)]
    return {"flagged": np.asarray(flagged, dtype=bool), "quality": np.asarray(quality, dtype=np.float64),
            "given": given, "predicted": predicted_text}


def find_issues(schema, ids: Sequence[str], labels: Mapping[str, np.ndarray],
                probs: Mapping[str, np.ndarray]) -> tuple[list[dict], dict]:
    """(rows: one per flagged (example, head), most suspicious first within each head; per-head summary).

    A head cleanlab cannot audit (e.g. a class too rare for its noise estimate) is kept in the summary with the
    reason instead of its counts, and a warning names it."""
    rows, heads = [], {}
    for a in schema.attributes:
        kind = "multi" if a.is_multi_label else "single"
        try:
            found = head_issues(a, labels[a.name], probs[a.name])
        except ValueError as e:
            log.warning("label audit: head %s skipped: cleanlab cannot audit it (%s)", a.name, e)
            heads[a.name] = {"kind": kind, "examples_audited": 0, "issues_found": 0, "skipped": str(e)}
            continue
        flagged = np.flatnonzero(found["flagged"])
        flagged = flagged[np.argsort(found["quality"][flagged], kind="stable")]
        for rank, i in enumerate(flagged, start=1):
            rows.append({"id": ids[i], "head": a.name, "rank": rank, "given": found["given"][i],
                         "predicted": found["predicted"][i], "quality": round(float(found["quality"][i]), 6)})
        heads[a.name] = {"kind": kind, "examples_audited": len(ids), "issues_found": int(len(flagged)),
                         "issue_rate": round(len(flagged) / max(1, len(ids)), 4)}
    return rows, heads


def write_csv(path: str, rows: Sequence[Mapping], fields: Sequence[str] = CSV_FIELDS) -> None:
    """label_issues.csv: CSV_FIELDS, one row per flagged (example, head); `id` is the image path of the CSV.
    Cells a spreadsheet would run as a formula are quoted (tfds_person_attrs.csv_cells; the trainer reads them back
    as written)."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_cells.text_row(r) for r in rows)  # ids and class names as text, never a spreadsheet formula
    atomic.write_text(path, out.getvalue())


def write_summary(path: str, summary: Mapping) -> None:
    atomic.write_text(path, json.dumps(summary, indent=2))

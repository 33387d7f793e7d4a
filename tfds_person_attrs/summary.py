"""The one-screen summary a build prints at its end (the same numbers are in build_summary.json).

    python -m tfds_person_attrs.summary out/data/person_attrs/hvc/1.0.0/build_summary.json
"""

from __future__ import annotations

import json
import sys


def format_summary(s: dict) -> str:
    lines = [
        f"person_attrs build summary ({s.get('dataset_dir', '')})",
        f"  source       {s['source']['file']} (sha256 {s['source']['sha256']})" if "source" in s else "",
        f"  CSV rows     {s['csv_rows']:>8}",
        f"  written      {s['written']:>8}   " + "  ".join(f"{k} {v}" for k, v in s["splits"].items()),
        f"  skipped      {s['skipped']:>8}",
    ]
    for reason, n in s["skipped_by_reason"].items():
        first = s["skipped_examples"][reason][0]
        lines.append(f"    {reason:<20} {n:>6}   e.g. {first['message']}")
    converted = s.get("converted", {})
    if converted:
        total = s.get("converted_images", sum(converted.values()))
        lines.append(f"  re-encoded   {total:>8}   as RGB JPEG (an image may count under two reasons below)")
    for reason, n in converted.items():
        ex = s["converted_examples"][reason][0]
        what = ("turned upright by its EXIF orientation" if reason == "rotated"
                else f"converted from {reason.replace('_', ' ')}")
        lines.append(f"    {what}: {n} (e.g. row {ex['row']} {ex['id']})")
    g = s["groups"]
    lines.append(f"  groups       {g['count']:>8}   {g['multi_image_groups']} hold more than one image; "
                 f"sizes {g['size_histogram']}")
    lines.append("  every CSV row accounted for: " + ("yes" if s["accounted"] else "NO - please report this as a bug"))
    if "seconds" in s:
        lines.append(f"  took {s['seconds']} s; every skipped row is listed in build_skipped.csv beside the dataset")
    return "\n".join(line for line in lines if line)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(format_summary(json.load(f)))

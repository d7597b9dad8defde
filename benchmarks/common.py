"""Shared plumbing of the benchmark scripts: the --quick/--json flags and the table."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANS = sorted((ROOT / "scans").glob("*.h5"))
SHARED_DATA = ROOT.parent / "shared" / "data"


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small settings for a fast check")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this path")
    if extra:
        extra(parser)
    return parser.parse_args()


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def report(rows: list[dict], json_path: Path | None, title: str) -> None:
    """Print rows as an aligned table and optionally write them as JSON."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"title": title, "argv": sys.argv, "rows": rows}, indent=1,
                                        default=str))

"""`make perf`: run every benchmarks/perf/perf_*.py, print ours-vs-peer ratios, write results/perf.json.

Each perf module exposes ``run(quick: bool = False) -> list[dict]`` with rows
{topic, case, impl, seconds, peak_mb?, error?, note?}; "ours" rows are compared with every other impl
of the same topic and case (ratio = peer seconds / our seconds, > 1 means we are faster).
Timings are medians of repeats measured side by side in this process; nothing here is asserted.

    python -m benchmarks.perf [--quick] [--only similarity,maml]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks.core.quiet import silence_known_noise
from benchmarks.core.runstore import atomic_write_json, results_root


def discover() -> list[str]:
    package = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(package)]) if m.name.startswith("perf_"))


def ratio_lines(rows: list[dict]) -> list[str]:
    lines = []
    keyed: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        keyed.setdefault((row["topic"], row["case"]), {})[row["impl"]] = row
    for (topic, case), impls in keyed.items():
        ours = impls.get("ours")
        for impl, row in impls.items():
            ratio = ""
            if ours and impl != "ours" and ours.get("seconds") and row.get("seconds"):
                ratio = f"{row['seconds'] / ours['seconds']:.2f}x"
            err = f"{row['error']:.1e}" if isinstance(row.get("error"), float) else ""
            mem = f"{row['peak_mb']:.0f}" if isinstance(row.get("peak_mb"), int | float) else ""
            secs = f"{row['seconds']:.4g}" if isinstance(row.get("seconds"), int | float) else "-"
            lines.append(f"{topic:14s} {case:30s} {impl:22s} {secs:>10s} {mem:>8s} {err:>9s} {ratio:>8s}  "
                         f"{row.get('note', '')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf")
    parser.add_argument("--quick", action="store_true", help="only the small cases (about a minute each)")
    parser.add_argument("--only", default="", help="comma-separated topics, e.g. similarity,maml")
    args = parser.parse_args(argv)
    silence_known_noise()
    wanted = {f"perf_{t}" for t in args.only.split(",") if t}
    rows: list[dict] = []
    print(f"{'topic':14s} {'case':30s} {'impl':22s} {'seconds':>10s} {'peak MB':>8s} {'error':>9s} "
          f"{'peer/ours':>8s}")
    for name in discover():
        if wanted and name not in wanted:
            continue
        start = time.time()
        try:
            module = importlib.import_module(f"benchmarks.perf.{name}")
            new_rows = module.run(quick=args.quick)
        except Exception:  # noqa: BLE001 - one failing script must not hide the others
            traceback.print_exc()
            print(f"{name}: FAILED (see trace above)", file=sys.stderr)
            continue
        rows += new_rows
        for line in ratio_lines(new_rows):
            print(line)
        print(f"  ({name}: {time.time() - start:.0f}s)", file=sys.stderr)
    out = results_root() / "perf.json"
    atomic_write_json(out, merge_results(out, rows, quick=args.quick))
    print(f"\nwritten: {out}")
    return 0


def merge_results(path: Path, rows: list[dict], quick: bool) -> dict:
    """perf.json with the topics just measured replaced and the others kept (``--only`` adds, never erases).

    Every row carries the time and mode (quick or full) it was measured in."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = [{**row, "measured": stamp, "quick": quick} for row in rows]
    kept: list[dict] = []
    if path.exists():
        try:
            kept = json.loads(path.read_text()).get("rows", [])
        except (json.JSONDecodeError, AttributeError):
            kept = []  # an unreadable old file: replaced by this run's rows
    fresh = {row.get("topic") for row in rows}
    return {"time": stamp, "rows": [row for row in kept if row.get("topic") not in fresh] + rows}


if __name__ == "__main__":
    sys.exit(main())

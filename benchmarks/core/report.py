"""Markdown report writing shared by the studies: header (what ran, where, how long), the findings
section (completeness banner, verdicts with test, unit, n, MDE and the paper's number), tables and
figures. Reports render on GitHub; figures are PNGs under ``figures/`` next to ``report.md``."""

from __future__ import annotations

import csv
import io
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.core.config import dump
from benchmarks.core.runstore import atomic_write_bytes, atomic_write_text


def versions() -> str:
    """Installed versions of the packages a result depends on (read from package metadata, not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("lightning", "timm", "segmentation_models_pytorch", "torchmetrics", "wandb", "learn2learn"):
        try:
            parts.append(f"{name} {version(name.replace('_', '-'))}")
        except PackageNotFoundError:  # optional in a report header
            pass
    return ", ".join(parts)


def hardware() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


def header(title: str, results) -> str:
    """Title, what ran (k of n planned runs, profile, seeds, wall time), versions, hardware, config."""
    runs, cfg = results.runs, results.cfg
    wall = sum(r["metrics"].get("wall_seconds", 0.0) for r in runs)
    seeds = sorted({r["params"].get("seed") for r in runs if "seed" in r["params"]}, key=str)
    return "\n".join([
        f"# {title}", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {results.completeness} of the current plan · profile "
        f"`{results.profile}` · seeds {seeds} · total run wall time {wall / 60:.1f} min", "",
        f"- Versions: {versions()}", f"- Hardware: {hardware()}", "",
        "<details><summary>Resolved config</summary>", "", "```yaml", dump(cfg).rstrip(), "```", "",
        "</details>", "",
    ])


def findings_section(findings: Sequence, results, protocol: str) -> str:
    """The verdicts, preceded by a warning when the runs cannot decide them (smoke profile, missing runs)."""
    lines = ["## Findings", ""]
    if not results.complete:
        lines += [f"> **Incomplete: {results.completeness}.** The verdicts below are computed from these runs "
                  "only and are not the study's result.", ""]
    lines += [f"Protocol, claims and margins: `{protocol}` in the transfer-suite repository. Unit of replication "
              "and n are per finding; `inconclusive` rows give the smallest detectable effect (MDE, 80% "
              "power) or the n that would decide.", ""]
    lines.append(table(["id", "finding", "verdict", "effect (95% CI)", "test", "unit", "n", "MDE / n needed",
                        "paper"],
                       [(f.id, f.claim, f"**{f.verdict}**", f.effect_text(), f.test, f.unit, f.n, f.power_text(),
                         f"{f.paper}{': ' + f.paper_value if f.paper_value else ''}") for f in findings]))
    details = [f"- **{f.id}**: {f.detail}" for f in findings if f.detail]
    margins = [f"- **{f.id}** {_margin_text(f)}: {f.margin_reason}" for f in findings if f.margin is not None]
    if details:
        lines += ["", *details]
    if margins:
        lines += ["", "Margins and thresholds (fixed in the protocol before any run, with their reasons):", *margins]
    return "\n".join(lines) + "\n"


def _margin_text(finding) -> str:
    if "TOST" in finding.test:
        return f"equivalence margin ±{abs(finding.margin):g}"
    return f"threshold {finding.margin:g} (one-sided)"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def figure(path: Path, report_dir: Path, caption: str) -> str:
    return f"![{caption}]({path.relative_to(report_dir).as_posix()})\n\n*{caption}*\n"


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(headers)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def terminal_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A compact fixed-width table for the end of a benchmark run."""
    text = [[str(h) for h in headers]] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
                                          for r in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in text]

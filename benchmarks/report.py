"""Markdown report writing shared by the studies: header (what ran, where, how long), tables, figures,
findings. Reports render on GitHub; figures are PNGs under ``figures/`` next to ``report.md``."""

from __future__ import annotations

import csv
import io
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.config import dump
from benchmarks.runstore import atomic_write_bytes, atomic_write_text


@dataclass
class Finding:
    """One finding of a study with its computed verdict and the numbers behind it."""

    claim: str
    verdict: str  # holds | does not hold | inconclusive
    effect: str  # effect size with CI, as text
    n: str
    detail: str = ""


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


def header(title: str, cfg: dict, runs: list[dict]) -> str:
    wall = sum(r["metrics"].get("wall_seconds", 0.0) for r in runs)
    seeds = sorted({r["params"].get("seed") for r in runs if "seed" in r["params"]})
    return "\n".join([
        f"# {title}", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} finished runs · profile "
        f"`{cfg.get('profile')}` · seeds {seeds} · total run wall time {wall / 60:.1f} min", "",
        f"- Versions: {versions()}", f"- Hardware: {hardware()}", "",
        "<details><summary>Resolved config</summary>", "", "```yaml", dump(cfg).rstrip(), "```", "",
        "</details>", "",
    ])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def findings_table(findings: Sequence[Finding]) -> str:
    return table(["finding", "verdict", "effect (95% CI)", "n", "detail"],
                 [(f.claim, f"**{f.verdict}**", f.effect, f.n, f.detail) for f in findings])


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

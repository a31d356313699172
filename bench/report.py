"""The benchmark report: Markdown sections with tables and PNG charts in one folder.

Every suite adds its tables and charts to one ``Report``; ``write`` puts ``report.md`` and
the charts in ``bench/results/<date>/`` (or the folder given), so a run is one folder to read,
commit or compare.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
Row = Sequence[object]


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: nothing measured
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; Python {sys.version.split()[0]}; "
        f"{platform.system()} {platform.release()}; llmlb at {commit or 'unknown'}"
    )


@dataclass
class Report:
    folder: Path
    quick: bool = False
    parts: list[str] = field(default_factory=list)

    def section(self, title: str, text: str = "") -> None:
        self.parts.append(f"## {title}\n\n{text}".rstrip() + "\n")
        print(f"\n## {title}\n{text}".rstrip(), flush=True)

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")
        print(text.rstrip(), flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Row]) -> None:
        self.add(table(headers, rows))

    def chart(self, name: str, title: str, xlabel: str, ylabel: str,
              series: dict[str, tuple[Sequence[float], Sequence[float]]],
              log_y: bool = False) -> None:  # fmt: skip
        """A line chart, one line a series of (x values, y values), saved as ``name``.png."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for label, (xs, ys) in series.items():
            axes.plot(list(xs), list(ys), marker="o", label=label)
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if log_y:
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        self.folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.folder / f"{name}.png")
        plt.close(figure)
        self.add(f"![{title}]({name}.png)")

    def write(self, title: str, results: Path | None = None) -> Path:
        """``report.md`` in the folder; with ``results``, also that file, whose chart links
        point into the folder (bench/RESULTS.md: the last full run, committed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        mode = "quick (`--quick`: short runs, fewer points)" if self.quick else "full"
        head = (
            f"# {title}\n\nMachine: {machine()}. Mode: {mode}. Reproduce: `make bench` "
            f"(or `python -m bench all`); every figure below comes from that one run.\n"
        )
        text = "\n".join([head, *self.parts])
        path = self.folder / "report.md"
        path.write_text(text)
        if results is not None:
            prefix = os.path.relpath(self.folder, results.parent)
            results.write_text(re.sub(r"\]\(([\w.-]+\.png)\)", rf"]({prefix}/\1)", text))
        return path

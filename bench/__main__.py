"""The benchmark suite's one entry point: ``python -m bench [suite ...] [--quick]``.

Suites: router, node, routing, fleet, scale, soak, distribution; ``all`` (the default) runs each
in that order. ``gpu`` (``make gpu-check``) runs only when named: it needs a GPU. The report
(Markdown and PNG charts) goes to ``bench/results/<date>/``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.report import ROOT, Report

SUITES = {
    "router": "bench.router_overhead",
    "node": "bench.node_throughput",
    "routing": "bench.routing_quality",
    "fleet": "bench.fleet_sim",
    "scale": "bench.control_plane",
    "soak": "bench.soak",
    "distribution": "bench.distribution",
}
# Run only when named: gpu needs hardware the others do not; history fills 10 million rows
# twice and writes for 10 minutes (about 25 minutes in all).
ON_REQUEST = {"gpu": "bench.gpu_check", "history": "bench.history_scale"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", default=["all"],
                        choices=["all", *SUITES, *ON_REQUEST])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short runs (under 3 minutes)")
    parser.add_argument("--out", type=Path, help="report folder (default bench/results/<date>)")
    args = parser.parse_args(argv)
    names = list(SUITES) if "all" in args.suites else args.suites
    folder = args.out or ROOT / "bench" / "results" / datetime.date.today().isoformat()
    report = Report(folder, quick=args.quick)
    started = time.monotonic()
    failed = []
    for name in names:
        began = time.monotonic()
        try:
            importlib.import_module({**SUITES, **ON_REQUEST}[name]).run(report, args.quick)
        except Exception:  # one broken suite must not cost the others' figures
            traceback.print_exc()
            failed.append(name)
            report.section(f"{name}: failed", "This suite failed; see the run's output.")
        print(f"[{name}: {time.monotonic() - began:.0f} s]", flush=True)
        report.write("llmlb benchmarks (partial)")
    report.add(f"\nWhole run: {time.monotonic() - started:.0f} s.")
    # A full run of every suite into the default folder is the one bench/RESULTS.md shows.
    complete = names == list(SUITES) and not (args.quick or args.out or failed)
    results = ROOT / "bench" / "RESULTS.md" if complete else None
    path = report.write("llmlb benchmarks", results)
    print("report:", path)
    if failed:
        sys.exit(f"failed suites: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])

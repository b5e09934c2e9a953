"""`python -m avatar_local.bench` (`make bench`): every measurement in turn, one table, written to docs/performance.md.

Options size the run (the defaults are the issues': 512 MiB copies, 100,000 finished tasks, a batch of 120 pairs);
`--quick` runs everything tiny, to check the benchmark itself works (the smoke test does that).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from avatar_local.batch import BatchConfig
from avatar_local.bench.common import MIB, ROOT, Section
from avatar_local.bench.report import markdown, table

COMMAND = "make bench"
# In the order they run; "snapstart" (7) measures nothing: it is computed from "cold" (1) and "cost" (5) of the run.
SECTIONS = ["cold", "copy", "poll", "batch", "cost", "snapstart"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_local.bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md", help="where the table goes")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the cheap measurements")
    # Imports take a few hundred ms on a machine others share: more rounds steady the medians.
    parser.add_argument("--cold-repeats", type=int, default=11, help="rounds of imports for the cold start")
    parser.add_argument("--copy-repeats", type=int, default=3, help="repeats of each copy")
    parser.add_argument("--copy-mib", type=int, nargs=2, default=(64, 512), metavar=("SMALL", "LARGE"))
    parser.add_argument("--finished", type=int, default=100_000, help="finished tasks in the poller's table")
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=BatchConfig.pairs, help="pairs in the batch")
    parser.add_argument("--time-factor", type=float, default=BatchConfig.time_factor, help="the batch's speed-up")
    parser.add_argument("--render-seconds", type=float, default=BatchConfig.render_seconds, help="simulated")
    parser.add_argument("--tasks", type=int, default=5, help="tasks measured for CPU and cost")
    parser.add_argument("--quick", action="store_true", help="everything tiny: checks that the benchmark runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.cold_repeats, args.copy_repeats, args.copy_mib = 1, 1, 1, (6, 12)
        args.finished, args.in_flight, args.pairs, args.render_seconds, args.tasks = 200, 5, 3, 60.0, 1
    only = set(args.only or SECTIONS)

    def say(line: str) -> None:
        print(line, flush=True)

    started = time.monotonic()
    sections: list[Section] = []
    workdir = Path(tempfile.mkdtemp(prefix="avatar-bench-"))
    try:
        if "cold" in only:
            from avatar_local.bench import coldstart

            say("1. cold start")
            sections.append(
                coldstart.measure(
                    args.cold_repeats, workdir / "cold", say, no_bytecode_repeats=min(3, args.cold_repeats)
                )
            )
        if "copy" in only:
            from avatar_local.bench import finalize_copy

            say("2. finalize copy")
            (workdir / "copy").mkdir()
            sizes = tuple(size * MIB for size in args.copy_mib)
            sections.append(finalize_copy.measure(args.copy_repeats, workdir / "copy", say, sizes))
        if "poll" in only:
            from avatar_local.bench import poller_cost

            say("3. poller cost")
            sections.append(poller_cost.measure(args.repeats, say, finished=args.finished, in_flight=args.in_flight))
        if "batch" in only:
            from avatar_local.bench import batch

            say("4. batch larger than the quota")
            config = BatchConfig(pairs=args.pairs, time_factor=args.time_factor, render_seconds=args.render_seconds)
            sections.append(batch.measure(config, workdir, say))
        if "cost" in only:
            from avatar_local.bench import task_cost

            say("5./6. handler CPU and AWS cost per task")
            sections.extend(task_cost.measure(args.tasks, workdir, say))
        if "snapstart" in only:
            from avatar_local.bench import snapstart

            say("7. SnapStart (estimate), from sections 1 and 5 of this run")
            estimate = snapstart.estimate(sections, say)
            if estimate is not None:
                sections.append(estimate)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    command = COMMAND if not argv else f"{COMMAND}  # python -m avatar_local.bench {' '.join(argv)}"
    print()
    print(table(sections))
    print(f"\n{sum(1 for s in sections for f in s.figures if f.met is False)} target(s) missed; {elapsed:.0f} s")
    if not args.no_write:
        machine = f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}"
        args.out.write_text(
            markdown(sections, command=command, seconds=elapsed, machine=machine, when=datetime.now(UTC))
        )
        print(f"written to {args.out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

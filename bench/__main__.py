"""``python -m bench run [--quick] [--out DIR] [--only SCENARIO]`` and ``python -m bench setup-glance``."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .images import hash_speed
from .machine import describe
from .progress import Progress
from .report import write_report
from .runner import Profile, RunContext, ScenarioResult
from .scenarios import SCENARIOS

__all__ = ["main", "run_bench"]


def run_bench(out: Path, *, quick: bool, only: Sequence[str] = (), systems: Sequence[str] = (),
              progress: Progress | None = None, work: Path | None = None,
              profile: Profile | None = None) -> tuple[list[ScenarioResult], dict[str, Path]]:
    """Run the chosen scenarios (all when ``only`` is empty) and write the report into ``out``.

    ``systems`` limits the systems (all when empty); ``profile`` overrides the sizes.
    Every server the run starts is stopped before this returns, even on errors.
    """
    progress = progress or Progress()
    names = list(only) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    owned_work = work is None
    work = work or Path(tempfile.mkdtemp(prefix="imgproxy-bench-"))
    ctx = RunContext(work, profile or Profile.make(quick), progress, tuple(systems))
    results: list[ScenarioResult] = []
    try:
        for name in names:
            progress.begin(name)
            try:
                results.append(SCENARIOS[name](ctx))
            except Exception as exc:  # record and go on: one scenario must not hide the others
                r = ScenarioResult(name, "error", ["system", "status"])
                r.not_run("all", f"scenario crashed: {type(exc).__name__}: {str(exc)[:300]}")
                results.append(r)
                progress.alarm(f"{name} crashed: {exc}")
    finally:
        ctx.stop_all()
        if owned_work:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "started": started, "quick": quick, "scenarios": names, "systems": list(systems) or "all",
        "profile": ctx.profile.__dict__, "machine": describe(),
        "hash_speed": hash_speed(32 << 20 if quick else 256 << 20),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    paths = write_report(out, meta, results)
    return results, paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start everything on loopback, run the scenarios, write a report")
    run.add_argument("--quick", action="store_true", help="small sizes, fewer nodes, 1 repeat (< 5 min)")
    run.add_argument("--out", type=Path, default=None, help="report dir (default bench-results/<timestamp>)")
    run.add_argument("--only", action="append", default=[], metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}; repeatable")
    run.add_argument("--systems", default="", help="comma-separated system names (default: all)")
    sub.add_parser("setup-glance", help="install the pinned Glance + uWSGI venv (once, ~80 s)")
    args = parser.parse_args(argv)
    if args.command == "setup-glance":
        from .systems.glance import setup_glance

        print(setup_glance())
        return 0
    out = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    systems = [s for s in args.systems.split(",") if s]
    results, paths = run_bench(out, quick=args.quick, only=args.only, systems=systems)
    print(paths["md"].read_text())
    print(f"report: {out}", file=sys.stderr)
    failed = [f for r in results for f in r.failures]
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

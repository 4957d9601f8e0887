"""``python -m bench run [--quick] [--out DIR] [--only SCENARIO] [--size 1GiB]``, ``python -m bench chaos``,
``python -m bench setup-glance``, ``setup-swift``, ``setup-keystone``, ``setup-tempest`` and
``python -m bench tempest``."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .images import hash_speed
from .machine import commit, describe
from .progress import Progress
from .report import write_report
from .runner import Profile, RunContext, ScenarioResult
from .scenarios import SCENARIO_SYSTEMS, SCENARIOS

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
        for k, name in enumerate(names, 1):
            progress.begin(name, k, len(names))
            try:
                results.append(SCENARIOS[name](ctx))
            except Exception as exc:  # record and go on: one scenario must not hide the others
                r = ScenarioResult(name, "error", ["system", "status"])
                r.not_run("all", f"scenario crashed: {type(exc).__name__}: {str(exc)[:300]}")
                results.append(r)
                progress.alarm(f"{name} crashed: {exc}")
            ctx.release({s for later in names[k:] for s in SCENARIO_SYSTEMS.get(later, ())})
    finally:
        ctx.stop_all()
        if owned_work:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "started": started, "quick": quick, "scenarios": names, "systems": list(systems) or "all",
        "profile": ctx.profile.__dict__, "machine": describe(), "commit": commit(),
        "hash_speed": hash_speed(32 << 20 if quick else 256 << 20),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    paths = write_report(out, meta, results)
    return results, paths


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"256MiB"``, ``"64m"`` or a byte count -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1GiB, 256MiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start everything on loopback, run the scenarios, write a report")
    run.add_argument("--quick", action="store_true", help="small sizes, fewer nodes, 1 repeat (< 5 min)")
    run.add_argument("--out", type=Path, default=None, help="report dir (default bench-results/<timestamp>)")
    run.add_argument("--only", action="append", default=[], metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}; repeatable")
    run.add_argument("--systems", default="", help="comma-separated system names (default: all)")
    run.add_argument("--size", type=parse_size, default=None, metavar="SIZE",
                     help="image size for cached_download, warm_reads, upload and stores, e.g. 1GiB or 256MiB")
    run.add_argument("--repeats", type=int, default=None, help="repeats per step (default: 1 quick, 3 full)")
    run.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                     help="metadata: also run the imgproxy checkout in DIR (e.g. a git worktree of an older commit)")
    sub.add_parser("setup-glance", help="install the pinned Glance + uWSGI venv (once, ~80 s)")
    sub.add_parser("setup-swift", help="install the pinned Swift all-in-one venv (once, ~30 s)")
    sub.add_parser("setup-keystone", help="install the pinned Keystone venv (once, ~60 s)")
    sub.add_parser("setup-tempest", help="install the pinned tempest venv (once, ~60 s)")
    tempest = sub.add_parser("tempest", help="tempest's image API tests against imgproxy and the real Glance, "
                                             "one Keystone; counts per system")
    tempest.add_argument("--out", type=Path, default=None, help="report dir (default bench-results/tempest-<timestamp>)")
    tempest.add_argument("--systems", default="imgproxy,glance")
    tempest.add_argument("--concurrency", type=int, default=2)
    tempest.add_argument("--regex", default=None, help="tests to run (default: tempest.api.image)")
    chaos = sub.add_parser("chaos", help="kill -9 the service under load, again and again, and check it each time")
    chaos.add_argument("--crashes", type=int, default=100, help="crash rounds (default 100)")
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--fuzz", type=int, default=10000, help="fuzzed requests (default 10000)")
    chaos.add_argument("--out", type=Path, default=None, help="report dir (default bench-results/chaos-<timestamp>)")
    args = parser.parse_args(argv)
    if args.command == "chaos":
        return _chaos(args)
    if args.command == "setup-glance":
        from .systems.glance import setup_glance

        print(setup_glance())
        return 0
    if args.command == "setup-swift":
        from .servers.swift import setup_swift

        print(setup_swift())
        return 0
    if args.command == "setup-tempest":
        from .tempest import setup_tempest

        print(setup_tempest())
        return 0
    if args.command == "tempest":
        return _tempest(args)
    if args.command == "setup-keystone":
        from .servers.keystone import setup_keystone

        print(setup_keystone())
        return 0
    out = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    systems = [s for s in args.systems.split(",") if s]
    profile = Profile.make(args.quick)
    if args.size is not None:
        profile = dataclasses.replace(profile, cached_size=args.size, warm_image_size=args.size, upload_sizes=(args.size,),
                                      stores_image_size=args.size)
    if args.repeats is not None:
        profile = dataclasses.replace(profile, repeats=max(1, args.repeats))
    if args.baseline is not None:
        profile = dataclasses.replace(profile, meta_baseline=str(args.baseline.resolve()))
    results, paths = run_bench(out, quick=args.quick, only=args.only, systems=systems, profile=profile)
    print(paths["md"].read_text())
    print(f"report: {out}", file=sys.stderr)
    failed = [f for r in results for f in r.failures]
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


def _fuzz(examples: int) -> dict[str, object]:
    """The property-based fuzzing of every route (tests/test_fuzz_api.py) at ``examples`` requests."""
    import os
    import subprocess

    env = {**os.environ, "IMGPROXY_FUZZ_EXAMPLES": str(examples)}
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_fuzz_api.py"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    line = next((l for l in run.stdout.splitlines() if l.startswith("fuzz:")), "")
    out: dict[str, object] = {"ok": run.returncode == 0, "summary": line, "seconds": round(time.monotonic() - t0)}
    if run.returncode != 0:
        out["failure"] = run.stdout[-1500:]
    return out


def _tempest(args: argparse.Namespace) -> int:
    from .tempest import IMAGE_TESTS, run_tempest

    out = args.out or Path("bench-results") / time.strftime("tempest-%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="imgproxy-tempest-") as tmp:
        results = run_tempest(out, Path(tmp), systems=[s for s in args.systems.split(",") if s],
                              concurrency=args.concurrency, regex=args.regex or IMAGE_TESTS)
    print((out / "tempest.md").read_text())
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(r.ran for r in results) else 1


def _chaos(args: argparse.Namespace) -> int:
    """Every part of the campaign in turn; the summary goes to ``chaos.json`` and ``chaos.md``."""
    import json

    from .chaos import can_mount, run_attacks, run_crashes, run_disk_full, run_faults

    out = args.out or Path("bench-results") / time.strftime("chaos-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"machine": describe()}
    violations: list[str] = []
    with tempfile.TemporaryDirectory(prefix="imgproxy-chaos-") as tmp:
        work = Path(tmp)
        crashes = run_crashes(work / "crashes", rounds=args.crashes, seed=args.seed)
        summary["crashes"] = crashes.as_row()
        violations += [f"crashes: {v}" for v in crashes.violations]
        faults = run_faults(work / "faults", seed=args.seed)
        summary["faults"] = faults.as_row()
        violations += [f"faults: {v}" for v in faults.violations]
        if can_mount(work):
            full = run_disk_full(work / "disk-full", seed=args.seed)
            summary["disk_full"] = full.as_row()
            violations += [f"disk full: {v}" for v in full.violations]
        else:
            summary["disk_full"] = "not run: cannot mount tmpfs here (needs root or CAP_SYS_ADMIN)"
        attacks = run_attacks(work / "attacks")
        summary["attacks"] = attacks.phases
        violations += [f"attacks: {v}" for v in attacks.violations]
        fuzz = _fuzz(args.fuzz)
        summary["fuzz"] = fuzz
        if not fuzz.get("ok"):
            violations.append(f"fuzz: {fuzz.get('failure', 'failed')}")
    summary["violations"] = violations
    (out / "chaos.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=2, default=str))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

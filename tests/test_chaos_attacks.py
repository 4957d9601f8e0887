"""The hostile-client part of the campaign (bench/chaos/attacks.py), small: while 1,000 idle
connections, slowloris clients and 64 KiB header lines hit one worker, a well-behaved client's
image shows all succeed and the service stays up. (Its p99 latency is measured by
``python -m bench chaos``, not asserted here: timings belong to the bench.)"""

from __future__ import annotations

from pathlib import Path

from bench.chaos import run_attacks


def test_hostile_clients_do_not_turn_a_good_client_away(tmp_path: Path) -> None:
    report = run_attacks(tmp_path, seconds=1.5, idle=1000, slow=128, log=lambda _: None)
    assert [p["phase"] for p in report.phases] == ["baseline", "1000 idle connections", "slowloris x128",
                                                   "64 KiB header lines"]
    for phase in report.phases:
        assert phase["requests"] > 0 and phase["errors"] == 0, phase
    assert not [v for v in report.violations if "p99" not in v], report.violations

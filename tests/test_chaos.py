"""A small run of the crash campaign (``python -m bench chaos`` runs 100 rounds): kill -9 of the
whole two-worker service in the middle of uploads, fills from a slow store, location passes,
deletes, prunes and cleans; after each restart nothing a user relies on is broken."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import run_crashes
from tests.requirements import require_nginx


def test_service_survives_kill_9_rounds(tmp_path: Path) -> None:
    require_nginx()
    report = run_crashes(tmp_path, rounds=3, seed=7, log=lambda _: None)
    assert report.crashes == 3
    assert report.uploads_done > 0 and report.images_verified > 0
    assert report.violations == []

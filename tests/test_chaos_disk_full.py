"""The disk-full part of the campaign (bench/chaos/disk_full.py): the cache and the file store
on small tmpfs mounts. Refused uploads answer 413 and keep nothing, stored images still read,
and uploads work again once space returns, without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import can_mount, run_disk_full


def test_a_full_disk_refuses_cleanly_and_recovers(tmp_path: Path) -> None:
    if not can_mount(tmp_path):
        pytest.skip("mounting a small tmpfs needs root (or CAP_SYS_ADMIN), which this machine does not give")
    report = run_disk_full(tmp_path, log=lambda _: None)
    assert report.uploads_ok > 0 and report.uploads_refused > 0
    assert set(report.refusal_statuses) == {413}
    assert report.reads_ok == report.uploads_ok
    assert report.recovered
    assert report.violations == []

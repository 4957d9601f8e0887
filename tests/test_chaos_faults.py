"""A small run of the upstream-fault campaign (bench/chaos/faults.py): a store that stalls,
resets, answers 503, truncates, flips a byte, ignores Range or drips; never a complete 200
with wrong bytes, no hang, nothing wrong cached once the store heals."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import FAULT_KINDS, run_faults


def test_upstream_faults_never_give_a_wrong_complete_answer(tmp_path: Path) -> None:
    report = run_faults(tmp_path, images=2, reads=4, seed=3, log=lambda _: None)
    assert report.faults_tried == len(FAULT_KINDS)
    assert report.reads == len(FAULT_KINDS) * 2 * 4
    assert report.good_reads > 0 and report.clean_errors > 0 and report.bytes_verified > 0
    assert report.violations == []

"""``python -m bench chaos``: the hardening campaign (crashes, upstream faults, disk full, hostile
clients).

Each part runs real servers on loopback and returns a report of counts; a violation is
anything a user must never see (a wrong byte in a complete answer, an image stuck, data
left behind). The summary goes into the bench report as the ``chaos`` scenario's table.
"""

from .attacks import AttackReport, run_attacks
from .crashes import CrashReport, run_crashes
from .disk_full import DiskFullReport, can_mount, run_disk_full
from .faults import FAULT_KINDS, FaultReport, run_faults

__all__ = [
    "AttackReport", "run_attacks",
    "CrashReport", "DiskFullReport", "FAULT_KINDS", "FaultReport", "can_mount", "run_crashes", "run_disk_full",
    "run_faults",
]

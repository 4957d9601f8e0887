"""``python -m bench chaos``: the hardening campaign (crashes, upstream faults; more parts join as they land).

Each part runs real servers on loopback and returns a report of counts; a violation is
anything a user must never see (a wrong byte in a complete answer, an image stuck, data
left behind). The summary goes into the bench report as the ``chaos`` scenario's table.
"""

from .crashes import CrashReport, run_crashes
from .faults import FAULT_KINDS, FaultReport, run_faults

__all__ = ["CrashReport", "FAULT_KINDS", "FaultReport", "run_crashes", "run_faults"]

"""What the metadata definitions tests share: Glance's own definition files, unique names."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.systems.glance import glance_venv
from tests.requirements import require_glance_venv

__all__ = ["glance_metadefs_dir", "glance_definitions", "unique"]


def glance_metadefs_dir() -> Path:
    """The definition files Glance ships (``etc/metadefs``), from the harness's Glance venv;
    fails the test when that venv is not installed."""
    require_glance_venv()
    venv = glance_venv()
    for candidate in [venv / "etc" / "glance" / "metadefs", *venv.rglob("metadefs")]:
        if (candidate / "compute-quota.json").is_file():
            return candidate
    pytest.fail(f"no Glance metadefs directory (with compute-quota.json) under {venv}", pytrace=False)


def glance_definitions() -> dict[str, dict[str, Any]]:
    """Every shipped definition file, by namespace name."""
    docs = [json.loads(p.read_text()) for p in sorted(glance_metadefs_dir().glob("*.json"))]
    return {d["namespace"]: d for d in docs}


def unique(prefix: str = "ns") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

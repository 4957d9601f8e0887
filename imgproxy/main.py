"""The ASGI entry point uvicorn imports in each worker process."""

from __future__ import annotations

from starlette.applications import Starlette

from .app import create_app
from .settings import load_settings

__all__ = ["app_from_environment"]


def app_from_environment() -> Starlette:
    """Factory for uvicorn: settings come from ``IMGPROXY_*`` (set by ``imgproxy serve``)."""
    return create_app(load_settings())

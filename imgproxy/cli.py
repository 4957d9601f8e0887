"""The ``imgproxy`` command: ``serve``, ``token create``, ``cache prune|clean|prefetch``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .settings import Settings, SettingsError, load_settings

__all__ = ["main"]


def _settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(config_file=args.config, overrides={"data_dir": args.data_dir, **overrides})


def _export(settings: Settings, config: str | None) -> None:
    """Hand the settings to uvicorn's worker processes through the environment."""
    if config:
        os.environ["IMGPROXY_CONFIG"] = os.path.abspath(config)
    os.environ["IMGPROXY_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ["IMGPROXY_AUTH"] = settings.auth
    os.environ["IMGPROXY_HOST"] = settings.host
    os.environ["IMGPROXY_PORT"] = str(settings.port)
    os.environ["IMGPROXY_WORKERS"] = str(settings.workers)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings_from_args(
        args, host=args.host, port=args.port, workers=args.workers, auth="noauth" if args.noauth else None
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.auth_enabled:
        from .tokens import ensure_admin_token

        created = ensure_admin_token(settings.data_dir / "tokens.json")
        if created is not None:
            print(f"imgproxy: created admin token (stored in {settings.data_dir / 'tokens.json'}): {created}", flush=True)
    _export(settings, args.config)
    uvicorn.run(
        "imgproxy.main:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="directory for metadata, store and cache")
    p.add_argument("--config", default=None, help="TOML config file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the image service")
    _add_common(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--noauth", action="store_true", help="no tokens: every caller is an admin (development only)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"imgproxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``imgproxy`` command: ``serve``, ``token create|list``, ``cache ...``.

Exit codes: 0 success (also after a clean SIGTERM/SIGINT shutdown of ``serve``),
2 bad settings or arguments (the message names the key), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from .context import ROLES
from .settings import Settings, SettingsError, load_settings

__all__ = ["build_parser", "main"]

TOKENS_FILE = "tokens.json"


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
    if settings.upstream_api:
        os.environ["IMGPROXY_UPSTREAM_API"] = settings.upstream_api


def _make_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError("data_dir", f"cannot create {settings.data_dir}: {exc.strerror}") from exc


def _raise_open_files(connections: int) -> None:
    """Let each worker hold ``connections`` sockets besides its files (the soft limit is often
    1024); the hard limit is the operator's to raise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 1024
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def _prepare_ops(settings: Settings) -> None:
    """Before the workers start: an empty metrics directory named for them (multiprocess
    mode) and the ``metrics_listen`` server; no fill boards of a previous run."""
    import shutil

    from .ops.paths import run_dir

    shutil.rmtree(run_dir(settings.data_dir), ignore_errors=True)
    if not settings.metrics:
        return
    from .ops.paths import prepare_multiprocess_dir

    directory = settings.data_dir.resolve() / "metrics"
    prepare_multiprocess_dir(directory)  # before this process imports prometheus_client
    if settings.metrics_listen:
        from .ops.figures import load_figures
        from .ops.metrics import serve_metrics

        try:
            serve_metrics(settings.metrics_listen, lambda: load_figures(directory))
        except OSError as exc:
            raise SettingsError("metrics_listen", f"cannot listen on {settings.metrics_listen}: {exc.strerror}") from exc


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .ops.logs import logging_config
    from .protocol import PROTOCOL

    settings = _settings_from_args(
        args, host=args.host, port=args.port, workers=args.workers, auth="noauth" if args.noauth else None,
        upstream_api=args.upstream_api,
    )
    _make_data_dir(settings)
    if settings.auth == "keystone":
        import importlib.util

        if importlib.util.find_spec("keystoneauth1") is None:
            raise SettingsError("auth", "\"keystone\" needs keystoneauth1: pip install 'imgproxy[keystone]'")
        print(f"imgproxy: tokens are validated by Keystone at {settings.keystone_url}", flush=True)
    elif settings.auth_enabled:
        from .tokens import ensure_admin_token

        path = settings.data_dir / TOKENS_FILE
        created = ensure_admin_token(path)
        if created is not None:
            print(f"imgproxy: created admin token (stored in {path}, shown only once): {created}", flush=True)
    else:
        print("imgproxy: WARNING: --noauth: every caller is an admin; for development only", flush=True)
    _export(settings, args.config)
    _prepare_ops(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the
    # signal with the handler that was installed before it ran; with these
    # handlers that re-raise becomes a normal exit 0 instead of death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    _raise_open_files(settings.max_connections)
    uvicorn.run(
        "imgproxy.main:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=PROTOCOL,
        # uvicorn answers 503 once open connections reach the limit, its own included:
        # one more lets max_connections connections be served.
        limit_concurrency=settings.max_connections + 1,
        backlog=settings.listen_backlog,
        timeout_keep_alive=settings.keepalive_timeout,
        # Read by imgproxy.protocol as the bound on a request's line and headers.
        h11_max_incomplete_event_size=settings.max_request_head,
        lifespan="on",
        log_level=settings.log_level,
        log_config=logging_config(settings),
        access_log=False,  # the service writes its own request lines (imgproxy.ops.access)
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return 0


def _tokens_path(args: argparse.Namespace) -> Any:
    settings = _settings_from_args(args)
    return settings.data_dir / TOKENS_FILE


def cmd_token_create(args: argparse.Namespace) -> int:
    from .tokens import create_token

    path = _tokens_path(args)
    roles = args.role or ["member"]
    token = create_token(path, project=args.project, roles=roles)
    # The token is the last word so scripts can take it with `awk '{print $NF}'`.
    print(f"created token for project {args.project} with roles {','.join(roles)}: {token}")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from .tokens import list_tokens

    rows = [("TOKEN", "PROJECT", "ROLES", "CREATED")]
    for token, entry in list_tokens(_tokens_path(args)):
        rows.append((token[:8] + "...", entry["project"], ",".join(entry["roles"]), entry.get("created_at", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


async def _run_cache_action(settings: Settings, action: str, stale_age: float | None) -> str:
    """Open the service's resources without HTTP or loops, run one cache action, close.

    Safe while a server runs on the same data dir: LMDB is multi-process, fills are
    single-flight across processes, and the cleaner only removes temp files of dead
    processes (or older than the stale age).
    """
    from .service import open_service
    from .sources import prefetch_queued

    service = await open_service(settings, loops=False)
    try:
        cache = service.cache
        if action == "prune":
            pruned = await cache.prune()
            return f"pruned {pruned.files} chunk files, {pruned.bytes} bytes"
        if action == "clean":
            age = settings.stale_temp_age if stale_age is None else stale_age
            store_temp = await service.backends.sweep_temp(age)
            cleaned = await cache.clean(stale_age=age)
            return (
                f"cleaned {cleaned.temp_files} temp files, {cleaned.fill_files} fill files, "
                f"{cleaned.orphans_removed} orphan chunks, {store_temp} store temp files; "
                f"adopted {cleaned.adopted} chunks, {cleaned.missing} index entries had no file"
            )
        queued = len(cache.queue.items())
        fetched = await prefetch_queued(service)
        await cache.wait_idle()
        return f"prefetched {queued} queued images: {fetched}"
    finally:
        await service.aclose()


def cmd_preheat(args: argparse.Namespace) -> int:
    """``imgproxy cache prefetch --url URL [--url URL...] --token T IMAGE... [--wait]``:
    queue images on running services; 0 when every one is queued (cached, with ``--wait``)."""
    from .preheat import preheat

    if not args.url or not args.images:
        print("imgproxy: cache prefetch on running services needs --url and at least one IMAGE", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("OS_AUTH_TOKEN", "")
    if not token:
        print("imgproxy: cache prefetch needs an admin token: --token or OS_AUTH_TOKEN", file=sys.stderr)
        return 2
    targets = asyncio.run(preheat(args.url, args.images, token, wait=args.wait, timeout=args.timeout,
                                  interval=args.interval))
    return 0 if all(t.state in ("cached", "queued") for t in targets) else 1


def cmd_cache(args: argparse.Namespace) -> int:
    """``imgproxy cache prune|clean|prefetch``: one run of that loop; prints one line."""
    if args.action == "prefetch" and (args.url or args.images):
        return cmd_preheat(args)
    settings = _settings_from_args(args)
    if not (settings.data_dir / "meta" / "data.mdb").exists():
        raise SettingsError("data_dir", f"{settings.data_dir} holds no imgproxy data")
    line = asyncio.run(_run_cache_action(settings, args.action, getattr(args, "stale_age", None)))
    print(f"imgproxy cache {args.action}: {line}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="directory for metadata, store and cache (default ./imgproxy-data)")
    p.add_argument("--config", default=None, help="TOML config file")


def _add_token_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="manage the tokens file")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="add a token; prints it as the last word")
    _add_common(create)
    create.add_argument("--project", required=True, help="project that owns what the token creates")
    create.add_argument("--role", action="append", choices=ROLES, help="role (repeatable; default member)")
    create.set_defaults(func=cmd_token_create)
    lst = actions.add_parser("list", help="list tokens (prefixes only), projects and roles")
    _add_common(lst)
    lst.set_defaults(func=cmd_token_list)


def _add_cache_commands(sub: Any) -> None:
    """The ``cache`` group: one-shot runs of the background loops, next to a running server or not."""
    cache = sub.add_parser("cache", help="run a cache loop once")
    actions = cache.add_subparsers(dest="action", required=True)
    for name, text in (
        ("prune", "evict least-recently-used chunks down to the low watermark (if over the high one)"),
        ("clean", "remove stale temp files and orphan chunks, adopt complete ones, fix the index"),
        ("prefetch", "fill the queued images; with --url, queue IMAGEs on running services"),
    ):
        p = actions.add_parser(name, help=text)
        _add_common(p)
        if name == "clean":
            p.add_argument(
                "--stale-age",
                type=float,
                default=None,
                help="seconds after which a temp file counts as a leftover (default: stale_temp_age); "
                "files of dead processes go whatever their age",
            )
        if name == "prefetch":
            _add_preheat_options(p)
        p.set_defaults(func=cmd_cache)


def _add_preheat_options(p: argparse.ArgumentParser) -> None:
    """``cache prefetch`` with ``--url``: queue images on running services instead of filling
    the local data dir's queue."""
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image ids to queue on every --url")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="a running service or edge (repeatable): queue the images there (PUT /v2/cache/{id})")
    p.add_argument("--token", default=None, help="an admin token of those services (default: $OS_AUTH_TOKEN)")
    p.add_argument("--wait", action="store_true", help="show a progress bar per image and service until each "
                   "is cached, then a summary table")
    p.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds")
    p.add_argument("--interval", type=float, default=1.0, help="with --wait: seconds between progress polls")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the image service")
    _add_common(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--noauth", action="store_true", help="no tokens: every caller is an admin (development only)")
    serve.add_argument("--upstream-api", default=None, metavar="URL",
                       help="edge mode: cache in front of this image API (Glance or imgproxy)")
    serve.set_defaults(func=cmd_serve)
    _add_token_commands(sub)
    _add_cache_commands(sub)
    from .metadefs.cli import add_metadefs_commands

    add_metadefs_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .tokens import TokensFileError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (SettingsError, TokensFileError) as exc:
        print(f"imgproxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

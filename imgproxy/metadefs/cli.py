"""``imgproxy metadefs load DIR``: definition files in Glance's format into the data dir.

Safe next to a running server on the same data dir (LMDB serializes writers across
processes; the server reads the loaded namespaces at once). Exit codes: 0 every file
loaded or skipped, 1 some file failed (the others are loaded), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..db import open_env
from ..settings import load_settings
from .loader import LoadMode, load_path
from .store import MetadefStore

__all__ = ["add_metadefs_commands"]


def cmd_metadefs_load(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config, overrides={"data_dir": args.data_dir})
    source = Path(args.dir)
    if not source.exists():
        args.parser.error(f"{source} does not exist")
    mode = LoadMode.SKIP
    if args.overwrite:
        mode = LoadMode.OVERWRITE
    elif args.merge:
        mode = LoadMode.PREFER_NEW if args.prefer_new else LoadMode.MERGE
    elif args.prefer_new:
        args.parser.error("--prefer-new only applies with --merge")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    try:
        report = load_path(MetadefStore(env), source, mode)
    finally:
        env.close()
    for file, namespace, outcome in report.done:
        print(f"{file}: {namespace} {outcome}")
    for file, reason in report.failed:
        print(f"{file}: FAILED: {reason}", file=sys.stderr)
    print(f"imgproxy metadefs load: {len(report.done)} files loaded, {len(report.failed)} failed")
    return 1 if report.failed else 0


def add_metadefs_commands(sub: Any) -> None:
    """The ``metadefs`` group of the ``imgproxy`` command."""
    metadefs = sub.add_parser("metadefs", help="metadata definitions catalog")
    actions = metadefs.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="load definition files in Glance's JSON format (a directory or one file)")
    load.add_argument("dir", help="directory of *.json namespace files (Glance ships them in etc/metadefs)")
    load.add_argument("--data-dir", default=None, help="directory for metadata, store and cache (default ./imgproxy-data)")
    load.add_argument("--config", default=None, help="TOML config file")
    load.add_argument("--merge", action="store_true", help="add to existing namespaces what they lack")
    load.add_argument("--prefer-new", action="store_true", help="with --merge: the files' versions replace existing items")
    load.add_argument("--overwrite", action="store_true", help="replace existing namespaces with the files' versions")
    load.set_defaults(func=cmd_metadefs_load, parser=load)

"""``vpsadmind``: run the node agent, or check its configuration."""

from __future__ import annotations

import argparse
import sys

from vpsadmind import __version__
from vpsadmind.config import load_config
from vpsadmind.errors import ConfigError

__all__ = ["main", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "/etc/vpsadmin/vpsadmind.yml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpsadmind", description="vpsAdmin node agent (v2.0 transaction queue)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-k", "--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("-v", "--version", action="version", version=f"vpsadmind {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["upgrade"]:  # the v1.22 -> v2.0 node upgrade has its own options (vpsadmind/upgrade)
        from vpsadmind.upgrade.cli import main as upgrade_main

        return upgrade_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.check:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"vpsadmind: {exc}", file=sys.stderr)
            return 1
        for warning in getattr(cfg, "warnings", []):
            print(f"vpsadmind: warning: {warning}", file=sys.stderr)
        print(f"{args.config}: OK (server_id {cfg.server_id})")
        return 0
    from vpsadmind.daemon import run_daemon

    return run_daemon(args.config)


if __name__ == "__main__":
    sys.exit(main())

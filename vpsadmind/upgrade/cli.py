"""``vpsadmind upgrade [check|apply]``: the node side of the vpsAdmin v1.22 -> v2.0 upgrade as one command
(docs/upgrade.md is the operator's walk-through)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from vpsadmind.config import DEFAULT_CONFIG_PATH, load_config
from vpsadmind.errors import ConfigError
from vpsadmind.upgrade.context import Options
from vpsadmind.upgrade.engine import STEP_NAMES, run_upgrade
from vpsadmind.upgrade.report import ExitCode

__all__ = ["build_parser", "main"]

_MEANING = {
    ExitCode.NOTHING: "nothing to do",
    ExitCode.FAILED: "failed",
    ExitCode.USAGE: "usage error",
    ExitCode.DONE: "done",
    ExitCode.PENDING: "work remains",
    ExitCode.HUMAN: "needs a human",
}

_EPILOG = "exit status: " + ", ".join(f"{int(code)} {text}" for code, text in _MEANING.items()) + \
    " (precedence: failed, needs a human, work remains, done, nothing to do)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpsadmind upgrade", epilog=_EPILOG,
                                description="Bring this node from the vpsAdmin v1.22 layout to v2.0. 'check' "
                                            "(the default) only reports; 'apply' makes the changes.")
    p.add_argument("mode", nargs="?", choices=("check", "apply"), default="check")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH,
                   help=f"the daemon's configuration file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--step", action="append", choices=STEP_NAMES, metavar="NAME",
                   help="only this step (repeatable): " + ", ".join(STEP_NAMES))
    p.add_argument("-y", "--yes", action="store_true", help="apply without asking")
    p.add_argument("--rename-private", metavar="NEW",
                   help="rename datasets named 'private' to NEW (in ZFS and in the database)")
    p.add_argument("--register-db", action="store_true",
                   help="register the rearranged backups in the database (once the API is at that stage)")
    p.add_argument("--sharenfs-options", metavar="OPTS",
                   help="share pools that are not NFS-shared at all with every node, with these options "
                        "(e.g. no_root_squash; '' for none)")
    p.add_argument("--state-file", metavar="PATH",
                   help="where to record what leaves no trace on the node (default: next to the journal)")
    return p


def _ask(prompt: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        print("\nno answer: nothing changed (pass --yes to apply without asking)", file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"vpsadmind upgrade: {exc}", file=sys.stderr)
        return int(ExitCode.FAILED)
    options = Options(rename_private=args.rename_private, register_db=args.register_db,
                      state_file=args.state_file, sharenfs_options=args.sharenfs_options)
    apply = args.mode == "apply"
    result = asyncio.run(run_upgrade(cfg, apply=apply, steps=args.step, options=options,
                                     confirm=None if args.yes or not apply else _ask))
    ops = f", {result.ops} operations" if apply else ""
    print(f"\nvpsadmind upgrade {args.mode}: {_MEANING[result.code]}{ops} (exit {int(result.code)})")
    return int(result.code)


if __name__ == "__main__":
    sys.exit(main())

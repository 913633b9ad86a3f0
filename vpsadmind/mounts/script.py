"""The program behind the ``<veid>.mount``/``<veid>.umount`` action scripts (v2.0: ``Mounter.mount_all`` /
``umount_all`` in standalone mode).

``python -I -m vpsadmind.mounts.script mount|umount --veid N --data F --conf-dir D --vz-root R --socket S
--mount-bin M --umount-bin U --zfs-bin Z``

It reads the data file, finds VE_ROOT as vzctl does (the CT's conf, else ``vz.conf``; v2.0's ``<vz_root>/root/N``
if neither sets it) and mounts in file order with the start-time failure policies, or unmounts in reverse
order. States and "mount later" requests go to the daemon over its control socket. Exit status: 1 when the VPS
must not start (a ``fail_start`` mount failed, the data file is unreadable, or vzctl's ``VEID`` is not the VPS the
script was written for: a copied script) or when a mount could not be unmounted (vzctl then reports the stop as
failed); 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from vpsadmind.log import configure_logging
from vpsadmind.mounts.files import MountFileError, load_data
from vpsadmind.mounts.mounter import Commands, Mounter, MountFailed
from vpsadmind.mounts.sinks import SocketSink
from vpsadmind.vz import Vz
from vpsadmind.zfs.driver import Zfs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpsadmind.mounts.script", description="vzctl mount/umount action script")
    p.add_argument("action", choices=("mount", "umount"))
    p.add_argument("--veid", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--conf-dir", type=Path, required=True)
    p.add_argument("--vz-root", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--mount-bin", default="mount")
    p.add_argument("--umount-bin", default="umount")
    p.add_argument("--zfs-bin", default="zfs")
    return p


async def run(args: argparse.Namespace) -> int:
    called_for = os.environ.get("VEID")
    if called_for is not None and called_for != str(args.veid):
        # a copy of another VPS's script (4001 CopyConfigs to a new id): its mounts would act on the wrong VPS.
        # The start fails until 5301 writes this VPS's own scripts; a stop is not held up (nothing of ours can
        # have been mounted by a script that refuses to mount).
        print(f"vpsadmind mounts: this action script belongs to VPS {args.veid}, vzctl runs it for VPS "
              f"{called_for}; regenerate the mounts of VPS {called_for} (transaction 5301)", file=sys.stderr)
        return 1 if args.action == "mount" else 0
    try:
        mounts = load_data(args.data, args.veid)
    except MountFileError as exc:
        print(f"vpsadmind mounts: {exc}", file=sys.stderr)
        return 1
    ve_root = Vz(conf_dir=args.conf_dir).ve_root(args.veid) or Path(args.vz_root) / "root" / str(args.veid)
    driver = Zfs(zfs=args.zfs_bin)

    async def zfs() -> Zfs:
        return driver

    mounter = Mounter(args.veid, ve_root, sink=SocketSink(args.socket), zfs=zfs,
                      commands=Commands(mount=args.mount_bin, umount=args.umount_bin))
    if args.action == "mount":
        try:
            await mounter.mount_all(mounts)
        except MountFailed as exc:
            print(f"vpsadmind mounts: {exc}", file=sys.stderr)
            return 1
        return 0
    errors = await mounter.umount_all(mounts)
    for error in errors:
        print(f"vpsadmind mounts: {error}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("info", "console", stream=sys.stdout)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

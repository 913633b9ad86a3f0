"""The demo's VPS scenario (see :mod:`vpsadmind.demo`): VPS 201 is created and started on node 1, a dataset is
mounted into it, its status is shown, then it is stopped.

Node 1 runs OpenVZ on the fake vzctl/vzlist harness (docs/fake-vzctl.md): its tree is ``<workdir>/fake-vz``,
containers' roots are real bind mounts (``FAKE_VZ_MOUNT=bind``, which needs root) and private areas live in the
hypervisor pool's datasets, as on a v2.0 ZFS node (``servers.ve_private`` = ``<pool fs mountpoint>/%{veid}/private``).
The chains are the API's (contract 5.6):

* ``vps_create``: Dataset::Create 201 (refquota, private/), Vps::Create, ApplyConfig ``vswap-512m``, a NoOp
  (where the API confirms the IP addresses' cluster resources; the demo's VPS has none), DnsResolver, Resources,
  Start, with the ``datasets``/``vps`` rows confirmed by the chain;
* ``vps_mount``: Dataset::Create 201/data, Vps::Mounts (5301 writes the action scripts and the mounts data file)
  and Vps::Mount (5302 bind-mounts ``<201/data mountpoint>/private`` onto ``/mnt/data`` in the running VPS);
* ``vps_stop``: Vps::Stop; the ``.umount`` action script 5301 wrote releases the mount, then vzctl the root.

Between the chains the scenario reads what a user of the node would see: ``vzlist``, the conf, the ``vps_status``
row 1001's post_save wrote, the mounts below the VPS root in ``/proc/self/mountinfo``, a file written on the host
into the dataset read inside the VPS (``vzctl exec``) and one written inside read on the host, and
``mounts.current_state`` as the daemon records it. The scenario runs beside the backups (:func:`vps_beside`), on
a database connection of its own, once node 1's pool exists.

:func:`release_mounts` unmounts whatever is still mounted below the fake tree: the demo calls it before the pools
are destroyed, so that no bind mount is ever left in the work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from vpsadmind import system
from vpsadmind.demo import (
    NOOP,
    Demo,
    DemoError,
    Expect,
    Scenario,
    Storage,
    _create,
    _created,
    fetch,
    say,
    table,
)
from vpsadmind.demo_transfer import DATASET_CREATE, StorageRun, _off_loop
from vpsadmind.engine.model import ChainState
from vpsadmind.mount_registry import MOUNT_STATES
from vpsadmind.testing.chains import ChainBuilder, Confirmation
from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, MOUNT_ENV, ROOT_ENV
from vpsadmind.testing.fakevz.mounts import mountpoints
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.vz import ConfFile, Vz, VzError

__all__ = ["HANDLER_MODULES", "FakeVzNode", "VpsRun", "prepare_vz", "release_mounts", "report_vps", "scenario_vps",
           "vps_beside"]

#: Until they are built-in, the daemons load the VPS and mount handlers as extra modules (harmless afterwards).
HANDLER_MODULES: Final = ("vpsadmind.testing.handlers", "vpsadmind.handlers.vps", "vpsadmind.handlers.vps_config",
                          "vpsadmind.handlers.vps_features", "vpsadmind.handlers.node", "vpsadmind.handlers.mounts")
VZ_NODE: Final = 1                      # the node with the VPS (node 2 is the backup node)
VEID: Final = 201                       # not 101: that dataset belongs to the storage scenario
HOSTNAME: Final = "demo-vps"
TEMPLATE: Final = "debian-8.0-x86_64-minimal"
CONFIG: Final = "vswap-512m"            # the sample 2008 applies, as 7301 CreateConfig would have written it
SAMPLE: Final = 'PHYSPAGES="0:512M"\nSWAPPAGES="0:256M"\nNUMPROC="400"\n'
NAMESERVER: Final = "192.0.2.53"
DST: Final = "/mnt/data"
HELLO: Final = "written on the host into dataset 201/data"
FROM_VPS: Final = "written inside VPS 201"
START: Final = 1001                     # Vps::Start
STOP: Final = 1002                      # Vps::Stop
RESOURCES: Final = 2003                 # Vps::Resources
DNS_RESOLVER: Final = 2005              # Vps::DnsResolver
APPLY_CONFIG: Final = 2008              # Vps::ApplyConfig
VPS_CREATE: Final = 3001                # Vps::Create
MOUNTS: Final = 5301                    # Vps::Mounts
MOUNT: Final = 5302                     # Vps::Mount
#: The daemon writes mounts.current_state in the background, after the transaction that mounted (5302) or after
#: the action script reported over the control socket (stop): the demo waits this long for it.
STATE_WAIT: Final = 5.0
_CONF_KEYS: Final = ("HOSTNAME", "NAMESERVER", "CPUS", "PHYSPAGES", "SWAPPAGES", "ORIGIN_SAMPLE", "ONBOOT")


# ----------------------------------------------------------------------------------------------------------
# The fake OpenVZ node and its clean-up


@dataclass(frozen=True, slots=True)
class DaemonExtra:
    """What a daemon's config and environment get for the VPS handlers (see :meth:`FakeVzNode.daemon`)."""

    vpsadmin: dict[str, Any]
    sections: dict[str, Any]
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class FakeVzNode:
    """Node 1's fake OpenVZ: the tree (``FAKE_VZ_ROOT``), the fake binaries, the prefix where private areas may
    live (the hypervisor pool's mountpoint) and why the VPS scenario cannot run here, if it cannot."""

    root: Path
    vzctl: Path
    vzlist: Path
    allow: str
    workdir: Path
    skipped: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {ROOT_ENV: str(self.root), MOUNT_ENV: "bind", ALLOW_ENV: self.allow}

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc" / "vz" / "conf"

    @property
    def ve_root(self) -> Path:
        return self.root / "vz" / "root" / str(VEID)

    def mounts_dir(self, server_id: int) -> Path:
        return self.workdir / f"mounts{server_id}"

    def daemon(self, server_id: int) -> DaemonExtra:
        """Both daemons load the VPS handlers and keep the mounts data files in the work directory (not in
        /var/vpsadmin); only node 1 gets the fake's ``vz`` section and environment."""
        vpsadmin = {"handler_modules": list(HANDLER_MODULES), "mounts_dir": str(self.mounts_dir(server_id))}
        if server_id != VZ_NODE:
            return DaemonExtra(vpsadmin, {}, {})
        vz = {"vzctl": str(self.vzctl), "vzlist": str(self.vzlist), "vz_conf": str(self.root / "etc" / "vz"),
              "vz_root": str(self.root / "vz"), "ve_private": f"{self.allow}/vz/%{{veid}}/private"}
        return DaemonExtra(vpsadmin, {"vz": vz}, self.env)

    def driver(self) -> Vz:
        """The demo's own view of the node: the fake with the daemon's environment."""
        return Vz(vzctl=str(self.vzctl), vzlist=str(self.vzlist), conf_dir=self.conf_dir, env=self.env,
                  timeout=30.0, exec_timeout=30.0)

    def describe(self) -> str:
        what = f"fake vzctl in {self.root}, container roots bind-mounted, private areas below {self.allow}"
        return what if self.skipped is None else f"{what}; the VPS scenario is skipped: {self.skipped}"


def _fake_vz_base(workdir: Path) -> Path:
    return workdir / "fake-vz"


async def release_mounts(workdir: Path) -> list[str]:
    """Unmount everything below the fake tree, deepest first (``umount``, else ``umount -l``); returns what was
    mounted. A run that stopped its VPS leaves nothing; a failed or interrupted one may leave the VPS root and
    its dataset mount, which would keep the pools busy (zfs-fuse) or stay in /tmp for ever."""
    base = str(_fake_vz_base(workdir).resolve()) + "/"
    found = sorted((m for m in mountpoints() if m.startswith(base)), key=len, reverse=True)
    for mp in found:
        for argv in (["umount", mp], ["umount", "-l", mp]):
            with contextlib.suppress(system.CommandFailed, OSError):  # still mounted: the next form, then reported
                await system.run(argv, timeout=10)
                break
    left = set(mountpoints())
    return [mp + (" (could not be unmounted)" if mp in left else "") for mp in found]


async def prepare_vz(workdir: Path, storage: Storage) -> FakeVzNode:
    """A fresh fake tree for node 1 with the template and the ``vswap-512m`` sample; the tree of an earlier run
    is removed only once nothing is mounted below it (rmtree through a bind mount would delete a pool's data)."""
    base = _fake_vz_base(workdir)
    found = await release_mounts(workdir)
    left = [m for m in found if m.endswith("(could not be unmounted)")]
    if left:
        raise DemoError(f"mounts of an earlier run are still below {base}: {', '.join(left)}; unmount them first")
    if found:
        say(f"  unmounted what an earlier run left below {base}: {', '.join(found)}")
    shutil.rmtree(base, ignore_errors=True)
    for server_id in (1, 2):
        shutil.rmtree(workdir / f"mounts{server_id}", ignore_errors=True)
    root = base / "root"
    await asyncio.to_thread(make_template, root, TEMPLATE)
    (root / "etc" / "vz" / "conf" / f"ve-{CONFIG}.conf-sample").write_text(SAMPLE)
    node = FakeVzNode(root, fake_vzctl_script(base / "bin"), fake_vzlist_script(base / "bin"),
                      storage.pools[VZ_NODE].mountpoint, workdir)
    missing = [cmd for cmd in ("mount", "umount") if shutil.which(cmd) is None]
    if os.geteuid() != 0:  # the VPS root and the dataset are real bind mounts
        node = dataclasses.replace(node, skipped="bind mounts need root")
    elif missing:  # the fake vzctl and the mount handlers run them from PATH
        node = dataclasses.replace(node, skipped=f"{' and '.join(missing)} not on PATH")
    return node


# ----------------------------------------------------------------------------------------------------------
# The scenario


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``: where, what filesystem, its source and the path bound from it."""

    target: str
    fstype: str
    source: str
    root: str


@dataclass(slots=True)
class VpsRun:
    """What the VPS scenario fired and saw, for its report."""

    node: FakeVzNode | None
    scenarios: list[Scenario] = field(default_factory=list)
    data_private: str = ""                                   # 201/data's private/ on the host
    vzlist: str = ""                                         # `vzlist -a 201` while it runs
    conf: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] | None = None                     # vps_status after vps_create
    confirmed: int | None = None                             # vps.confirmed after vps_create
    mount_id: int = 0
    mounted_state: str | None = None
    host_mounts: list[MountEntry] = field(default_factory=list)
    inside: str | None = None                                # HELLO as `vzctl exec 201 cat` prints it
    on_host: str | None = None                               # FROM_VPS as the host reads it
    stopped_status: dict[str, Any] | None = None
    stopped_vzlist: str = ""
    unmounted_state: str | None = None
    left_mounted: list[MountEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def vps_beside(demo: Demo, st: Storage, run: StorageRun) -> AsyncIterator[VpsRun]:
    """Run :func:`scenario_vps` in the background while the body fires other chains; on leaving, wait for it and
    add its report (after the ones added meanwhile, so the order of the reports is fixed). Cancelled if the body
    fails."""
    vps = VpsRun(demo.vz)
    task = asyncio.create_task(scenario_vps(demo, st, run, vps), name="scenario-vps")
    try:
        yield vps
        await task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    demo.reports.append(lambda: report_vps(st, vps))


async def scenario_vps(demo: Demo, st: Storage, run: StorageRun, vps: VpsRun) -> None:
    """Create and start VPS 201, mount 201/data into it, look at it, stop it. Needs node 1's pool filesystem
    (storage_hv done). Each chain is fired only if the one before it ended done."""
    if vps.node is None or vps.node.skipped is not None:
        return
    assert demo.connect is not None, "the VPS scenario needs connections of its own"
    own = dataclasses.replace(demo, conn=await demo.connect())  # demo.conn serves the storage scenario meanwhile
    try:
        create = await _vps_create(own, st, run)
        vps.scenarios.append(create)
        if not await _done(own, create):
            return
        run.extra[VZ_NODE].append(f"{st.fs(VZ_NODE)}/{VEID}")
        await _look_at_start(own, vps)
        mount = await _vps_mount(own, st, run, vps)
        vps.scenarios.append(mount)
        if await _done(own, mount):
            run.extra[VZ_NODE].append(f"{st.fs(VZ_NODE)}/{VEID}/data")
            await _look_at_mount(own, st, vps)
        stop = await own.fire("vps_stop", "Vps::Stop: the .umount action script releases /mnt/data", ChainBuilder(
            "vps_stop", type_="TransactionChains::Vps::Stop").lock("Vps", VEID).append(STOP, server=VZ_NODE, vps=VEID),
            first_server=VZ_NODE, expect=lambda t: Expect(ChainState.DONE, [(1, 1)]))
        vps.scenarios.append(stop)
        await own.ended(stop)
        await _look_at_stop(own, vps)
    finally:
        own.conn.close()


async def _done(demo: Demo, s: Scenario) -> bool:
    await demo.ended(s)
    return int(s.chain["state"]) == ChainState.DONE


async def _vps_create(demo: Demo, st: Storage, run: StorageRun) -> Scenario:
    """The API's VPS create (contract 5.6) with its rows: the dataset and its refquota, the ``vps`` row, and
    ``servers.ve_private`` pointing into the hypervisor pool as on a ZFS node."""
    fs1 = st.fs(VZ_NODE)
    mountpoint = (await st.zfs.get(fs1, ["mountpoint"]))[fs1]["mountpoint"].value
    async with demo.conn.cursor() as cur:
        await cur.execute("UPDATE servers SET ve_private = %s WHERE server_id = %s",
                          (f"{mountpoint}/%{{veid}}/private", VZ_NODE))
    ds = await demo.new_dataset(str(VEID))
    dip = await demo.insert("dataset_in_pools", dataset_id=ds, pool_id=run.pool_ids[VZ_NODE], confirmed=0)
    props = await demo.new_properties(run.pool_ids[VZ_NODE], ds, dip, {"refquota": (128, False)})
    await demo.insert("vps", vps_id=VEID, m_id=1, vps_hostname=HOSTNAME, vps_server=VZ_NODE, vps_config="",
                      confirmed=0, dataset_in_pool_id=dip, object_state=0)
    b = ChainBuilder("vps_create", type_="TransactionChains::Vps::Create").lock("Vps", VEID).lock("DatasetInPool",
                                                                                                 dip)
    steps: list[tuple[int, dict[str, Any], list[Confirmation]]] = [
        (DATASET_CREATE, {"pool_fs": fs1, "name": str(VEID), "options": {"refquota": 128}, "create_private": True},
         [_create(ds), *_created("DatasetInPool", "dataset_in_pools", dip),
          *_created("DatasetProperty", "dataset_properties", *props.values())]),
        (VPS_CREATE, {"hostname": HOSTNAME, "template": TEMPLATE, "onboot": True},
         [Confirmation.create("Vps", "vps", {"vps_id": VEID})]),
        (APPLY_CONFIG, {"configs": [CONFIG], "pool_fs": fs1, "dataset_name": str(VEID)}, []),
        (NOOP, {}, []),
        (DNS_RESOLVER, {"nameserver": [NAMESERVER], "original": []}, []),
        (RESOURCES, {"resources": [{"resource": "cpu", "value": 2, "original": None},
                                   {"resource": "memory", "value": 1024, "original": None}]}, []),
        (START, {"onboot": True}, []),
    ]
    for code, params, confirmations in steps:
        b.append(code, server=VZ_NODE, vps=VEID, params=params, confirmations=confirmations)
    rows: dict[tuple[str, int], int | None] = {("datasets", ds): 1, ("dataset_in_pools", dip): 1,
                                               **{("dataset_properties", i): 1 for i in props.values()}}
    return await demo.fire(
        "vps_create", "Dataset::Create 201, Vps::Create, ApplyConfig, NoOp, DnsResolver, Resources, Start@1", b,
        first_server=VZ_NODE, expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * len(t), rows=rows))


async def _vps_mount(demo: Demo, st: Storage, run: StorageRun, vps: VpsRun) -> Scenario:
    """Dataset 201/data and its mount at /mnt/data: the ``mounts`` row, 5301 (scripts and data file), 5302."""
    fs1 = st.fs(VZ_NODE)
    ds = await demo.new_dataset(f"{VEID}/data")
    dip = await demo.insert("dataset_in_pools", dataset_id=ds, pool_id=run.pool_ids[VZ_NODE], confirmed=0)
    mid = vps.mount_id = await demo.insert(
        "mounts", vps_id=VEID, dst=DST, mount_opts="--bind", umount_opts="-f", mount_type="bind",
        dataset_in_pool_id=dip, mode="rw", confirmed=0, object_state=0, on_start_fail=1, current_state=0)
    spec = {"id": mid, "on_start_fail": "mount_later", "type": "dataset_local", "pool_fs": fs1,
            "dataset_name": f"{VEID}/data", "dst": DST, "mount_opts": "--bind", "umount_opts": "-f", "mode": "rw"}
    b = ChainBuilder("vps_mount", type_="TransactionChains::Vps::MountDataset").lock("Vps", VEID)
    b.lock("DatasetInPool", dip)
    b.append(DATASET_CREATE, server=VZ_NODE, vps=VEID,
             params={"pool_fs": fs1, "name": f"{VEID}/data", "create_private": True},
             confirmations=[_create(ds), *_created("DatasetInPool", "dataset_in_pools", dip)])
    b.append(MOUNTS, server=VZ_NODE, vps=VEID, params={"mounts": [spec]},
             confirmations=_created("Mount", "mounts", mid))
    b.append(MOUNT, server=VZ_NODE, vps=VEID, params={"mounts": [spec]})
    rows: dict[tuple[str, int], int | None] = {("datasets", ds): 1, ("dataset_in_pools", dip): 1, ("mounts", mid): 1}
    return await demo.fire(
        "vps_mount", f"Dataset::Create 201/data, Vps::Mounts (1 mount at {DST}), Vps::Mount@1", b,
        first_server=VZ_NODE, expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * len(t), rows=rows))


# ----------------------------------------------------------------------------------------------------------
# What the node shows between the chains


async def _vzlist(node: FakeVzNode) -> str:
    try:
        done = await system.run([str(node.vzlist), "-a", str(VEID)], env={**os.environ, **node.env}, timeout=30)
    except system.CommandFailed as exc:
        return f"(vzlist failed: {exc})"
    return done.stdout.rstrip()


async def _vps_status(demo: Demo) -> dict[str, Any] | None:
    rows = await fetch(demo.conn, "SELECT vps_up, vps_nproc, vps_vm_used_mb, vps_disk_used_mb FROM vps_status "
                                  "WHERE vps_id = %s", (VEID,))
    return rows[0] if rows else None


async def _mount_state(demo: Demo, mount_id: int, want: str) -> str | None:
    """``mounts.current_state`` by name, once it is ``want`` or after :data:`STATE_WAIT` seconds."""
    deadline = time.monotonic() + STATE_WAIT
    while True:
        rows = await fetch(demo.conn, "SELECT current_state FROM mounts WHERE id = %s", (mount_id,))
        code = int(rows[0]["current_state"]) if rows else None
        state = MOUNT_STATES[code] if code is not None and 0 <= code < len(MOUNT_STATES) else None
        if state == want or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(0.05)


def mount_entries(base: Path) -> list[MountEntry]:
    """The mounts at or below ``base``, as ``/proc/self/mountinfo`` lists them (what findmnt shows)."""
    def unescape(text: str) -> str:  # mountinfo writes space, tab, newline and backslash as \ooo
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)

    prefix = str(base.resolve())
    out: list[MountEntry] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if "-" not in fields:
                continue
            sep = fields.index("-")
            target = unescape(fields[4])
            if target == prefix or target.startswith(prefix + "/"):
                out.append(MountEntry(target, fields[sep + 1], unescape(fields[sep + 2]), unescape(fields[3])))
    return out


async def _look_at_start(demo: Demo, vps: VpsRun) -> None:
    """After vps_create: vzlist, the conf the chain wrote, the row 1001's post_save stored, the confirmed row."""
    assert vps.node is not None
    vps.vzlist = await _vzlist(vps.node)
    conf = ConfFile.load(vps.node.conf_dir / f"{VEID}.conf").as_dict()
    vps.conf = {k: conf[k] for k in _CONF_KEYS if k in conf}
    vps.status = await _vps_status(demo)
    rows = await fetch(demo.conn, "SELECT confirmed FROM vps WHERE vps_id = %s", (VEID,))
    vps.confirmed = int(rows[0]["confirmed"]) if rows else None


async def _look_at_mount(demo: Demo, st: Storage, vps: VpsRun) -> None:
    """After vps_mount: the state the daemon recorded, the mounts below the VPS root, and a file each way
    between the host's dataset and the inside of the VPS."""
    assert vps.node is not None
    vps.mounted_state = await _mount_state(demo, vps.mount_id, "mounted")
    vps.host_mounts = mount_entries(vps.node.ve_root)
    name = f"{st.fs(VZ_NODE)}/{VEID}/data"
    private = Path((await st.zfs.get(name, ["mountpoint"]))[name]["mountpoint"].value) / "private"
    vps.data_private = str(private)
    await _off_loop(lambda: (private / "hello.txt").write_text(HELLO + "\n"))
    vz = vps.node.driver()
    try:
        vps.inside = (await vz.exec(VEID, ["cat", f"{DST}/hello.txt"])).stdout.strip()
        await vz.exec_shell(VEID, f"echo '{FROM_VPS}' > {DST}/from-vps.txt")
        vps.on_host = (await _off_loop(lambda: (private / "from-vps.txt").read_text())).strip()
    except (VzError, OSError) as exc:
        vps.errors.append(f"files through {DST}: {exc}")


async def _look_at_stop(demo: Demo, vps: VpsRun) -> None:
    assert vps.node is not None
    vps.unmounted_state = await _mount_state(demo, vps.mount_id, "unmounted") if vps.mount_id else None
    vps.stopped_status = await _vps_status(demo)
    vps.stopped_vzlist = await _vzlist(vps.node)
    vps.left_mounted = mount_entries(vps.node.ve_root)


# ----------------------------------------------------------------------------------------------------------
# Report


def _status_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no row"
    return (f"up {row['vps_up']}, nproc {row['vps_nproc']}, memory {row['vps_vm_used_mb']} MiB, "
            f"disk {row['vps_disk_used_mb']} MiB")


async def report_vps(st: Storage, vps: VpsRun) -> list[str]:
    """Print what the VPS scenario saw; return what differs from a VPS that was created, started, had its
    dataset mounted and was stopped with every mount released."""
    node = vps.node
    if node is None or node.skipped is not None:
        say(f"\nVPS {VEID}: not run ({node.skipped if node else 'no fake vzctl node'})")
        return []
    say(f"\nVPS {VEID} on node1 ({node.describe()})")
    names = [s.name for s in vps.scenarios if int(s.chain.get("state", -1)) == ChainState.DONE]
    problems = [f"vps: {e}" for e in vps.errors]
    if names != ["vps_create", "vps_mount", "vps_stop"]:
        problems.append(f"vps: chains done: {names}, expected vps_create, vps_mount and vps_stop")
    if "vps_create" not in names:
        return problems
    _print_start(vps)
    problems += _check_start(vps)
    if "vps_mount" in names:
        _print_mount(st, vps)
        problems += _check_mount(vps)
    _print_stop(vps)
    problems += _check_stop(vps)
    return problems


def _print_start(vps: VpsRun) -> None:
    say(f"\n  after vps_create (running):\n  $ vzlist -a {VEID}")
    for line in vps.vzlist.splitlines():
        say(f"    {line}")
    say(f"  {VEID}.conf: " + " ".join(f'{k}="{v}"' for k, v in vps.conf.items()))
    say(f"  vps_status (1001's post_save): {_status_text(vps.status)}; vps#{VEID} confirmed={vps.confirmed}")


def _check_start(vps: VpsRun) -> list[str]:
    problems: list[str] = []
    want = {"HOSTNAME": HOSTNAME, "NAMESERVER": NAMESERVER, "CPUS": "2", "ORIGIN_SAMPLE": CONFIG, "ONBOOT": "yes"}
    for key, value in want.items():
        if vps.conf.get(key) != value:
            problems.append(f"vps: {VEID}.conf has {key}={vps.conf.get(key)!r}, expected {value!r}")
    if not re.search(rf"^\s*{VEID}\s+\d+\s+running\b", vps.vzlist, re.MULTILINE):
        problems.append(f"vps: vzlist does not show {VEID} running: {vps.vzlist!r}")
    s = vps.status
    if s is None or int(s["vps_up"]) != 1 or not s["vps_nproc"] or not s["vps_vm_used_mb"]:
        problems.append(f"vps: vps_status after the start is {s}, expected up with processes and memory")
    if vps.confirmed != 1:
        problems.append(f"vps: vps#{VEID} confirmed={vps.confirmed}, expected 1 (3001's create confirmation)")
    return problems


def _print_mount(st: Storage, vps: VpsRun) -> None:
    assert vps.node is not None
    conf, data = vps.node.conf_dir, vps.node.mounts_dir(VZ_NODE)
    say(f"\n  after vps_mount: mounts#{vps.mount_id} {DST} <- {st.fs(VZ_NODE)}/{VEID}/data, current_state "
        f"{vps.mounted_state}; 5301 wrote {conf}/{VEID}.mount, {VEID}.umount and {data}/{VEID}.mounts")
    say("  mounts at and below the VPS root (/proc/self/mountinfo):")
    table(["target", "fstype", "source[path]"],
          [[e.target, e.fstype, f"{e.source}[{e.root}]"] for e in vps.host_mounts], indent="    ")
    say(f"  host wrote {vps.data_private}/hello.txt; inside the VPS `cat {DST}/hello.txt`: {vps.inside!r}")
    say(f"  inside the VPS `echo ... > {DST}/from-vps.txt`; the host reads {vps.data_private}/from-vps.txt: "
        f"{vps.on_host!r}")


def _check_mount(vps: VpsRun) -> list[str]:
    assert vps.node is not None
    problems: list[str] = []
    targets = [e.target for e in vps.host_mounts]
    root = str(vps.node.ve_root.resolve())
    if targets != [root, root + DST]:
        problems.append(f"vps: mounts below the VPS root are {targets}, expected {[root, root + DST]}")
    if vps.mounted_state != "mounted":
        problems.append(f"vps: mounts#{vps.mount_id} current_state is {vps.mounted_state}, expected mounted")
    if vps.inside != HELLO:
        problems.append(f"vps: the VPS reads {vps.inside!r} from {DST}/hello.txt, expected {HELLO!r}")
    if vps.on_host != FROM_VPS:
        problems.append(f"vps: the host reads {vps.on_host!r} from the dataset, expected {FROM_VPS!r}")
    return problems


def _print_stop(vps: VpsRun) -> None:
    assert vps.node is not None
    row = next((line for line in vps.stopped_vzlist.splitlines() if line.split()[:1] == [str(VEID)]), "")
    say(f"\n  after vps_stop: vps_status {_status_text(vps.stopped_status)}; vzlist: {' '.join(row.split())}")
    say(f"  mounts#{vps.mount_id} current_state {vps.unmounted_state} (the .umount action script's report); "
        f"mounted at or below {vps.node.ve_root}: " + (", ".join(e.target for e in vps.left_mounted) or "nothing"))


def _check_stop(vps: VpsRun) -> list[str]:
    problems: list[str] = []
    s = vps.stopped_status
    if s is None or int(s["vps_up"]) != 0:
        problems.append(f"vps: vps_status after the stop is {s}, expected down")
    if vps.mount_id and vps.unmounted_state != "unmounted":
        problems.append(f"vps: mounts#{vps.mount_id} current_state is {vps.unmounted_state}, expected unmounted")
    if vps.left_mounted:
        problems.append(f"vps: still mounted after the stop: {[e.target for e in vps.left_mounted]}")
    return problems

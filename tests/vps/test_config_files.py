"""2008 apply config, 3001 create, 3002 destroy and 4001-4003 through a real engine and MariaDB on the fake vzctl:
the files each leaves (conf keys and formats, ``*.destroyed``, roots), their rollbacks, and 4001's scp argv
against a fake scp."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.vps.conftest import TEMPLATE, FakeVz, Scp, chain, conf, errors, make_ct, run
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState

pytestmark = pytest.mark.timeout(120)

FAIL = (90001, {"fail": True})
SAMPLE = '# 1 GiB\nPHYSPAGES="0:1G"\nSWAPPAGES="0:256M"\nNUMPROC="400:400"\n'


def write_sample(fakevz: FakeVz, name: str, text: str) -> None:
    (fakevz.conf_dir / f"ve-{name}.conf-sample").write_text(text)


# ------------------------------------------------------------------------------------------------------------
# 2008


async def test_apply_config_and_its_rollback(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    write_sample(fakevz, "vswap-1g", SAMPLE)
    write_sample(fakevz, "vps-101", 'CPUS="3"\nHOSTNAME="ignored"\n')
    fakevz.ok("start", "101")
    before = (fakevz.conf_dir / "101.conf").read_text()
    params = {"configs": ["vswap-1g", "vps-101"], "pool_fs": "tank/vz", "dataset_name": "101"}
    state, rows = await run(db, vcfg, chain((2008, params), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert (fakevz.conf_dir / "101.conf").read_text() == before, "the backup was renamed back"
    assert not (fakevz.conf_dir / "101.conf.backup").exists()

    state, rows = await run(db, vcfg, chain((2008, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz)
    assert (c["PHYSPAGES"], c["SWAPPAGES"], c["NUMPROC"], c["CPUS"]) == ("0:262144", "0:65536", "400", "3")
    assert c["HOSTNAME"] == "ct101" and c["ORIGIN_SAMPLE"] == "vps-101"  # applyconfig never copies HOSTNAME
    assert (fakevz.conf_dir / "101.conf.backup").read_text() == before   # v2.0's cp -p backup stays


async def test_apply_config_missing_sample_restores_the_conf(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    write_sample(fakevz, "vswap-1g", SAMPLE)
    (fakevz.conf_dir / "101.conf.backup").write_text("# an old backup of another run\n")
    before = (fakevz.conf_dir / "101.conf").read_text()
    state, rows = await run(db, vcfg, chain((2008, {"configs": ["vswap-1g", "missing"]})))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["exitstatus"] == 109 and out["vz_error"] == "ApplyConfigFailed"
    assert (fakevz.conf_dir / "101.conf").read_text() == before   # vswap-1g applied, then undone


async def test_apply_config_rollback_never_restores_someone_elses_backup(db: Any, vcfg: Config,
                                                                         fakevz: FakeVz) -> None:
    """A failed exec that made no backup must not rename an older one over the conf: here the conf is missing,
    so the backup step fails, and the stale backup of another run stays where it is."""
    (fakevz.conf_dir / "101.conf.backup").write_text('VE_ROOT="/stale"\n')
    state, rows = await run(db, vcfg, chain((2008, {"configs": ["basic"]})))
    assert state["state"] == ChainState.FAILED
    assert "cannot back up" in errors(rows)[0][1]["error"]
    assert errors(rows)[0][1]["rollback"]["note"].startswith("this transaction made no backup")
    assert (fakevz.conf_dir / "101.conf.backup").read_text() == 'VE_ROOT="/stale"\n'
    assert not (fakevz.conf_dir / "101.conf").exists()


# ------------------------------------------------------------------------------------------------------------
# 3001, 3002


async def test_create_and_its_rollback(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    params = {"hostname": "new.example.org", "template": TEMPLATE, "onboot": True}
    state, rows = await run(db, vcfg, chain((3001, params), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert not (fakevz.conf_dir / "101.conf").exists() and (fakevz.conf_dir / "101.conf.destroyed").exists()
    assert not (fakevz.root / "vz/root/101").exists()

    private = fakevz.root / "vz/private/101/private"
    shutil.rmtree(private)  # no dataset here to take it away: 5201's rollback does that in a real chain
    state, rows = await run(db, vcfg, chain((3001, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz)
    assert c["VE_PRIVATE"] == str(private) and c["OSTEMPLATE"] == TEMPLATE and c["HOSTNAME"] == "new.example.org"
    assert c["ORIGIN_SAMPLE"] == "basic" and c["PHYSPAGES"] == "0:65536" and c["DISKSPACE"] == "2097152:2306867"
    assert (private / "sbin" / "init").is_file() and (fakevz.root / "vz/root/101").is_dir()


async def test_create_over_existing_container_destroys_nothing(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz, private=f"{fakevz.root}/vz/private/101/private")
    before = (fakevz.conf_dir / "101.conf").read_text()
    state, rows = await run(db, vcfg, chain((3001, {"template": TEMPLATE})))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["exitstatus"] == 44 and out["rollback"]["note"] == "no container was created"
    assert (fakevz.conf_dir / "101.conf").read_text() == before


async def test_destroy_renames_configs_and_removes_the_root(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    mounts = Path(vcfg.mounts_dir)
    for name in ("101.mount", "101.umount"):
        (fakevz.conf_dir / name).write_text("#!/bin/sh\n")
    (mounts / "101.mounts").write_text("[]\n")
    fakevz.ok("start", "101")
    state, rows = await run(db, vcfg, chain((3002, {})))
    assert state["state"] == ChainState.FAILED, "the mounted root cannot be removed: nothing is renamed"
    assert (fakevz.conf_dir / "101.conf").exists()

    fakevz.ok("stop", "101")
    state, rows = await run(db, vcfg, chain((3002, {})))
    assert state["state"] == ChainState.DONE, errors(rows)
    for path in (fakevz.conf_dir / "101.conf", fakevz.conf_dir / "101.mount", fakevz.conf_dir / "101.umount",
                 mounts / "101.mounts"):
        assert not path.exists() and path.with_name(path.name + ".destroyed").exists()
    assert not (fakevz.root / "vz/root/101").exists()
    assert (fakevz.root / "vz/private/101/sbin/init").exists(), "the private area is the datasets' business"
    state, rows = await run(db, vcfg, chain((3002, {})))
    assert state["state"] == ChainState.DONE, "a second destroy finds nothing left to do"


# ------------------------------------------------------------------------------------------------------------
# 4001, 4002, 4003


async def test_copy_configs_locally_to_a_new_id(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    fakevz.ok("set", "101", "--onboot", "yes", "--save")
    script = fakevz.conf_dir / "101.mount"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o750)
    params = {"dst_vps": 102, "local": True, "src_node_addr": None}
    state, rows = await run(db, vcfg, chain((4001, params), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert not (fakevz.conf_dir / "102.conf").exists() and (fakevz.conf_dir / "102.conf.destroyed").exists()

    state, rows = await run(db, vcfg, chain((4001, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz, 102)
    assert c["VE_ROOT"] == f"{fakevz.root}/vz/root/102" and c["VE_PRIVATE"] == f"{fakevz.root}/vz/private/102/private"
    assert c["ONBOOT"] == "no" and c["HOSTNAME"] == "ct101" and conf(fakevz)["ONBOOT"] == "yes"
    assert (fakevz.conf_dir / "102.mount").stat().st_mode & 0o777 == 0o750   # cp -p
    assert not (fakevz.conf_dir / "102.umount").exists()                      # the source had none


async def test_copy_configs_from_another_node_with_scp(db: Any, vcfg: Config, fakevz: FakeVz, scp: Scp) -> None:
    conf_dir, mounts = Path(vcfg.vz.vz_conf) / "conf", Path(vcfg.mounts_dir)
    remote_conf = scp.remote / str(conf_dir).lstrip("/")
    remote_conf.mkdir(parents=True)
    (remote_conf / "101.conf").write_text(f'VE_ROOT="{fakevz.root}/vz/root/$VEID"\nONBOOT="yes"\nCPUS="2"\n')
    (remote_conf / "101.mount").write_text("#!/bin/sh\n")
    params = {"dst_vps": 101, "local": False, "src_node_addr": "2001:db8::2"}
    state, rows = await run(db, vcfg, chain((4001, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert scp.calls == [["-B", "-p", "-q", f"[2001:db8::2]:{conf_dir}/101.{s}", f"{conf_dir}/.101.{s}.scp"]
                         for s in ("mount", "umount", "conf")] + [
        ["-B", "-p", "-q", f"[2001:db8::2]:{mounts}/101.mounts", f"{mounts}/.101.mounts.scp"]]
    c = conf(fakevz)
    assert (c["CPUS"], c["ONBOOT"]) == ("2", "no")
    assert (conf_dir / "101.mount").read_text() == "#!/bin/sh\n" and not (conf_dir / "101.umount").exists()

    (remote_conf / "101.conf").unlink()
    (conf_dir / "101.conf").rename(conf_dir / "101.conf.old")
    state, rows = await run(db, vcfg, chain((4001, {**params, "src_node_addr": "192.0.2.2"})))
    assert state["state"] == ChainState.FAILED
    assert errors(rows)[0][1]["error"] == "CT config does not exist"
    assert scp.calls[-1][3] == f"192.0.2.2:{mounts}/101.mounts"


async def test_create_root_and_config(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    steps = ((4002, {}), (4003, {"os_template": TEMPLATE}))
    state, rows = await run(db, vcfg, chain(*steps, FAIL, vps=102))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert not (fakevz.root / "vz/root/102").exists() and not (fakevz.conf_dir / "102.conf").exists()

    state, rows = await run(db, vcfg, chain(*steps, vps=102))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert (fakevz.root / "vz/root/102").is_dir()
    assert (fakevz.conf_dir / "102.conf").read_text() == (
        f'VE_ROOT="{fakevz.root}/vz/root/102"\nVE_PRIVATE="{fakevz.root}/vz/private/102/private"\n'
        f'OSTEMPLATE="{TEMPLATE}"\n')
    state, rows = await run(db, vcfg, chain(*steps, vps=102))
    assert state["state"] == ChainState.DONE, "4002 and 4003 run again over their own results"


async def test_create_config_keeps_another_containers_conf(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    before = (fakevz.conf_dir / "101.conf").read_text()
    state, rows = await run(db, vcfg, chain((4003, {"os_template": TEMPLATE})))
    assert state["state"] == ChainState.FAILED
    assert "another container" in errors(rows)[0][1]["error"]
    assert (fakevz.conf_dir / "101.conf").read_text() == before
    assert await fetch(db, "SELECT 1 FROM vps_status") == []


def test_fake_create_fills_an_empty_private_area(fakevz: FakeVz) -> None:
    """vzctl 4.x refuses only a private area that is not an empty directory (``dir_empty(fs->private) != 1``):
    3001 fills the empty ``private`` directory that 5201 made in the dataset."""
    private = fakevz.root / "vz/private/101/private"
    private.mkdir(parents=True)
    fakevz.ok("create", "101", "--ostemplate", TEMPLATE, "--private", str(private))
    assert (private / "sbin/init").is_file()
    other = fakevz.root / "vz/private/102/private"
    other.mkdir(parents=True)
    (other / "lost+found").mkdir()
    done = fakevz.vzctl("create", "102", "--ostemplate", TEMPLATE, "--private", str(other))
    assert done.returncode == 44 and "Private area already exists" in done.stderr

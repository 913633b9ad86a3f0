"""What the VPS handlers do when a crash interrupted them: a new handler object for the same transaction, as the
engine builds after a restart (``idempotent`` re-run, or ``recover``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.vps.conftest import TEMPLATE, FakeVz, conf, make_ct, make_handler
from vpsadmind.engine.model import Direction, TSuccess
from vpsadmind.handlers.base import HandlerContext, Outcome, Recovery

pytestmark = pytest.mark.timeout(120)

SAMPLE = 'PHYSPAGES="0:1G"\nSWAPPAGES="0:256M"\n'


async def test_apply_config_rerun_starts_from_its_own_backup(hctx: HandlerContext, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    (fakevz.conf_dir / "ve-vswap-1g.conf-sample").write_text(SAMPLE)
    (fakevz.conf_dir / "ve-cpus.conf-sample").write_text('CPUS="4"\n')
    pristine = (fakevz.conf_dir / "101.conf").read_text()
    params = {"configs": ["vswap-1g", "cpus"]}
    first = make_handler(hctx, 2008, params, t_id=77)
    # the interrupted run: backup and marker written, the first sample applied, then the daemon died
    first.vz.backup_conf(101)
    (fakevz.conf_dir / "101.conf.backup.tid").write_text("77\n")
    fakevz.ok("set", "101", "--applyconfig", "vswap-1g", "--save")
    assert (fakevz.conf_dir / "101.conf").read_text() != pristine

    again = make_handler(hctx, 2008, params, t_id=77)
    assert again.idempotent
    await again.exec()
    assert (fakevz.conf_dir / "101.conf.backup").read_text() == pristine, "the backup is still the pristine conf"
    assert (conf(fakevz)["PHYSPAGES"], conf(fakevz)["CPUS"]) == ("0:262144", "4")
    await make_handler(hctx, 2008, params, t_id=77, t_output=json.dumps({"applied": params["configs"]})).rollback()
    assert (fakevz.conf_dir / "101.conf").read_text() == pristine
    assert not (fakevz.conf_dir / "101.conf.backup.tid").exists()


async def test_create_recover(hctx: HandlerContext, fakevz: FakeVz) -> None:
    params = {"template": TEMPLATE, "hostname": "ct101"}
    h = make_handler(hctx, 3001, params)
    assert await h.recover(Direction.EXECUTE) is Recovery.RERUN, "nothing happened: run it"

    private = Path(hctx.config.vz.ve_private.replace("%{veid}", "101"))
    fakevz.ok("create", "101", "--ostemplate", TEMPLATE, "--private", str(private))  # vzctl create finished
    out = await make_handler(hctx, 3001, params).recover(Direction.EXECUTE)
    assert isinstance(out, Outcome) and out.status == TSuccess.OK
    assert conf(fakevz)["ORIGIN_SAMPLE"] == "basic" and conf(fakevz)["PHYSPAGES"] == "0:65536"

    other = make_handler(hctx, 3001, {"template": "centos-7-x86_64"})
    out = await other.recover(Direction.EXECUTE)
    assert isinstance(out, Outcome) and out.status == TSuccess.FAILED and "not this create's" in out.output["error"]

    (fakevz.conf_dir / "101.conf").unlink()   # vzctl died while unpacking: files without a conf
    out = await make_handler(hctx, 3001, params).recover(Direction.EXECUTE)
    assert isinstance(out, Outcome) and out.status == TSuccess.FAILED and "without a conf" in out.output["error"]
    shutil.rmtree(private)


async def test_deploy_ssh_key_rerun_keeps_the_original_backup(hctx: HandlerContext) -> None:
    ssh = Path(hctx.config.node.known_hosts).parent
    ssh.mkdir()
    (ssh / "id_rsa").write_text("ORIGINAL\n")
    params = {"key_type": "rsa", "public_key": "ssh-rsa NEW", "private_key": "NEW PRIVATE\n"}
    await make_handler(hctx, 7, params, vps=None).exec()     # interrupted before its save
    await make_handler(hctx, 7, params, vps=None).exec()     # the re-run
    assert (ssh / "id_rsa.backup").read_text() == "ORIGINAL\n"
    assert (ssh / "authorized_keys").read_text() == "ssh-rsa NEW\n"
    await make_handler(hctx, 7, {"key_type": "rsa"}, vps=None).rollback()
    assert (ssh / "id_rsa").read_text() == "ORIGINAL\n"
    assert not (ssh / "id_rsa.pub").exists() and not (ssh / "authorized_keys").exists()


@pytest.mark.parametrize("code", [5, 6, 7, 1001, 1002, 1003, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2013,
                                  3001, 3002, 4001, 4002, 4003, 7301, 7302, 7303, 8001])
def test_crash_strategy_is_declared(code: int) -> None:
    """Every handler either re-runs safely or overrides recover, and its docstring says how it survives."""
    from tests.vps.conftest import VPS_MODULES
    from vpsadmind.handlers.base import HANDLERS, Handler, import_handler_modules

    import_handler_modules(VPS_MODULES)
    cls: Any = HANDLERS[code]
    assert cls.idempotent != (cls.recover is not Handler.recover), cls
    assert "crash" in (cls.__doc__ or "").lower(), cls

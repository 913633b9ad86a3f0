"""vzlist through the driver (JSON, text columns, v2.0's status row) and the parsers on vzlist's documented output."""

from __future__ import annotations

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.system import record_calls
from vpsadmind.testing.fakevz import faults
from vpsadmind.vz import StatusRow, Vz, VzctlFailed, VzError, listing, pages_to_mib


async def test_json_for_the_integrity_fields(vz: Vz, fakevz: FakeVz) -> None:
    """v2.0's integrity check: ``vzlist -aj -o veid,status,onboot,private,root,hostname,ostemplate,physpages,
    swappages,cpus,cpulimit,ip``."""
    await create_ct(vz)
    await vz.set(101, {"ram": "2048M", "swap": "1024M", "cpus": 2, "cpulimit": 200, "ipadd": ["192.0.2.7"],
                       "onboot": True})
    await vz.start(101)
    fields = ["veid", "status", "onboot", "private", "root", "hostname", "ostemplate", "physpages", "swappages",
              "cpus", "cpulimit", "ip"]
    with record_calls() as log:
        rows = await vz.vzlist(fields=fields)
    assert log.calls[0][1:] == ["-j", "-a", "-o", ",".join(fields)]
    [row] = rows
    assert list(row) == fields
    assert row["veid"] == 101 and row["status"] == "running" and row["onboot"] is True
    assert row["private"] == f"{fakevz.root}/vz/private/101"
    assert pages_to_mib(row["physpages"]["limit"]) == 2048
    assert pages_to_mib(row["swappages"]["limit"]) == 1024
    assert (row["cpus"], row["cpulimit"], row["ip"]) == (2, 200, ["192.0.2.7"])


async def test_all_fields_and_selection(vz: Vz) -> None:
    await create_ct(vz, 101)
    await create_ct(vz, 102, hostname="ct102")
    await vz.start(102)
    every = await vz.vzlist()
    assert [r["ctid"] for r in every] == [101, 102]
    assert set(listing.FIELDS) == set(every[0])
    running = await vz.vzlist(include_stopped=False)
    assert [r["ctid"] for r in running] == [102]
    assert running[0]["numproc"]["held"] > 0 and every[0]["numproc"]["held"] == 0
    assert await vz.vzlist([555]) == []
    assert [r["ctid"] for r in await vz.vzlist([102, 555])] == [102]
    assert await vz.vzlist([]) == []


async def test_text_rows(vz: Vz) -> None:
    await create_ct(vz)
    await vz.set(101, {"ipadd": ["192.0.2.7", "192.0.2.8"]})
    rows = await vz.vzlist_table(fields=["ctid", "ip", "status", "hostname"])
    assert rows == [{"ctid": "101", "ip": "192.0.2.7", "status": "stopped", "hostname": "ct101"}]
    last_ip = await vz.vzlist_table(fields=["ctid", "ip"])
    assert last_ip[0]["ip"] == "192.0.2.7 192.0.2.8"         # the last column is not trimmed
    assert await vz.vzlist_table([777]) == []


async def test_status_row_like_v20(vz: Vz) -> None:
    await create_ct(vz)
    with record_calls() as log:
        stopped = await vz.status_row(101)
    assert log.calls[0][1:] == ["--no-header", "101"]
    assert stopped == StatusRow(101, None, "stopped", None, "ct101")
    assert not stopped.running
    await vz.start(101)
    running = await vz.status_row(101)
    assert running is not None and running.running and running.nproc == 12
    assert await vz.status_row(999) is None


def test_parse_table_on_vzlist_text() -> None:
    text = ("       101         26 running   10.0.0.1        ct101.example.org\n"
            "       102          - stopped   -               -\n")
    rows = listing.parse_table(text, listing.DEFAULT_FIELDS)
    assert rows[0] == {"ctid": "101", "numproc": "26", "status": "running", "ip": "10.0.0.1",
                       "hostname": "ct101.example.org"}
    assert rows[1]["numproc"] is None and rows[1]["hostname"] is None
    assert listing.parse_status_row(text) == StatusRow(101, 26, "running", "10.0.0.1", "ct101.example.org")
    with pytest.raises(VzError):
        listing.parse_table("  101 running\n", listing.DEFAULT_FIELDS)


def test_parse_json_errors() -> None:
    assert listing.parse_json("[]") == []
    with pytest.raises(VzError):
        listing.parse_json("{not json")
    with pytest.raises(VzError):
        listing.parse_json('{"ctid": 1}')


async def test_vzlist_failure_is_not_read_as_a_vzctl_code(vz: Vz, fakevz: FakeVz) -> None:
    faults.fail(fakevz.root, "list", program="vzlist", rc=2, message="vzlist: broken")
    with pytest.raises(VzctlFailed) as info:
        await vz.vzlist()
    assert info.value.code is None and info.value.exitstatus == 2
    assert str(info.value).endswith("exit 2: vzlist: broken")

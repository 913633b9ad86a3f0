"""The fake's ``set --save`` output against the formats vzctl 4.9 writes, quoted from the reference
(v2-details.md §2.5-2.6 and the issue): each expected line below is written out by hand, not computed."""

from __future__ import annotations

import pytest

from tests.vz.conftest import TEMPLATE, FakeVz

CASES: list[tuple[list[str], list[str]]] = [
    (["--ram", "4096M"], ['PHYSPAGES="0:1048576"']),                     # "4096M -> 0:1048576"
    (["--ram", "1024M"], ['PHYSPAGES="0:262144"']),                      # the example
    (["--swap", "1024M"], ['SWAPPAGES="0:262144"']),
    (["--cpus", "2", "--cpulimit", "200"], ['CPUS="2"', 'CPULIMIT="200"']),
    (["--diskspace", "10G"], ['DISKSPACE="10485760:10485760"']),         # KiB, hard = soft when omitted
    (["--diskspace", "1G:2G"], ['DISKSPACE="1048576:2097152"']),
    (["--devices", "c:10:200:rw"], ['DEVICES="c:10:200:rw "']),          # trailing space before the quote
    (["--devnodes", "net/tun:rw"], ['DEVNODES="net/tun:rw "']),
    (["--capability", "net_admin:on"], ['CAPABILITY="NET_ADMIN:on"']),
    (["--features", "nfsd:on", "--features", "bridge:on", "--features", "ppp:off", "--features", "nfs:on"],
     ['FEATURES="nfs:on ppp:off bridge:on nfsd:on"']),                  # vzctl's fixed order
    (["--netfilter", "full"], ['NETFILTER="full"']),
    (["--ipadd", "1.2.3.4", "--ipadd", "5.6.7.8"], ['IP_ADDRESS="1.2.3.4 5.6.7.8"']),
    (["--ipadd", "2001:DB8:0::1"], ['IP_ADDRESS="2001:db8::1"']),        # IPv6 canonicalised
    (["--hostname", "ct101.example.org"], ['HOSTNAME="ct101.example.org"']),
    (["--nameserver", "8.8.8.8", "--nameserver", "8.8.4.4"], ['NAMESERVER="8.8.8.8 8.8.4.4"']),
    (["--onboot", "yes"], ['ONBOOT="yes"']),
    (["--onboot", "no"], ['ONBOOT="no"']),
    (["--root", "/vz/root/$VEID", "--private", "/vz/private/$VEID/private"],
     ['VE_ROOT="/vz/root/$VEID"', 'VE_PRIVATE="/vz/private/$VEID/private"']),   # the literal string given
    (["--ostemplate", "scientific-6-x86_64"], ['OSTEMPLATE="scientific-6-x86_64"']),
    (["--numiptent", "1000"], ['NUMIPTENT="1000"']),                     # barrier = limit: one value
    (["--numproc", "80:100"], ['NUMPROC="80:100"']),
    (["--privvmpages", "unlimited"], ['PRIVVMPAGES="unlimited"']),
]


@pytest.mark.parametrize(("args", "lines"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_set_save_writes_vzctls_lines(fakevz: FakeVz, args: list[str], lines: list[str]) -> None:
    fakevz.conf_dir.joinpath("101.conf").write_text("# existing\n")
    fakevz.ok("set", "101", *args, "--save")
    written = fakevz.conf(101).splitlines()
    assert written[0] == "# existing"
    assert written[1:] == lines


def test_lists_merge_like_vzctl(fakevz: FakeVz) -> None:
    conf = fakevz.conf_dir / "101.conf"
    conf.write_text('IP_ADDRESS="1.2.3.4"\nDEVICES="c:10:229:rw "\nCAPABILITY="CHOWN:off"\n')
    fakevz.ok("set", "101", "--ipadd", "5.6.7.8", "--devices", "c:10:200:rw", "--capability", "net_admin:on",
              "--save")
    assert fakevz.conf(101).splitlines() == ['IP_ADDRESS="1.2.3.4 5.6.7.8"', 'DEVICES="c:10:229:rw c:10:200:rw "',
                                             'CAPABILITY="CHOWN:off NET_ADMIN:on"']
    fakevz.ok("set", "101", "--ipdel", "1.2.3.4", "--devices", "c:10:229:none", "--save")
    assert 'IP_ADDRESS="5.6.7.8"' in fakevz.conf(101) and 'DEVICES="c:10:200:rw "' in fakevz.conf(101)
    fakevz.ok("set", "101", "--ipdel", "all", "--devices", "c:10:200:none", "--save")
    assert 'IP_ADDRESS=""' in fakevz.conf(101) and 'DEVICES=""' in fakevz.conf(101)   # everything removed


def test_lines_are_replaced_in_place(fakevz: FakeVz) -> None:
    conf = fakevz.conf_dir / "101.conf"
    conf.write_text('# head\nONBOOT="no"\nUNKNOWN_KEY="kept"\nPHYSPAGES="0:256M"\n')
    fakevz.ok("set", "101", "--onboot", "yes", "--ram", "512M", "--save")
    assert conf.read_text() == '# head\nONBOOT="yes"\nUNKNOWN_KEY="kept"\nPHYSPAGES="0:131072"\n'


def test_no_change_is_not_saved(fakevz: FakeVz) -> None:
    conf = fakevz.conf_dir / "101.conf"
    conf.write_text('ONBOOT="yes"\n')
    inode = conf.stat().st_ino
    out = fakevz.ok("set", "101", "--onboot", "yes", "--save")
    assert "No changes in CT configuration, not saving" in out
    assert conf.stat().st_ino == inode


def test_applyconfig_normalises_sample_values(fakevz: FakeVz) -> None:
    """A sample says ``PHYSPAGES="0:256M"``; what vzctl writes are plain numbers, and ORIGIN_SAMPLE."""
    fakevz.ok("create", "101", "--ostemplate", TEMPLATE)
    fakevz.ok("set", "101", "--applyconfig", "basic", "--save")
    lines = fakevz.conf(101).splitlines()
    for expected in ('PHYSPAGES="0:65536"', 'SWAPPAGES="0:131072"', 'DISKSPACE="2097152:2306867"',
                     'DISKINODES="131072:144179"', 'ORIGIN_SAMPLE="basic"', 'NETFILTER="stateless"'):
        assert expected in lines


def test_status_line_format(fakevz: FakeVz) -> None:
    assert fakevz.ok("status", "101") == "CTID 101 deleted unmounted down\n"
    fakevz.ok("create", "101", "--ostemplate", TEMPLATE)
    fakevz.ok("start", "101")
    assert fakevz.ok("status", "101") == "CTID 101 exist mounted running\n"


def test_vzlist_default_columns(fakevz: FakeVz) -> None:
    fakevz.ok("create", "101", "--ostemplate", TEMPLATE, "--hostname", "ct101", "--ipadd", "10.0.0.1",
              "--ipadd", "10.0.0.2")
    fakevz.ok("start", "101")
    out = fakevz.vzlist().stdout.splitlines()
    assert out[0] == "      CTID      NPROC STATUS    IP_ADDR         HOSTNAME"
    assert out[1] == "       101         12 running   10.0.0.1        ct101"
    assert fakevz.vzlist("--no-header", "101").stdout.split() == ["101", "12", "running", "10.0.0.1", "ct101"]

"""The 61 transaction types of vpsAdmin v2.0 as the API's transaction classes declare them.

For each ``t_type`` code: the class name (daemon-side naming, e.g. ``Dataset::Create``), the ``queue`` the API
writes into ``transactions.queue`` and the ``reversible`` value (0 not_reversible, 1 is_reversible,
2 keep_going). Source: contract section 5 (handler catalogue, "queue/rev" column), 3.4 (irreversible and
keep_going types) and 4.1 (queues). This is what the *API* would enqueue; the daemon's own handler registry
is a separate thing and must not import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "API_TYPES",
    "ApiType",
    "IRREVERSIBLE",
    "KEEP_GOING",
    "QUEUES",
    "REVERSIBLE",
    "api_type",
]

#: ``transactions.reversible`` values (API enum ``reversible``).
IRREVERSIBLE: Final = 0
REVERSIBLE: Final = 1
KEEP_GOING: Final = 2

#: Queue names the API's validation allows in v2.0.
QUEUES: Final = ("general", "storage", "network", "vps", "zfs_send", "mail")


@dataclass(frozen=True, slots=True)
class ApiType:
    """One transaction class of the v2.0 API."""

    code: int
    name: str
    queue: str
    reversible: int


_R, _I, _K = REVERSIBLE, IRREVERSIBLE, KEEP_GOING

# (code, class name, queue, reversible), grouped as in contract section 5.
_TABLE: Final[tuple[tuple[int, str, str, int], ...]] = (
    # 5.1 Node / cluster
    (5, "Node::GenerateKnownHosts", "general", _R),
    (6, "Node::StorePublicKeys", "general", _R),
    (7, "Node::DeploySshKey", "general", _R),
    (7301, "Hypervisor::CreateConfig", "general", _R),
    (7302, "Hypervisor::DeleteConfig", "general", _R),
    (7303, "Hypervisor::UpdateConfig", "general", _R),
    (2012, "Shaper::RootChange", "network", _R),
    (10001, "Utils::NoOp", "general", _R),
    # 5.2 VPS lifecycle and settings
    (1001, "Vps::Start", "vps", _R),
    (1002, "Vps::Stop", "vps", _R),
    (1003, "Vps::Restart", "vps", _R),
    (2002, "Vps::Passwd", "vps", _R),
    (2003, "Vps::Resources", "vps", _R),
    (2004, "Vps::Hostname", "vps", _R),
    (2005, "Vps::DnsResolver", "vps", _R),
    (2006, "Vps::IpAdd", "network", _R),
    (2007, "Vps::IpDel", "network", _R),
    (2008, "Vps::ApplyConfig", "vps", _R),
    (2009, "Shaper::Change", "network", _R),
    (2010, "Shaper::Set", "network", _R),
    (2011, "Shaper::Unset", "network", _R),
    (2013, "Vps::OsTemplate", "vps", _R),
    (2014, "Firewall::RegIp", "network", _R),
    (2015, "Firewall::UnregIp", "network", _K),
    (3001, "Vps::Create", "vps", _R),
    (3002, "Vps::Destroy", "vps", _I),
    (4001, "Vps::CopyConfigs", "general", _R),
    (4002, "Vps::CreateRoot", "general", _R),
    (4003, "Vps::CreateConfig", "general", _R),
    (8001, "Vps::Features", "vps", _R),
    # 5.3 Mounts
    (5301, "Vps::Mounts", "general", _R),
    (5302, "Vps::Mount", "general", _R),
    (5303, "Vps::Umount", "general", _R),
    # 5.4 Storage (ZFS)
    (5250, "Pool::Create", "storage", _R),
    (5201, "Dataset::Create", "storage", _R),
    (5203, "Dataset::Destroy", "storage", _I),
    (5204, "Dataset::Snapshot", "storage", _R),
    (5215, "Dataset::GroupSnapshot", "storage", _R),
    (5206, "Branch::Create", "storage", _R),
    (5207, "Branch::Destroy", "storage", _I),
    (5213, "DatasetTree::Create", "storage", _R),
    (5214, "DatasetTree::Destroy", "storage", _I),
    (5208, "Dataset::LocalRollback", "storage", _I),
    (5209, "Dataset::PrepareRollback", "storage", _R),
    (5211, "Dataset::ApplyRollback", "storage", _I),
    (5212, "Dataset::DestroySnapshot", "storage", _I),
    (5216, "Dataset::Set", "storage", _R),
    (5219, "Dataset::Inherit", "storage", _R),
    (5217, "Dataset::CloneSnapshot", "storage", _R),
    (5218, "Dataset::RemoveClone", "storage", _R),
    (5224, "Dataset::CloneSnapshotName", "storage", _R),
    (5220, "Dataset::Recv", "storage", _R),
    (5221, "Dataset::Send", "zfs_send", _R),
    (5222, "Dataset::RecvCheck", "storage", _R),
    (5223, "Dataset::LocalSend", "zfs_send", _R),
    (5004, "Dataset::DownloadSnapshot", "general", _R),
    (5005, "Dataset::RemoveDownload", "general", _I),
    # 5.5 Integrity, mail
    (6005, "IntegrityCheck::Storage", "general", _R),
    (6006, "IntegrityCheck::Vps", "general", _R),
    (6001, "IntegrityCheck::Finalize", "general", _R),
    (9001, "Mail::Send", "mail", _K),
)

API_TYPES: Final[dict[int, ApiType]] = {
    code: ApiType(code=code, name=name, queue=queue, reversible=rev) for code, name, queue, rev in _TABLE
}

if len(API_TYPES) != 61 or len(_TABLE) != 61:  # pragma: no cover - guards against editing mistakes
    raise RuntimeError(f"expected 61 v2.0 transaction types, found {len(API_TYPES)} ({len(_TABLE)} rows)")


def api_type(code: int) -> ApiType:
    """The API's declaration of type ``code``; ``KeyError`` for a code v2.0 does not know."""
    try:
        return API_TYPES[code]
    except KeyError:
        raise KeyError(f"unknown v2.0 transaction type {code}") from None

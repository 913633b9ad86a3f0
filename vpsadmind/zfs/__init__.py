"""ZFS for vpsadmind: an async driver over the ``zfs``/``zpool`` CLI with typed errors, name validation and
capability probing (zfs-fuse 0.7.0 and OpenZFS)::

    zfs = Zfs()
    await zfs.probe()
    await zfs.create(join("vz/private", "101"), properties={"quota": "10G"})
"""

from vpsadmind.zfs import names
from vpsadmind.zfs.capabilities import Capabilities
from vpsadmind.zfs.driver import USAGE_PROPS, Prop, Snapshot, Zfs
from vpsadmind.zfs.errors import (
    AlreadyMounted,
    DaemonDown,
    DatasetBusy,
    DatasetExists,
    DatasetHasChildren,
    DatasetNotFound,
    DestinationExists,
    DestinationHasSnapshots,
    DestinationModified,
    HoldExists,
    HoldNotFound,
    InvalidName,
    InvalidProperty,
    InvalidStream,
    MoreRecentSnapshots,
    NameInvalid,
    NoSpace,
    NoSuchHold,
    NotMounted,
    ParentNotFound,
    PoolNotFound,
    SnapshotIsCloned,
    SnapshotIsHeld,
    Unsupported,
    WrongType,
    ZfsError,
    ZfsTimeout,
)
from vpsadmind.zfs.names import (
    join,
    parent,
    relative,
    split_snapshot,
    validate_bookmark,
    validate_component,
    validate_dataset,
    validate_name,
    validate_property,
    validate_relative,
    validate_snapshot,
    validate_snapshot_name,
    validate_tag,
    validate_value,
)

__all__ = [
    "Zfs", "Capabilities", "Prop", "Snapshot", "USAGE_PROPS", "names",
    # errors
    "ZfsError", "DatasetNotFound", "ParentNotFound", "PoolNotFound", "DatasetExists", "DestinationExists",
    "DestinationHasSnapshots", "DestinationModified", "DatasetBusy", "SnapshotIsHeld", "HoldExists",
    "NoSuchHold", "HoldNotFound", "DatasetHasChildren", "SnapshotIsCloned", "MoreRecentSnapshots", "NoSpace",
    "InvalidStream", "InvalidName", "NameInvalid", "InvalidProperty", "WrongType", "AlreadyMounted",
    "NotMounted", "Unsupported", "DaemonDown", "ZfsTimeout",
    # names
    "join", "parent", "relative", "split_snapshot", "validate_bookmark", "validate_component",
    "validate_dataset", "validate_name", "validate_property", "validate_relative", "validate_snapshot",
    "validate_snapshot_name", "validate_tag", "validate_value",
]

"""Usage texts, copied from zfs-fuse 0.7.0 (``zfs``/``zpool`` print them on stderr with rc 2).

In the OpenZFS dialect (see dialect.py) the ``send`` and ``receive`` lines are OpenZFS 2.x's instead: they list
``send -t <receive_resume_token>`` and ``receive -s``/``-A``, which is how vpsadmind's capability probe finds
resumable receive. The rest of the text stays zfs-fuse's.
"""

from __future__ import annotations

from vpsadmind.testing.fakezfs import dialect
from vpsadmind.testing.fakezfs.props import usage_table

__all__ = ["render", "ZFS_COMMANDS", "ZPOOL_COMMANDS"]

_ZFS = {
    "create": "\tcreate [-p] [-o property=value] ... <filesystem>\n"
              "\tcreate [-ps] [-b blocksize] [-o property=value] ... -V <size> <volume>\n",
    "destroy": "\tdestroy [-rRf] <filesystem|volume>\n\tdestroy [-rRd] <snapshot>\n",
    "snapshot": "\tsnapshot [-r] [-o property=value] ... <filesystem@snapname|volume@snapname>\n",
    "rollback": "\trollback [-rRf] <snapshot>\n",
    "clone": "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>\n",
    "promote": "\tpromote <clone-filesystem>\n",
    "rename": "\trename <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n"
              "\trename -p <filesystem|volume> <filesystem|volume>\n\trename -r <snapshot> <snapshot>",
    "list": "\tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...\n"
            "\t    [-S property] ... [filesystem|volume|snapshot] ...\n",
    "set": "\tset <property=value> <filesystem|volume|snapshot> ...\n",
    "get": '\tget [-rHp] [-d max] [-o "all" | field[,...]] [-s source[,...]]\n'
           '\t    <"all" | property[,...]> [filesystem|volume|snapshot] ...\n',
    "inherit": "\tinherit [-rS] <property> <filesystem|volume|snapshot> ...\n",
    "upgrade": "\tupgrade [-v]\n\tupgrade [-r] [-V version] <-a | filesystem ...>\n",
    "userspace": "\tuserspace [-hniHp] [-o field[,...]] [-sS field] ... [-t type[,...]]\n"
                 "\t    <filesystem|snapshot>\n",
    "groupspace": "\tgroupspace [-hniHpU] [-o field[,...]] [-sS field] ... [-t type[,...]]\n"
                  "\t    <filesystem|snapshot>\n",
    "mount": "\tmount\n\tmount [-vO] [-o opts] <-a | filesystem>\n",
    "unmount": "\tunmount [-f] <-a | filesystem|mountpoint>\n",
    "share": "\tshare <-a | filesystem>\n",
    "unshare": "\tunshare <-a | filesystem|mountpoint>\n",
    "send": "\tsend [-RDp] [-[iI] snapshot] <snapshot>\n",
    "receive": "\treceive [-vnF] <filesystem|volume|snapshot>\n\treceive [-vnF] -d <filesystem>\n",
    "allow": '\tallow <filesystem|volume>\n\tallow [-ldug] <"everyone"|user|group>[,...] <perm|@setname>[,...]\n'
             "\t    <filesystem|volume>\n\tallow [-ld] -e <perm|@setname>[,...] <filesystem|volume>\n"
             "\tallow -c <perm|@setname>[,...] <filesystem|volume>\n"
             "\tallow -s @setname <perm|@setname>[,...] <filesystem|volume>\n",
    "unallow": '\tunallow [-rldug] <"everyone"|user|group>[,...]\n'
               "\t    [<perm|@setname>[,...]] <filesystem|volume>\n"
               "\tunallow [-rld] -e [<perm|@setname>[,...]] <filesystem|volume>\n"
               "\tunallow [-r] -c [<perm|@setname>[,...]] <filesystem|volume>\n"
               "\tunallow [-r] -s @setname [<perm|@setname>[,...]] <filesystem|volume>\n",
    "hold": "\thold [-r] <tag> <snapshot> ...\n",
    "holds": "\tholds [-r] <snapshot> ...\n",
    "release": "\trelease [-r] <tag> <snapshot> ...\n",
}
# OpenZFS 2.x's lines for the commands whose flags vpsadmind probes (the rest of its usage is not modelled).
_OPENZFS = {
    "send": "\tsend [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>\n"
            "\tsend [-DnvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n"
            "\tsend [-DnvPe] -t <receive_resume_token>\n",
    "receive": "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
               "\t    <filesystem|volume|snapshot>\n"
               "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... \n"
               "\t    [-d | -e] <filesystem>\n"
               "\treceive -A <filesystem|volume>\n",
}
_ZFS_GROUPS = (
    ("create", "destroy"),
    ("snapshot", "rollback", "clone", "promote", "rename", "list"),
    ("set", "get", "inherit", "upgrade", "userspace", "groupspace"),
    ("mount", "unmount", "share", "unshare"),
    ("send", "receive"),
    ("allow",),
    ("unallow",),
    ("hold", "holds", "release"),
)
_ZFS_PROP_COMMANDS = frozenset({"set", "get", "inherit", "list"})
_ZFS_TAIL = ("\nFor the property list, run: zfs set|get\n"
             "\nFor the delegated permission list, run: zfs allow|unallow\n")
ZFS_COMMANDS = frozenset(_ZFS) | {"recv", "umount"}

_ZPOOL = {
    "create": "\tcreate [-fn] [-o property=value] ... \n\t    [-O file-system-property=value] ... \n"
              "\t    [-m mountpoint] [-R root] <pool> <vdev> ...\n",
    "destroy": "\tdestroy [-f] <pool>\n",
    "add": "\tadd [-fn] [-o property=value] <pool> <vdev> ...\n",
    "remove": "\tremove <pool> <device> ...\n",
    "list": "\tlist [-H] [-o property[,...]] [pool] ...\n",
    "iostat": "\tiostat [-v] [-T d|u] [pool] ... [interval [count]]\n",
    "status": "\tstatus [-vx] [pool] ...\n",
    "online": "\tonline <pool> <device> ...\n",
    "offline": "\toffline [-t] <pool> <device> ...\n",
    "clear": "\tclear [-nF] <pool> [device]\n",
    "attach": "\tattach [-f] [-o property=value] <pool> <device> <new-device>\n",
    "detach": "\tdetach <pool> <device>\n",
    "replace": "\treplace [-f] [-o property=value] <pool> <device> [new-device]\n",
    "split": "\tsplit [-n] [-R altroot] [-o mntopts]\n\t    [-o property=value] <pool> <newpool> [<device> ...]\n",
    "scrub": "\tscrub [-s] <pool> ...\n",
    "import": "\timport [-d dir] [-D]\n\timport [-d dir | -c cachefile] [-n] -F <pool | id>\n"
              "\timport [-o mntopts] [-o property=value] ... \n"
              "\t    [-d dir | -c cachefile] [-D] [-f] [-R root] -a [-v]\n"
              "\timport [-o mntopts] [-o property=value] ... \n"
              "\t    [-d dir | -c cachefile] [-D] [-f] [-R root] <pool | id> [newpool]\n",
    "export": "\texport [-f] <pool> ...\n",
    "upgrade": "\tupgrade\n\tupgrade -v\n\tupgrade [-V version] <-a | pool ...>\n",
    "history": "\thistory [-il] [<pool>] ...\n",
    "get": '\tget <"all" | property[,...]> <pool> ...\n',
    "set": "\tset <property=value> <pool> \n",
}
_ZPOOL_GROUPS = (
    ("create", "destroy"), ("add", "remove"), ("list", "iostat", "status"), ("online", "offline", "clear"),
    ("attach", "detach", "replace", "split"), ("scrub",), ("import", "export", "upgrade"),
    ("history", "get", "set"),
)
ZPOOL_COMMANDS = frozenset(_ZPOOL)
# (name, read-only, values) in the order zpool prints them
ZPOOL_PROPS = (
    ("allocated", True, "<size>"), ("capacity", True, "<size>"), ("dedupratio", True, "<1.00x or higher if deduped>"),
    ("free", True, "<size>"), ("guid", True, "<guid>"), ("health", True, "<state>"), ("size", True, "<size>"),
    ("altroot", False, "<path>"), ("ashift", False, "<ashift, 9-13, or 0=default>"),
    ("autoexpand", False, "on | off"), ("autoreplace", False, "on | off"), ("bootfs", False, "<filesystem>"),
    ("cachefile", False, "<file> | none"), ("dedupditto", False, "<threshold (min 100)>"),
    ("delegation", False, "on | off"), ("failmode", False, "wait | continue | panic"),
    ("listsnapshots", False, "on | off"), ("version", False, "<version>"),
)


def _zpool_table() -> str:
    rows = "".join(f"\t{name:<15}  {'  NO   ' if ro else ' YES   '}{values}\n" for name, ro, values in ZPOOL_PROPS)
    return "\nthe following properties are supported:\n\n\tPROPERTY         EDIT   VALUES\n\n" + rows


def _zfs_table() -> dict[str, str]:
    return {**_ZFS, **_OPENZFS} if dialect.openzfs() else _ZFS


def _top(program: str) -> str:
    table, groups = (_zfs_table(), _ZFS_GROUPS) if program == "zfs" else (_ZPOOL, _ZPOOL_GROUPS)
    text = f"usage: {program} command args ...\nwhere 'command' is one of the following:\n\n"
    text += "\n".join("".join(table[c].rstrip("\n") + "\n" for c in group) for group in groups)
    if program == "zfs":
        text += "\nEach dataset is of the form: pool/[dataset/]*dataset[@name]\n" + _ZFS_TAIL
    return text


def render(program: str, command: str, message: str) -> str:
    """The complete stderr of a usage error: ``message`` (may be empty), then the usage of ``command``."""
    head = f"{message}\n" if message else ""
    if not command:
        return head + _top(program)
    if program == "zpool":
        body = "usage:\n" + _ZPOOL[command]
        return head + body + (_zpool_table() if command in ("list", "get") else "")
    command = {"recv": "receive", "umount": "unmount"}.get(command, command)
    body = "usage:\n" + _zfs_table()[command]
    return head + body + (usage_table() if command in _ZFS_PROP_COMMANDS else _ZFS_TAIL)

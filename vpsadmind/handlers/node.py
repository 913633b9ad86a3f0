"""Node transactions of v2.0 (contract 5.1): 5 GenerateKnownHosts, 6 StorePublicKeys, 7 DeploySshKey (the
cluster's shared root SSH key that 4001's scp relies on), and 7301-7303 the vzctl config samples.

Paths come from the ``node`` config section: ``node.known_hosts`` (``/root/.ssh/known_hosts``), the host keys
``node.pubkey.path`` with ``%{type}`` for each of ``node.pubkey.types``; 7's key files live in the directory of
``node.known_hosts`` (v2.0 hard-coded ``/root/.ssh``, which is that directory by default). Every text that ends
up in a file is checked first: a key is one line, so nothing can add a line to known_hosts or
authorized_keys; a config sample has only comments and ``KEY="value"`` lines vzctl can copy into a conf.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, Outcome, handler, ok
from vpsadmind.handlers.params import NoParams
from vpsadmind.handlers.storage_common import json_output
from vpsadmind.handlers.vps_common import checked, fail, remove_file, scrub_t_param, vz_for
from vpsadmind.vz import ConfFile, ConfFileError, InvalidValue
from vpsadmind.vz import validate as v
from vpsadmind.vz.conf import atomic_write

if TYPE_CHECKING:
    from vpsadmind.db import Tx
    from vpsadmind.engine.model import Result

__all__ = ["CreateSample", "DeleteSample", "DeploySshKey", "GenerateKnownHosts", "StorePublicKeys",
           "UpdateSample", "check_sample"]

log = structlog.get_logger("vpsadmind.handlers.node")

_KEY_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_MAX_KEY: Final = 64 * 1024


def _one_line(text: str, what: str) -> str:
    """A public key or a known_hosts line: printable, one line (a newline would add an entry)."""
    stripped = text.strip()
    if not stripped or len(stripped) > _MAX_KEY or any(ord(c) < 0x20 or ord(c) == 0x7F for c in stripped):
        raise ValueError(f"{what} must be one line of printable text")
    return stripped


def _backup(path: Path) -> bool:
    """``cp -p path path.backup`` when ``path`` exists (through a temporary name); False if there is none."""
    if not path.exists():
        return False
    backup = path.with_name(path.name + ".backup")
    tmp = backup.with_name(f".{backup.name}.tmp")
    shutil.copy2(path, tmp)
    os.replace(tmp, backup)
    return True


def _restore(path: Path) -> bool:
    """``mv path.backup path``; False if there is no backup (already restored)."""
    try:
        os.replace(path.with_name(path.name + ".backup"), path)
    except FileNotFoundError:
        return False
    return True


class TaggedBackups:
    """v2.0's ``cp <file> <file>.backup`` of a set of files, tagged with the transaction that made them.

    The tag (``<tag>``, JSON ``{"t_id", "found"}``, written after the backups and before any file changes)
    makes the handlers idempotent: a re-run of the same transaction finds its tag and keeps its backups (they
    hold the files as they were before the first run; backing up again would copy what that run wrote), and
    a rollback only restores backups its own transaction made, never an older one's."""

    def __init__(self, paths: dict[str, Path], tag: Path, t_id: int) -> None:
        self.paths = paths
        self.tag = tag
        self.t_id = t_id

    def _found(self) -> dict[str, bool] | None:
        try:
            data = json.loads(self.tag.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("t_id") != self.t_id or not isinstance(data.get("found"), dict):
            return None
        return {name: bool(data["found"].get(name)) for name in self.paths}

    def take(self) -> dict[str, bool]:
        """Back up the files that exist (unless this transaction did already); ``{name: existed}``."""
        found = self._found()
        if found is None:
            found = {name: _backup(path) for name, path in self.paths.items()}
            atomic_write(self.tag, json.dumps({"t_id": self.t_id, "found": found}) + "\n", mode=0o600)
        return found

    def restore(self) -> dict[str, bool] | None:
        """Put the backups back and remove the files that did not exist; None if this transaction has no tag."""
        found = self._found()
        if found is None:
            return None
        for name, path in self.paths.items():
            if found[name]:
                _restore(path)
            else:
                remove_file(path)
        remove_file(self.tag)
        return found


# ------------------------------------------------------------------------------------------------------------
# 5 GenerateKnownHosts


_KNOWN_HOSTS_SQL: Final = ("SELECT s.server_ip4 AS addr, k.`key` AS `key` FROM node_pubkey k "
                           "JOIN servers s ON s.server_id = k.node_id ORDER BY k.node_id, k.type")


@handler(5)
class GenerateKnownHosts(Handler[NoParams]):
    """Backs up ``node.known_hosts`` and rewrites it with ``<server_ip4> <key>`` for every ``node_pubkey`` row
    joined to ``servers``; a row whose address or key is not valid is left out and reported. Rollback puts the
    backup back, or deletes the file when there was none before.

    Crash: idempotent, the backup is tagged with the transaction (:class:`TaggedBackups`), so a re-run keeps
    the backup of the interrupted run and a repeated rollback finds nothing more to do."""

    Params = NoParams
    idempotent = True

    def _backups(self) -> TaggedBackups:
        path = Path(self.ctx.config.node.known_hosts)
        return TaggedBackups({"known_hosts": path}, path.with_name(path.name + ".backup.tid"),
                             self.transaction.t_id)

    async def exec(self) -> Outcome | None:
        lines, skipped = [], []
        for row in await self.ctx.db.fetchall(_KNOWN_HOSTS_SQL):
            try:
                lines.append(f"{v.ip(str(row['addr']), 'server_ip4')} {_one_line(str(row['key']), 'key')}\n")
            except ValueError as exc:
                skipped.append({"addr": str(row["addr"])[:64], "error": str(exc)})
        backups = self._backups()
        found = await asyncio.to_thread(backups.take)
        await asyncio.to_thread(atomic_write, backups.paths["known_hosts"], "".join(lines), mode=0o644)
        if skipped:
            log.warning("known_hosts rows skipped", skipped=skipped)
        return ok(hosts=len(lines), backup=found["known_hosts"], skipped=skipped)

    async def rollback(self) -> Outcome | None:
        found = await asyncio.to_thread(self._backups().restore)
        if found is None:
            return ok(note="this transaction changed no file")
        return ok(restored=found["known_hosts"], removed=not found["known_hosts"])


# ------------------------------------------------------------------------------------------------------------
# 6 StorePublicKeys


@handler(6)
class StorePublicKeys(Handler[NoParams]):
    """Reads the host keys ``node.pubkey.path`` for each of ``node.pubkey.types`` and replaces this node's
    ``node_pubkey`` rows of those types, in post_save (the table has no unique key in v2.0, so v2.0's
    ``ON DUPLICATE KEY`` appended a row per run; here each (node, type) has one row). Rollback puts back the
    rows exec found (v2.0 deleted all of the node's keys). Crash: idempotent, nothing is written before the
    save."""

    Params = NoParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: dict[str, str] = {}

    async def exec(self) -> Outcome | None:
        node = self.ctx.config.node
        for key_type in node.pubkey_types:
            if not re.fullmatch(r"[a-z0-9]{1,3}", key_type):  # node_pubkey.type is VARCHAR(3) (rsa, dsa)
                raise fail(f"node.pubkey.types: {key_type!r:.40} does not fit node_pubkey.type (3 letters)")
            path = Path(node.pubkey_path.replace("%{type}", key_type))
            try:
                text = await asyncio.to_thread(path.read_text, encoding="utf-8")
                self._keys[key_type] = _one_line(text, f"{path}")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise fail(f"cannot read the {key_type} host key {path}: {exc}", path=str(path)) from None
        previous = await self.ctx.db.fetchall("SELECT type, `key` FROM node_pubkey WHERE node_id = %s ORDER BY "
                                              "type", (self.ctx.server_id,))
        return ok(types=sorted(self._keys), previous=[{"type": r["type"], "key": r["key"]} for r in previous])

    async def post_save(self, tx: Tx, result: Result) -> None:
        for key_type, key in self._keys.items():
            await tx.execute("DELETE FROM node_pubkey WHERE node_id = %s AND type = %s",
                             (self.ctx.server_id, key_type))
            await tx.execute("INSERT INTO node_pubkey (node_id, type, `key`) VALUES (%s, %s, %s)",
                             (self.ctx.server_id, key_type, key))

    async def rollback(self) -> Outcome | None:
        saved = json_output(self.transaction.t_output)
        if "previous" not in saved:
            return ok(note="exec stored no keys")
        previous = [(str(r["type"]), str(r["key"])) for r in saved["previous"]]

        async def put_back(tx: Tx) -> None:
            await tx.execute("DELETE FROM node_pubkey WHERE node_id = %s", (self.ctx.server_id,))
            for key_type, key in previous:
                await tx.execute("INSERT INTO node_pubkey (node_id, type, `key`) VALUES (%s, %s, %s)",
                                 (self.ctx.server_id, key_type, key))

        await self.ctx.db.run(put_back)
        return ok(restored=len(previous))


# ------------------------------------------------------------------------------------------------------------
# 7 DeploySshKey


@dataclass(frozen=True, slots=True)
class DeployKeyParams:
    key_type: str
    # Optional so that a chain rollback can parse the scrubbed ``{"key_type": ...}``; exec requires them.
    public_key: str | None = None
    private_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _KEY_TYPE.fullmatch(self.key_type):
            raise ParamError(f"must be a key type such as rsa or ed25519, got {self.key_type!r:.40}",
                             field="key_type")
        if self.public_key is not None:
            try:
                _one_line(self.public_key, "public_key")
            except ValueError as exc:
                raise ParamError(str(exc), field="public_key") from None
        key = self.private_key
        if key is not None and (not key.strip() or len(key) > _MAX_KEY or "\x00" in key):
            raise ParamError("must be a non-empty key file (value not shown)", field="private_key")


@handler(7)
class DeploySshKey(Handler[DeployKeyParams]):
    """Backs up and writes ``id_<type>`` (0600) and ``id_<type>.pub``, and appends the public key to
    ``authorized_keys`` (unless it is there), in the directory of ``node.known_hosts``. post_save rewrites
    ``t_param`` to ``{"key_type": ...}`` so the private key does not stay in the database (also when exec
    failed: its rollback does it). Rollback puts the backups back and removes files that did not exist.

    Crash: idempotent, the backups are tagged with the transaction (:class:`TaggedBackups`): a re-run keeps
    those of the interrupted run, and the key is authorized once."""

    Params = DeployKeyParams
    idempotent = True

    def _backups(self) -> TaggedBackups:
        ssh = Path(self.ctx.config.node.known_hosts).parent
        private = ssh / f"id_{self.params.key_type}"
        paths = {"private": private, "public": private.with_name(private.name + ".pub"),
                 "authorized_keys": ssh / "authorized_keys"}
        return TaggedBackups(paths, private.with_name(private.name + ".backup.tid"), self.transaction.t_id)

    async def exec(self) -> Outcome | None:
        p = self.params
        if p.public_key is None or p.private_key is None:
            raise fail("Bad param: public_key and private_key are required (t_param was already scrubbed?)",
                       field="private_key")
        backups = self._backups()
        backups.paths["private"].parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = await asyncio.to_thread(backups.take)
        public = _one_line(p.public_key, "public_key")
        private = p.private_key if p.private_key.endswith("\n") else p.private_key + "\n"
        await asyncio.to_thread(_write_keys, backups.paths, private, public)
        return ok(key_type=p.key_type, existed=found)

    async def rollback(self) -> Outcome | None:
        await scrub_t_param(self.ctx.db, self.transaction.t_id, json.dumps({"key_type": self.params.key_type}))
        found = await asyncio.to_thread(self._backups().restore)
        if found is None:
            return ok(note="this transaction changed no file")
        return ok(restored=sorted(n for n, had in found.items() if had))

    async def post_save(self, tx: Tx, result: Result) -> None:
        await scrub_t_param(tx, self.transaction.t_id, json.dumps({"key_type": self.params.key_type}))


def _write_keys(paths: dict[str, Path], private: str, public: str) -> None:
    atomic_write(paths["private"], private, mode=0o600)
    os.chmod(paths["private"], 0o600)  # atomic_write keeps an existing file's mode; a key must be 0600
    atomic_write(paths["public"], public + "\n", mode=0o644)
    auth = paths["authorized_keys"]
    existing = auth.read_text(encoding="utf-8") if auth.exists() else ""
    if public not in (line.strip() for line in existing.splitlines()):
        text = existing if not existing or existing.endswith("\n") else existing + "\n"
        atomic_write(auth, text + public + "\n", mode=0o600)


# ------------------------------------------------------------------------------------------------------------
# 7301-7303 config samples


def check_sample(text: str, where: str) -> str:
    """What ``Vz.write_sample`` accepts, checked while params are parsed: blank lines, comments and
    ``KEY="value"`` assignments with values vzctl may copy into a container's conf."""
    try:
        sample = ConfFile.parse(text)
    except ConfFileError as exc:
        raise ParamError(str(exc), field=where) from None
    for number, line in enumerate(sample.lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        probe = ConfFile([line])
        keys = probe.keys()
        try:
            if not keys:
                raise InvalidValue("line", line[:80], 'not a KEY="value" assignment')
            v.conf_key(keys[0])
            v.conf_value(probe.get(keys[0]) or "", keys[0])
        except InvalidValue as exc:
            raise ParamError(f"line {number}: {exc}", field=where) from None
    return text


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    vps_config: str

    def check(self, where: str) -> None:
        checked(lambda x: v.name(x, "name"), self.name, f"{where}name" if where else "name")
        check_sample(self.vps_config, f"{where}vps_config" if where else "vps_config")


@dataclass(frozen=True, slots=True)
class SampleParams(Sample):
    def __post_init__(self) -> None:
        self.check("")


@dataclass(frozen=True, slots=True)
class UpdateSampleParams:
    original: Sample
    new: Sample

    def __post_init__(self) -> None:
        self.original.check("original.")
        self.new.check("new.")


class _SampleHandler(Handler[Any]):
    idempotent = True

    def write(self, sample: Sample) -> None:
        vz_for(self.ctx).write_sample(sample.name, sample.vps_config)

    def delete(self, name: str) -> bool:
        return vz_for(self.ctx).delete_sample(name)


@handler(7301)
class CreateSample(_SampleHandler):
    """Hypervisor::CreateConfig: writes ``<vz_conf>/conf/ve-<name>.conf-sample`` atomically; rollback deletes
    it. Crash: idempotent."""

    Params = SampleParams

    async def exec(self) -> Outcome | None:
        self.write(self.params)
        return None

    async def rollback(self) -> Outcome | None:
        return ok(deleted=self.delete(self.params.name))


@handler(7302)
class DeleteSample(_SampleHandler):
    """Hypervisor::DeleteConfig: deletes the sample (a missing one is fine); rollback writes it again from
    ``vps_config``. Crash: idempotent."""

    Params = SampleParams

    async def exec(self) -> Outcome | None:
        return ok(deleted=self.delete(self.params.name))

    async def rollback(self) -> Outcome | None:
        self.write(self.params)
        return None


@handler(7303)
class UpdateSample(_SampleHandler):
    """Hypervisor::UpdateConfig: writes ``new``, and deletes the ``original`` sample when the name changed;
    rollback deletes ``new`` (if renamed) and writes ``original``. Crash: idempotent."""

    Params = UpdateSampleParams

    async def exec(self) -> Outcome | None:
        p = self.params
        self.write(p.new)
        if p.new.name != p.original.name:
            self.delete(p.original.name)
        return None

    async def rollback(self) -> Outcome | None:
        p = self.params
        if p.new.name != p.original.name:
            self.delete(p.new.name)
        self.write(p.original)
        return None

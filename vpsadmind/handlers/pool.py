"""Pool::Create (5250): the pool's dataset and its working datasets ``vpsadmin``, ``vpsadmin/mount`` and
``vpsadmin/download`` (contract 5.4, 7.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpsadmind.handlers.base import Handler, Outcome, handler, ok
from vpsadmind.handlers.storage_common import (
    check_dataset,
    check_prop_name,
    fail,
    json_output,
    props_equal,
    zfs_driver,
    zfs_value,
)
from vpsadmind.zfs.errors import DatasetExists, ZfsError

__all__ = ["PoolCreate", "PoolCreateParams", "WORKING_DATASETS"]

#: Relative to ``pool_fs``, parents first.
WORKING_DATASETS = ("vpsadmin", "vpsadmin/mount", "vpsadmin/download")


@dataclass(frozen=True, slots=True)
class PoolCreateParams:
    pool_fs: str
    options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        for sub in WORKING_DATASETS:
            check_dataset("pool_fs", f"{self.pool_fs}/{sub}")
        for key, value in (self.options or {}).items():
            zfs_value(check_prop_name(f"options.{key}", key), value, field_name="options")

    def zfs_options(self) -> dict[str, str]:
        return {k: zfs_value(k, v, field_name="options") for k, v in (self.options or {}).items()}


@handler(5250)
class PoolCreate(Handler[PoolCreateParams]):
    """``zfs create [-o k=v] <pool_fs>`` plus the working datasets.

    Idempotent: a dataset that already exists is accepted (for ``pool_fs`` only when its locally set
    properties match ``options``) and is not counted as created. The output lists what this run created;
    rollback destroys only that (or, when the output is unknown, v2.0's list), never recursively, so an
    existing pool's data cannot be lost by a rollback.
    """

    Params = PoolCreateParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created: list[str] | None = None

    async def exec(self) -> Outcome | None:
        p = self.params
        self._created = []
        options = p.zfs_options()
        if await self._create(p.pool_fs, options):
            self._created.append(p.pool_fs)
        for sub in WORKING_DATASETS:
            name = f"{p.pool_fs}/{sub}"
            if await self._create(name, {}):
                self._created.append(name)
        return ok(created=list(self._created))

    async def _create(self, name: str, options: dict[str, str]) -> bool:
        zfs = await zfs_driver(self.ctx)
        try:
            await zfs.create(name, properties=options or None)
        except DatasetExists:
            await self._check_matches(name, options)
            return False
        return True

    async def _check_matches(self, name: str, options: dict[str, str]) -> None:
        if not options:
            return
        zfs = await zfs_driver(self.ctx)
        current = (await zfs.get(name, list(options))).get(name, {})
        for prop, wanted in options.items():
            have = current.get(prop)
            if have is None or have.source != "local" or not props_equal(prop, wanted, have.value):
                raise fail(f"{name} already exists with {prop}={have.value if have else '?'} "
                           f"({have.source if have else 'unknown'}), not {wanted}", dataset=name)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        created = self._created
        if created is None:
            saved = json_output(self.transaction.t_output).get("created")
            created = [str(x) for x in saved] if isinstance(saved, list) else None
        candidates = [f"{p.pool_fs}/{sub}" for sub in reversed(WORKING_DATASETS)] + [p.pool_fs]
        kept: dict[str, str] = {}
        for name in candidates:
            if created is not None and name not in created:
                continue
            try:
                await zfs.destroy(name, missing_ok=True)
            except ZfsError as exc:  # v2.0 tolerated rc 1: busy, or children that are not ours
                kept[name] = str(exc)
        return ok(kept=kept) if kept else ok()

"""Applies interrupted at every point and at random points, then resumed: each ends in exactly the v2.0 layout
with every byte and snapshot kept and the database rows written once.

The hook of the operation runner raises before the k-th operation of a run (the operations before it are
done, the k-th is not), which is what a crash or a Ctrl-C between two commands leaves. A crash *inside* the
ZFS driver's rename on zfs-fuse (unmounted, not yet renamed) is simulated too: the hook unmounts the dataset
about to be renamed before raising.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from tests.upgrade.conftest import Env
from tests.upgrade.layout import assert_v2_layout, record, sh
from tests.upgrade.test_apply import _assert_registered, _db_state
from vpsadmind.upgrade import ExitCode

_FS_RENAME = re.compile(r"zfs rename ([^@ ]+) ([^@ ]+)")


class Interrupted(Exception):
    pass


def _hook(limit: int, *, unmount_renamed: bool) -> Callable[[int, str], None]:
    def hook(done: int, what: str) -> None:
        if done < limit:
            return
        match = _FS_RENAME.fullmatch(what)
        if unmount_renamed and match:
            sh("zfs", "unmount", match.group(1), check=False)  # as if killed inside the driver's rename
        raise Interrupted(what)
    return hook


async def _apply_until_done(env: Env, limits: Callable[[], int], *, unmount_renamed: bool = False
                            ) -> tuple[int, int]:
    """Apply again and again, each run interrupted after ``limits()`` operations; returns the number of runs
    and of operations done in all."""
    runs = ops = 0
    while True:
        runs += 1
        assert runs < 300, "the upgrade does not make progress"
        result = await env.run(hook=_hook(limits(), unmount_renamed=unmount_renamed))
        ops += result.ops
        if result.code != ExitCode.FAILED:
            break
        assert "Interrupted" in env.output, env.output
    assert result.code == ExitCode.DONE, env.output
    again = await env.run()
    assert again.code == ExitCode.NOTHING, env.output
    return runs, ops


@pytest.mark.timeout(1200)
async def test_interrupted_before_every_single_operation(env: Env) -> None:
    before = record(env.node)
    runs, ops = await _apply_until_done(env, lambda: 1)
    # One operation per run, each of them progress (none redone): every intermediate state was resumed from.
    assert runs == ops > 70
    assert_v2_layout(env.node, before)
    _assert_registered(env, await _db_state(env.db), before)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2])
async def test_interrupted_at_random_points_inside_renames(env: Env, seed: int) -> None:
    before = record(env.node)
    rnd = random.Random(seed)
    await _apply_until_done(env, lambda: rnd.randint(0, 6), unmount_renamed=True)
    assert_v2_layout(env.node, before)
    _assert_registered(env, await _db_state(env.db), before)


@pytest.mark.timeout(300)
async def test_check_shows_an_interrupted_nas_move(env: Env) -> None:
    moved: list[str] = []

    def hook(done: int, what: str) -> None:
        if what.startswith("mv ") and "/1000/.vpsadmin-upgrade-" in what:  # an entry into the staging dir
            if len(moved) == 3:
                raise Interrupted(what)
            moved.append(what)

    before = record(env.node)
    assert (await env.run(hook=hook)).code == ExitCode.FAILED
    check = await env.run(apply=False)
    assert check.code == ExitCode.PENDING
    assert re.search(r"/nas/1000 +interrupted move \(moving: \.vpsadmin-upgrade-[0-9a-f]{8}\) +finish moving",
                     env.output), env.output
    assert (await env.run()).code == ExitCode.DONE
    assert_v2_layout(env.node, before)

"""The handler contract: one class per v2.0 transaction type, registered by its code.

A handler gets its params parsed and validated into a typed dataclass before it may do anything; ``exec``
does the work, ``rollback`` undoes it, ``post_save`` writes handler data inside the result's DB transaction
(only after a successful ``exec``), and ``recover`` decides what to do with a run that a crash interrupted.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import structlog

from vpsadmind.engine.model import Direction, Result, Transaction, TSuccess
from vpsadmind.errors import AgentError
from vpsadmind.progress import ProgressBoard

if TYPE_CHECKING:
    from vpsadmind.config import Config
    from vpsadmind.db import Database, Tx

__all__ = [
    "HANDLERS",
    "Handler",
    "HandlerContext",
    "Outcome",
    "Recovery",
    "handler",
    "import_handler_modules",
    "on_start",
    "START_HOOKS",
    "ok",
    "warning",
    "failed",
]

P = TypeVar("P")


@dataclass(slots=True)
class Outcome:
    """What ``exec``/``rollback``/``recover`` return; ``None`` from them means ok with no output."""

    status: TSuccess = TSuccess.OK
    output: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def ok(**output: Any) -> Outcome:
    return Outcome(TSuccess.OK, output)


def warning(**output: Any) -> Outcome:
    return Outcome(TSuccess.WARNING, output)


def failed(error: str, **output: Any) -> Outcome:
    return Outcome(TSuccess.FAILED, {"error": error, **output})


class Recovery(enum.Enum):
    """What ``recover`` may answer instead of an Outcome."""

    RERUN = "rerun"
    INTERRUPTED = "interrupted"


class HandlerContext:
    """What a handler may use: configuration, database, its logger and the chain blocker of the engine."""

    def __init__(self, *, config: Config, db: Database,
                 block_chain: Callable[[int, Awaitable[Any]], asyncio.Task[Any]] | None = None,
                 progress: ProgressBoard | None = None) -> None:
        self.config = config
        self.db = db
        self._block_chain = block_chain
        self.progress = progress or ProgressBoard()
        # Node-wide services that handlers share (the transfer receivers, ...), keyed by their module.
        self.services: dict[str, Any] = {}
        self.log = structlog.get_logger("vpsadmind.handler")

    @property
    def server_id(self) -> int:
        return self.config.server_id

    def block_chain(self, chain_id: int, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background; no further transaction of the chain starts on this node until it ends."""
        if self._block_chain is None:
            raise AgentError("this context cannot block chains")
        return self._block_chain(chain_id, work)


class Handler(Generic[P]):
    """Base of every transaction handler. Subclasses set ``Params`` (a dataclass) and implement ``exec``."""

    code: ClassVar[int] = 0
    Params: ClassVar[type[Any]]
    # True when running exec (and rollback) again after a crash is safe; otherwise ``recover`` decides.
    idempotent: ClassVar[bool] = False

    def __init__(self, ctx: HandlerContext, params: P, transaction: Transaction) -> None:
        self.ctx = ctx
        self.params = params
        self.transaction = transaction
        self.vps_id = transaction.t_vps
        self.log = ctx.log.bind(handler=type(self).__name__)

    async def exec(self) -> Outcome | None:
        raise NotImplementedError

    async def rollback(self) -> Outcome | None:
        return None

    async def post_save(self, tx: Tx, result: Result) -> None:
        """Write handler data in the same DB transaction as the result; runs only after a successful exec."""

    @classmethod
    def has_post_save(cls) -> bool:
        return cls.post_save is not Handler.post_save

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        """Called instead of running again when a crash interrupted this transaction and ``idempotent`` is False.

        The default cannot know what happened, so the transaction fails as interrupted and the chain rolls
        back; handlers that can inspect the real state override this.
        """
        return Recovery.INTERRUPTED


HANDLERS: dict[int, type[Handler[Any]]] = {}

H = TypeVar("H", bound=type[Handler[Any]])


def handler(code: int) -> Callable[[H], H]:
    """Register a handler class for v2.0 transaction type ``code`` (``@handler(5201)``)."""

    def register(cls: H) -> H:
        existing = HANDLERS.get(code)
        if existing is not None and existing is not cls:
            msg = f"transaction type {code} is already handled by {existing.__module__}.{existing.__name__}"
            raise AgentError(msg)
        cls.code = code
        HANDLERS[code] = cls
        return cls

    return register


StartHook = Callable[[HandlerContext], Awaitable[None]]
#: Coroutines run once at daemon start, after interrupted transactions were recovered (in registration order).
START_HOOKS: list[StartHook] = []


def on_start(fn: StartHook) -> StartHook:
    """Register a start hook of a handler module (e.g. transfers release stale holds and listen again)."""
    if fn not in START_HOOKS:
        START_HOOKS.append(fn)
    return fn


DEFAULT_HANDLER_MODULES = ("vpsadmind.handlers.utils", "vpsadmind.handlers.pool", "vpsadmind.handlers.dataset",
                           "vpsadmind.handlers.branch", "vpsadmind.handlers.firewall", "vpsadmind.handlers.shaper",
                           "vpsadmind.handlers.transfer", "vpsadmind.handlers.download",
                           "vpsadmind.handlers.integrity", "vpsadmind.handlers.mail", "vpsadmind.handlers.vps",
                           "vpsadmind.handlers.vps_config", "vpsadmind.handlers.vps_features",
                           "vpsadmind.handlers.node", "vpsadmind.handlers.mounts")


def import_handler_modules(extra: list[str] | tuple[str, ...] = ()) -> None:
    """Import the built-in handler modules and ``vpsadmin.handler_modules`` so their classes register."""
    for name in (*DEFAULT_HANDLER_MODULES, *extra):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            msg = f"cannot import handler module {name!r}: {exc}"
            raise AgentError(msg) from exc

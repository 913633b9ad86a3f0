"""Event bus over MQTT: wake-ups in, transaction and chain events out.

The daemon polls MySQL every ``check_interval`` for its transactions; the bus only makes it faster. The node
subscribes to its wake-up topic and polls at once when a message arrives; it publishes one event per finished
transaction and one per chain state change, and wakes the node that runs a chain's next transaction.

Polling stays the fallback, so a broker that is down, slow or disappearing never stops or slows the daemon:

* :meth:`Bus.publish` never blocks and never raises. Messages go to a bounded in-memory queue (the oldest
  message is dropped when it is full, and counted) and the :meth:`Bus.run` task sends them while connected;
  messages queued while disconnected are sent after the next connect.
* :meth:`Bus.run` connects, subscribes, dispatches and reconnects by itself with a capped exponential backoff.
  It does not raise on broker errors; it logs each connect and disconnect once per state change.

Topics (``<p>`` is ``MqttConfig.topic_prefix``; ``docs/mqtt.md`` describes the payloads):

========================================  =====  ===  ======  ======================================
topic                                     dir    qos  retain  payload
========================================  =====  ===  ======  ======================================
``<p>/node/<server_id>/wake``             in     1    no      ``{"chain": 1, "t_id": 2}`` (any object)
``<p>/nodes/wake``                        in     1    no      broadcast wake-up of every node
``<p>/node/<server_id>/transactions``     out    1    no      one event per finished transaction
``<p>/chain/<chain_id>/state``            out    1    no      chain state change
``<p>/node/<server_id>/progress``         out    0    no      bytes/rate/eta of a running stream
``<p>/node/<server_id>/status``           out    1    yes     online / offline (also the Last Will)
========================================  =====  ===  ======  ======================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from vpsadmind.config import MqttConfig

__all__ = [
    "Bus",
    "Topics",
    "DEFAULT_QUEUE_SIZE",
    "MAX_BACKOFF",
]

#: Default capacity of the outgoing queue.
DEFAULT_QUEUE_SIZE = 10_000
#: Upper bound of the reconnect delay, in seconds (unless ``reconnect_interval`` is larger).
MAX_BACKOFF = 30.0
#: Timeout of one broker operation (CONNACK, SUBACK, PUBACK), in seconds.
OPERATION_TIMEOUT = 5.0
#: How long :meth:`Bus.stop` lets the run task flush queued messages, in seconds.
FLUSH_TIMEOUT = 2.0
#: How long :meth:`Bus.stop` waits for the run task before cancelling it, in seconds.
STOP_TIMEOUT = 5.0
#: Timeout of the best-effort "offline" status publication on the way out, in seconds.
OFFLINE_TIMEOUT = 1.0

_FORBIDDEN_TOPIC_CHARS = frozenset("+#\0")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names of one node; the one place that spells them."""

    prefix: str
    server_id: int

    def wake(self, server_id: int | None = None) -> str:
        """Wake-up topic of ``server_id`` (default: this node)."""
        sid = self.server_id if server_id is None else server_id
        return f"{self.prefix}/node/{sid}/wake"

    @property
    def broadcast_wake(self) -> str:
        """Wake-up topic every node subscribes to."""
        return f"{self.prefix}/nodes/wake"

    @property
    def transactions(self) -> str:
        """Transaction events of this node."""
        return f"{self.prefix}/node/{self.server_id}/transactions"

    def chain_state(self, chain_id: int) -> str:
        """State events of one chain."""
        return f"{self.prefix}/chain/{chain_id}/state"

    @property
    def status(self) -> str:
        """Retained online/offline status of this node (also the Last Will topic)."""
        return f"{self.prefix}/node/{self.server_id}/status"


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str, ensure_ascii=False).encode()


def _decode_object(raw: object) -> dict[str, Any]:
    """JSON object of a payload, or ``{}`` for anything else (bad UTF-8, bad JSON, not an object)."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {}
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _refused(code: object) -> bool:
    """Whether a SUBACK return code (a paho ReasonCode, or an int with MQTT 3.1.1 semantics) is a refusal."""
    if isinstance(code, ReasonCode):
        return bool(code.is_failure)
    return isinstance(code, int) and code >= 0x80


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Bus:
    """MQTT wake-ups and events of one node daemon.

    Args:
        config: Broker address, credentials, topic prefix, keepalive and base reconnect interval.
            With ``enabled=False`` :meth:`run` only waits for :meth:`stop` and messages are discarded.
        server_id: This node's id (``servers.server_id``).
        on_wake: Synchronous callback called with the wake-up payload (``{}`` when it is not a JSON object).
            Exceptions it raises are logged and swallowed.
        client_id: MQTT client identifier; default ``vpsadmind-<server_id>-<pid>-<random>``.
        logger: A structlog-style logger; default ``structlog.get_logger()`` bound to the server id.
        max_queue: Capacity of the outgoing queue.

    ``stats`` counts ``published`` (queued messages the broker accepted), ``dropped`` (queue overflow or
    unpublishable messages), ``received_wakeups`` and ``reconnects`` (successful connects after the first).
    All methods must be called from the event loop's thread.
    """

    def __init__(self, config: MqttConfig, *, server_id: int, on_wake: Callable[[dict[str, Any]], None],
                 client_id: str | None = None, logger: Any | None = None,
                 max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        if max_queue < 1:
            msg = f"max_queue must be at least 1, got {max_queue}"
            raise ValueError(msg)
        self._config = config
        self._server_id = server_id
        self._on_wake = on_wake
        self.client_id = client_id or f"vpsadmind-{server_id}-{os.getpid()}-{secrets.token_hex(4)}"
        self._log: Any = logger if logger is not None else structlog.get_logger(
            component="bus", server_id=server_id)
        self.topics = Topics(config.topic_prefix, server_id)
        self.stats: dict[str, int] = {"published": 0, "dropped": 0, "received_wakeups": 0, "reconnects": 0}
        self._max_queue = max_queue
        self._outbox: deque[_Outgoing] = deque()
        self._wakeup = asyncio.Event()  # set when the outbox gets a message or on stop
        self._stop_event = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._connected = False
        self._state: str | None = None  # None (never tried), "connected", "disconnected"
        self._connects = 0

    # -- public API ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while subscribed and ready to send."""
        return self._connected

    @property
    def queued(self) -> int:
        """Number of messages waiting in the outgoing queue."""
        return len(self._outbox)

    async def run(self) -> None:
        """Connect, subscribe, dispatch and reconnect until :meth:`stop`.

        Broker errors never escape; cancelling this coroutine publishes a best-effort "offline" status.
        """
        if self._main is not None:
            msg = "Bus.run() was already started"
            raise RuntimeError(msg)
        self._main = asyncio.create_task(self._main_loop(), name=f"vpsadmind-bus-{self._server_id}")
        try:
            await self._main
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The main loop was cancelled by stop() after its timeout: a normal end.
        finally:
            self._connected = False

    async def stop(self) -> None:
        """Flush queued messages (bounded), publish the "offline" status, disconnect and end :meth:`run`."""
        self._stop_event.set()
        self._wakeup.set()
        main = self._main
        if main is None or main.done():
            return
        if not self._connected:
            main.cancel()  # sleeping or connecting: nothing to flush
        done, _ = await asyncio.wait({main}, timeout=STOP_TIMEOUT)
        if not done:
            main.cancel()
            await asyncio.wait({main})

    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0, retain: bool = False) -> None:
        """Queue ``payload`` as JSON for ``<prefix>/<subtopic>``; never blocks, never raises.

        Invalid input (a wildcard in the topic, a bad qos, a payload JSON cannot encode) is logged and
        counted in ``stats["dropped"]``.
        """
        if not self._config.enabled:
            return
        topic = f"{self._config.topic_prefix}/{subtopic}"
        problem = None
        if not subtopic or _FORBIDDEN_TOPIC_CHARS.intersection(subtopic):
            problem = "invalid topic"
        elif qos not in (0, 1, 2):
            problem = "invalid qos"
        if problem is None:
            try:
                data = _encode(payload)
            except (TypeError, ValueError) as exc:
                problem = f"payload is not JSON-encodable: {exc}"
        if problem is not None:
            self.stats["dropped"] += 1
            self._log.error("mqtt message dropped", topic=topic, qos=qos, reason=problem)
            return
        self._push(_Outgoing(topic, data, qos, retain))

    def wake_node(self, server_id: int, payload: dict[str, Any]) -> None:
        """Wake the daemon of ``server_id`` (qos 1), e.g. with ``{"chain": 1, "t_id": 2}``."""
        self.publish(f"node/{server_id}/wake", payload, qos=1)

    def transaction_event(self, payload: dict[str, Any]) -> None:
        """Publish one finished transaction (``server_id`` defaults to this node)."""
        self.publish(f"node/{self._server_id}/transactions", {"server_id": self._server_id, **payload}, qos=1)

    def progress_event(self, payload: dict[str, Any]) -> None:
        """Publish the progress of one stream (a transfer or download; qos 0: the next tick supersedes it)."""
        self.publish(f"node/{self._server_id}/progress", {"server_id": self._server_id, **payload})

    def chain_event(self, chain_id: int, payload: dict[str, Any]) -> None:
        """Publish a chain state change (``chain`` defaults to ``chain_id``)."""
        self.publish(f"chain/{chain_id}/state", {"chain": chain_id, **payload}, qos=1)

    # -- queue -----------------------------------------------------------------------------------------

    def _push(self, item: _Outgoing, *, front: bool = False) -> None:
        if len(self._outbox) >= self._max_queue:
            self._count_drop(item.topic)
            if front:
                return  # the head is the oldest message: dropping it is "drop oldest"
            self._outbox.popleft()
        if front:
            self._outbox.appendleft(item)
        else:
            self._outbox.append(item)
        self._wakeup.set()

    def _count_drop(self, topic: str) -> None:
        self.stats["dropped"] += 1
        dropped = self.stats["dropped"]
        if dropped == 1 or dropped % 1000 == 0:
            self._log.warning("mqtt queue full, dropping oldest messages", dropped=dropped,
                              capacity=self._max_queue, topic=topic)

    # -- connection loop -------------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        if not self._config.enabled:
            self._log.info("mqtt disabled")
            await self._stop_event.wait()
            return
        base = max(self._config.reconnect_interval, 0.01)
        cap = max(MAX_BACKOFF, base)
        delay = base
        while not self._stop_event.is_set():
            connects = self._connects
            try:
                await self._connect_and_serve()
            except aiomqtt.MqttError as exc:
                self._note_down(str(exc))
            except Exception as exc:  # a bug in the bus must not take the daemon down
                self._log.exception("mqtt bus error", error=repr(exc))
                self._note_down(repr(exc))
            if self._stop_event.is_set():
                break
            if self._connects != connects:
                delay = base
            self._log.debug("mqtt reconnect scheduled", delay=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay * random.uniform(0.9, 1.1))
            delay = min(delay * 2, cap)

    def _make_client(self) -> aiomqtt.Client:
        cfg = self._config
        will = aiomqtt.Will(self.topics.status, self._status_payload("offline", "lost", with_time=False),
                            qos=1, retain=True)
        return aiomqtt.Client(cfg.host, cfg.port, username=cfg.username, password=cfg.password,
                              identifier=self.client_id, keepalive=cfg.keepalive, will=will,
                              clean_session=True, timeout=OPERATION_TIMEOUT,
                              # a wake-up is a few bytes: Nagle would hold it for the peer's delayed ACK
                              socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    async def _connect_and_serve(self) -> None:
        async with self._make_client() as client:
            try:
                await client.publish(self.topics.status, self._status_payload("online", None), qos=1,
                                     retain=True)
                await self._subscribe(client)
                self._note_up()
                await self._session(client)
            except asyncio.CancelledError:
                await self._publish_offline(client)
                self._note_stopped()
                raise
            await self._publish_offline(client)
        self._note_stopped()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics = [self.topics.wake(), self.topics.broadcast_wake, self.topics.status]
        granted = await client.subscribe([(topic, 1) for topic in topics])
        refused = [topic for topic, code in zip(topics, granted, strict=False) if _refused(code)]
        if refused:  # e.g. a broker ACL; events still go out and polling still works
            self._log.warning("mqtt subscription refused", topics=refused)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Read and write until the connection breaks (raises) or stop() (flushes the queue, returns)."""
        reader = asyncio.create_task(self._read(client))
        writer = asyncio.create_task(self._write(client))
        stopper = asyncio.create_task(self._stop_event.wait())
        tasks: tuple[asyncio.Task[Any], ...] = (reader, writer, stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for worker in (reader, writer):
                if worker in done:
                    worker.result()  # re-raises the error that ended the session
            reader.cancel()
            await asyncio.wait({writer}, timeout=FLUSH_TIMEOUT)  # the writer ends once the queue is empty
        finally:
            self._connected = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _offline_reason(self) -> str:
        return "stop" if self._stop_event.is_set() else "cancelled"

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        try:
            payload = self._status_payload("offline", self._offline_reason())
            await client.publish(self.topics.status, payload, qos=1, retain=True, timeout=OFFLINE_TIMEOUT)
        except aiomqtt.MqttError as exc:
            self._log.debug("mqtt offline status not published", error=str(exc))

    def _status_payload(self, status: str, reason: str | None, *, with_time: bool = True) -> bytes:
        payload: dict[str, Any] = {"status": status, "server_id": self._server_id,
                                   "client_id": self.client_id, "pid": os.getpid()}
        if reason is not None:
            payload["reason"] = reason
        if with_time:
            payload["time"] = _now()
        return _encode(payload)

    def _note_up(self) -> None:
        if self._connects:
            self.stats["reconnects"] += 1
        self._connects += 1
        self._connected = True
        if self._state != "connected":
            self._log.info("mqtt connected", host=self._config.host, port=self._config.port,
                           client_id=self.client_id, reconnects=self.stats["reconnects"],
                           queued=len(self._outbox))
        self._state = "connected"

    def _note_stopped(self) -> None:
        self._connected = False
        self._state = "disconnected"
        self._log.info("mqtt stopped", reason=self._offline_reason(), client_id=self.client_id,
                       queued=len(self._outbox))

    def _note_down(self, error: str) -> None:
        self._connected = False
        if self._state == "connected":
            self._log.warning("mqtt disconnected", host=self._config.host, port=self._config.port,
                              error=error, queued=len(self._outbox))
        elif self._state is None:
            self._log.warning("mqtt unavailable", host=self._config.host, port=self._config.port, error=error)
        else:
            self._log.debug("mqtt connect failed", error=error)
        self._state = "disconnected"

    # -- session tasks ---------------------------------------------------------------------------------

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message)
        msg = "message stream ended"
        raise aiomqtt.MqttError(msg)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic
        if topic.matches(self.topics.status):
            self._check_status(message.payload)
            return
        if not (topic.matches(self.topics.wake()) or topic.matches(self.topics.broadcast_wake)):
            return
        payload = _decode_object(message.payload)
        self.stats["received_wakeups"] += 1
        try:
            self._on_wake(payload)
        except Exception as exc:  # the callback's bug must not end the session
            self._log.exception("on_wake callback failed", topic=topic.value, error=repr(exc))

    def _check_status(self, raw: object) -> None:
        """Re-assert "online" when a late Last Will (or anyone) overwrote our retained status."""
        status = _decode_object(raw)
        if status.get("status") == "offline" and self._connected and not self._stop_event.is_set():
            self._log.info("mqtt status overwritten with offline, publishing online again",
                           reason=status.get("reason"), client_id=status.get("client_id"))
            self._push(_Outgoing(self.topics.status, self._status_payload("online", None), 1, True),
                       front=True)

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._outbox:
                if self._stop_event.is_set():
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._outbox.popleft()
            try:
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            except (ValueError, TypeError) as exc:  # paho refuses this message (e.g. too large)
                self._count_drop(item.topic)
                self._log.error("mqtt message dropped", topic=item.topic, reason=str(exc))
                continue
            except BaseException:
                self._push(item, front=True)  # keep it for the next connection
                raise
            self.stats["published"] += 1

"""9001 Mail::Send against a real SMTP server on loopback (aiosmtpd), driven through a real engine and MariaDB.

The server records every envelope and message it gets, and how many SMTP sessions (EHLO) and DATA commands it
saw. So "nothing was sent" and "sent three times" are counted by the receiving side. Messages are decoded with
the ``email`` package's parser, as a mail client would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message, MIMEPart
from email.utils import formataddr, parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

import pytest

from vpsadmind.config import Config, MailerConfig
from vpsadmind.engine.model import ChainState, Direction, Transaction, TSuccess
from vpsadmind.engine.runner import make_handler, run_transaction
from vpsadmind.errors import ParamError
from vpsadmind.handlers import mail
from vpsadmind.handlers.base import HandlerContext, Recovery
from vpsadmind.handlers.params import parse_params
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.handlers import PROBE
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.services import unavailable

HANDLER_MODULES = ("vpsadmind.testing.handlers", "vpsadmind.handlers.mail")
NOOP = 10001

SUBJECT = "Příliš žluťoučký kůň úpěl ďábelské ódy – upozornění na expiraci VPS #1234 (účet „Řehoř“)"
PLAIN = "Dobrý den,\n\nváš VPS #1234 vyprší zítra.\nFrom here on, lines starting with a dot:\n.\n..\n😀 konec\n"
HTML = "<p>Dobrý den,</p>\n<p>váš <b>VPS #1234</b> vyprší zítra. Ďěkujeme – 😀</p>\n"


# ------------------------------------------------------------------------------------------------------------
# The SMTP server


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=email_policy.default)

    @property
    def raw(self) -> Message:
        """Headers exactly as sent (compat32 does not decode them)."""
        return message_from_bytes(self.content)


class Recorder:
    """aiosmtpd handler. It records what arrives and can refuse recipients or stall at DATA when told to."""

    def __init__(self) -> None:
        self.port = 0
        self.sessions = 0                   # EHLO commands: smtplib sends one per connection
        self.data_seen: list[Received] = []  # at the start of DATA, before any stall
        self.received: list[Received] = []   # accepted with 250
        self.refuse: dict[str, str] = {}    # recipient -> reply
        self.tempfail = 0                   # refuse this many RCPTs with 451 first
        self.data_delay = 0.0               # seconds to stall before answering DATA
        self.delay_first_only = False

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sessions += 1
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.tempfail > 0:
            self.tempfail -= 1
            return "451 4.3.0 Temporary lookup failure, try again later"
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        self.data_seen.append(got)
        if self.data_delay and not (self.delay_first_only and len(self.data_seen) > 1):
            await asyncio.sleep(self.data_delay)
        self.received.append(got)
        return "250 2.0.0 Ok: queued as 4XyZ"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_recorder() -> Iterator[Recorder]:
    """An aiosmtpd server on loopback that records what it receives (also used by tests/fuzz)."""
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        unavailable("aiosmtpd is not installed (pip install -e '.[test]')")
    rec = Recorder()
    controller = Controller(rec, hostname="127.0.0.1", port=free_port())
    controller.start()
    rec.port = controller.port
    try:
        yield rec
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Recorder]:
    with smtp_recorder() as rec:
        yield rec


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mail, "RETRY_DELAY", 0.0)


@pytest.fixture
def cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path, smtp: Recorder) -> Config:
    base = make_config(db_settings, test_database, journal=str(tmp_path / "journal"),
                       handler_modules=HANDLER_MODULES)
    return dataclasses.replace(base, mailer=MailerConfig("127.0.0.1", smtp.port))


@pytest.fixture
def ctx(tmp_path: Path, smtp: Recorder) -> HandlerContext:
    """For handlers run outside the engine: exec and recover of 9001 never touch the database."""
    base = make_config(TestDbSettings(), "unused", journal=str(tmp_path / "journal"),
                       handler_modules=HANDLER_MODULES)
    return HandlerContext(config=dataclasses.replace(base, mailer=MailerConfig("127.0.0.1", smtp.port)),
                          db=cast(Any, None))


# ------------------------------------------------------------------------------------------------------------
# Helpers


def params(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"to": "Jan Novák <jan@example.cz>", "cc": "", "bcc": "",
                            "from": "vpsFree.cz <podpora@vpsfree.cz>", "reply_to": None,
                            "return_path": None, "message_id": None, "in_reply_to": None, "references": None,
                            "subject": SUBJECT, "text_plain": PLAIN, "text_html": None}
    base.update(over)
    return base


def mail_chain(*steps: dict[str, Any] | int) -> ChainBuilder:
    """9001 for each dict of params, the transaction type for each int (NoOp, the probe with fail=True)."""
    b = ChainBuilder("mail")
    for step in steps:
        if isinstance(step, dict):
            b.append(9001, server=1, params=step)
        elif step == PROBE:
            b.append(PROBE, server=1, params={"fail": True})
        else:
            b.append(step, server=1)
    return b


async def run_chain(db: Any, cfg: Config, builder: ChainBuilder) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(db)
    async with running_engine(cfg):
        chain = await wait_chain(db, fired.chain_id, timeout=30)
    return chain, await transactions_of(db, fired.chain_id)


def output(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["t_output"])) if row["t_output"] else {}


def transaction(p: dict[str, Any], t_id: int = 77) -> Transaction:
    return Transaction(t_id=t_id, chain_id=7, t_type=9001, t_server=1, t_vps=None, t_depends_on=None,
                       t_urgent=False, t_priority=0, t_success=0, t_done=0, t_param=json.dumps(p), reversible=2,
                       queue="mail", chain_state=1, chain_progress=0, chain_size=1, urgent_rollback=False)


def text(part: MIMEPart) -> str:
    """A decoded text part with LF line ends: SMTP carries lines as CRLF, and a client reads lines."""
    return str(part.get_content()).replace("\r\n", "\n")


def addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    return [(a.display_name, a.addr_spec) for a in msg[name].addresses]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------------------------
# What is sent


async def test_plain_text_mail(db: Any, cfg: Config, smtp: Recorder) -> None:
    chain, rows = await run_chain(db, cfg, mail_chain(params()))
    assert chain["state"] == ChainState.DONE, output(rows[0])
    (got,) = smtp.received
    msg = got.message
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert text(msg) == PLAIN
    assert msg["Subject"] == SUBJECT
    assert addresses(msg, "From") == [("vpsFree.cz", "podpora@vpsfree.cz")]
    assert addresses(msg, "To") == [("Jan Novák", "jan@example.cz")]
    assert msg["X-Mailer"] == "vpsAdmin"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    # No return_path: the From address is the envelope sender.
    assert (got.mail_from, got.rcpt_tos) == ("podpora@vpsfree.cz", ["jan@example.cz"])
    # No message_id from the API: one derived from the transaction, recorded in t_output.
    t_id = rows[0]["t_id"]
    assert msg["Message-ID"].startswith(f"<vpsadmind.{t_id}.") and msg["Message-ID"].endswith("@vpsfree.cz>")
    out = output(rows[0])
    assert out == {"message_id": msg["Message-ID"], "recipients": 1, "attempts": 1,
                   "smtp": f"127.0.0.1:{smtp.port}"}
    assert rows[0]["t_success"] == TSuccess.OK
    # 7-bit clean on the wire: no 8BITMIME or SMTPUTF8 needed.
    assert got.content.isascii()
    assert max(len(line) for line in got.content.split(b"\r\n")) <= 78


async def test_html_only_mail(db: Any, cfg: Config, smtp: Recorder) -> None:
    chain, rows = await run_chain(db, cfg, mail_chain(params(text_plain=None, text_html=HTML)))
    assert chain["state"] == ChainState.DONE, output(rows[0])
    msg = smtp.received[0].message
    assert msg.get_content_type() == "text/html"
    assert text(msg) == HTML
    assert not msg.is_multipart()


async def test_both_bodies_and_every_v2_header(db: Any, cfg: Config, smtp: Recorder) -> None:
    p = params(to="Jan Novák <jan@example.cz>, \"Doe, John\" <john@example.org>",
               cc=["Žofie Dvořáková <zofie@example.cz>", "cc2@example.org"],
               bcc="Tajný Příjemce <secret@example.net>, audit@example.net",
               reply_to="Helpdesk <help@vpsfree.cz>", return_path="bounces+1234@vpsfree.cz",
               message_id="incident-42@vpsfree.cz", in_reply_to="<incident-41@vpsfree.cz>",
               references="<incident-40@vpsfree.cz> incident-41@vpsfree.cz", text_html=HTML)
    chain, rows = await run_chain(db, cfg, mail_chain(p))
    assert chain["state"] == ChainState.DONE, output(rows[0])
    (got,) = smtp.received
    msg = got.message
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [text(part) for part in parts] == [PLAIN, HTML]
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert msg["Subject"] == SUBJECT
    assert addresses(msg, "To") == [("Jan Novák", "jan@example.cz"), ("Doe, John", "john@example.org")]
    assert addresses(msg, "Cc") == [("Žofie Dvořáková", "zofie@example.cz"), ("", "cc2@example.org")]
    assert addresses(msg, "Reply-To") == [("Helpdesk", "help@vpsfree.cz")]
    assert msg["Message-ID"] == "<incident-42@vpsfree.cz>"
    assert msg["In-Reply-To"] == "<incident-41@vpsfree.cz>"
    assert msg["References"] == "<incident-40@vpsfree.cz> <incident-41@vpsfree.cz>"
    assert msg["X-Mailer"] == "vpsAdmin"
    # bcc reaches the envelope only; return_path is MAIL FROM and is not written as a header.
    assert got.mail_from == "bounces+1234@vpsfree.cz"
    assert got.rcpt_tos == ["jan@example.cz", "john@example.org", "zofie@example.cz", "cc2@example.org",
                            "secret@example.net", "audit@example.net"]
    assert "Bcc" not in msg and "Return-Path" not in msg
    assert b"secret@example.net" not in got.content and b"audit@example.net" not in got.content
    out = output(rows[0])
    assert out["message_id"] == "<incident-42@vpsfree.cz>" and out["recipients"] == 6
    # t_output never carries the bodies, the subject or the addresses
    assert not {"text_plain", "text_html", "subject"} & set(out)
    assert "Dobrý" not in rows[0]["t_output"] and "secret@" not in rows[0]["t_output"]


async def test_duplicate_recipients_get_one_copy(ctx: HandlerContext, smtp: Recorder) -> None:
    p = params(to="a@example.org, A@EXAMPLE.ORG", cc="a@example.org", bcc=["b@example.org", "a@example.org"])
    outcome = await make_handler(transaction(p), ctx).exec()
    assert outcome is not None and outcome.output["recipients"] == 2
    assert smtp.received[0].rcpt_tos == ["a@example.org", "b@example.org"]


@pytest.mark.parametrize(("name", "subject"), [
    ("Žofie Dvořáková-Procházková z Nového Města nad Metují, s. r. o., oddělení účtárny", " ".join([SUBJECT] * 4)),
    ("Department of Things and Stuff, Subdivision 42, Building C, Floor 3", "[vpsAdmin] " + "word," * 30),
    ("Jan Novák", "a" * 70 + ",b;c,d " + "e" * 80 + " f"),
    ("Ann \"Q\" O'Neil", "tab\tin\tthe subject is header whitespace"),
])
async def test_long_display_names_and_subject_fold_without_loss(ctx: HandlerContext, smtp: Recorder, name: str,
                                                                subject: str) -> None:
    to = formataddr((name, "zofie@example.cz"))  # a valid header value: quoted, or RFC 2047 if not ASCII
    await make_handler(transaction(params(to=to, subject=subject)), ctx).exec()
    got = smtp.received[0]
    assert got.message["Subject"] == subject
    assert max(len(line) for line in got.content.split(b"\r\n")) <= 78
    # Every encoded word fits RFC 2047's 75 characters; decoded by the book (adjacent words join), the To
    # header gives the name back.
    raw_to = str(got.raw["To"])
    assert all(len(word) <= 75 for word in raw_to.split() if word.startswith("=?"))
    assert str(make_header(decode_header(raw_to))) in (f"{name} <zofie@example.cz>", to)
    assert addresses(got.message, "To")[0][1] == "zofie@example.cz"


# ------------------------------------------------------------------------------------------------------------
# Failures: retries, refusals, keep_going


async def test_timeout_is_retried_three_times_then_the_chain_goes_on(db: Any, cfg: Config, smtp: Recorder,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mail, "SMTP_TIMEOUT", 0.3)
    smtp.data_delay = 2.0
    chain, rows = await run_chain(db, cfg, mail_chain(params(), NOOP))
    out = output(rows[0])
    assert smtp.sessions == 4 and len(smtp.data_seen) == 4  # the first attempt and 3 retries, as v2.0
    assert rows[0]["t_success"] == TSuccess.FAILED and rows[0]["t_done"] == 1
    assert out["error"] == (f"SMTP 127.0.0.1:{smtp.port}, DATA: no answer within 0.3 s "
                            "(gave up after 4 attempts)")
    assert out["attempts"] == 4 and out["phase"] == "DATA" and len(out["retried"]) == 3
    # keep_going: the failure is recorded, nothing is rolled back, and the rest of the chain runs.
    assert (rows[1]["t_done"], rows[1]["t_success"]) == (1, TSuccess.OK)
    assert chain["state"] == ChainState.DONE


async def test_silent_server_times_out_at_the_greeting(ctx: HandlerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # never says 220

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(mail, "SMTP_TIMEOUT", 0.2)
    ctx.config = dataclasses.replace(ctx.config, mailer=MailerConfig("127.0.0.1", port))
    try:
        outcome = await make_handler(transaction(params()), ctx).exec()
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    assert outcome is not None and outcome.status == TSuccess.FAILED
    assert outcome.output["error"] == (f"SMTP 127.0.0.1:{port}, connect: no answer within 0.2 s "
                                       "(gave up after 4 attempts)")
    assert len(connections) == 4


async def test_refused_connection_is_retried(ctx: HandlerContext) -> None:
    port = free_port()  # nothing listens there
    ctx.config = dataclasses.replace(ctx.config, mailer=MailerConfig("127.0.0.1", port))
    outcome = await make_handler(transaction(params()), ctx).exec()
    assert outcome is not None and outcome.status == TSuccess.FAILED
    assert outcome.output["attempts"] == 4 and outcome.output["phase"] == "connect"
    assert "Connection refused" in outcome.output["error"]


async def test_temporary_refusal_is_retried_until_accepted(ctx: HandlerContext, smtp: Recorder) -> None:
    smtp.tempfail = 2
    outcome = await make_handler(transaction(params()), ctx).exec()
    assert outcome is not None and outcome.status == TSuccess.OK
    assert outcome.output["attempts"] == 3 and smtp.sessions == 3 and len(smtp.received) == 1
    assert outcome.output["retried"] == [
        f"SMTP 127.0.0.1:{smtp.port}, RCPT TO: refused 1 of 1 recipients: jan@example.cz: "
        "451 4.3.0 Temporary lookup failure, try again later"] * 2


async def test_refused_recipient_fails_with_the_server_message_and_nobody_gets_it(
        db: Any, cfg: Config, smtp: Recorder) -> None:
    reply = "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
    smtp.refuse["nobody@example.org"] = reply
    p = params(to="jan@example.cz, nobody@example.org", bcc="audit@example.net")
    chain, rows = await run_chain(db, cfg, mail_chain(NOOP, p))
    out = output(rows[1])
    assert out["error"] == (f"SMTP 127.0.0.1:{smtp.port}, RCPT TO: refused 1 of 3 recipients: "
                            f"nobody@example.org: {reply}")
    assert out["refused"] == {"nobody@example.org": reply} and out["smtp_code"] == 550
    # A permanent refusal is not retried, and the others do not get the mail: a retry would send them a copy.
    assert out["attempts"] == 1 and smtp.sessions == 1
    assert smtp.received == [] and smtp.data_seen == []
    # The failed keep_going transaction was the last one: the chain fails, but nothing before it is rolled back.
    assert chain["state"] == ChainState.FAILED
    assert (rows[0]["t_done"], rows[0]["t_success"]) == (1, TSuccess.OK)


async def test_a_later_failure_neither_recalls_nor_resends_the_mail(db: Any, cfg: Config, smtp: Recorder) -> None:
    chain, rows = await run_chain(db, cfg, mail_chain(params(), PROBE))
    # The chain rolls back past the mail: keep_going is skipped there, so the chain fails (not fatal).
    assert chain["state"] == ChainState.FAILED
    assert len(smtp.received) == 1 and smtp.sessions == 1
    assert "keep_going" in output(rows[0])["note"]


# ------------------------------------------------------------------------------------------------------------
# Hostile and invalid parameters


HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("subject", {"subject": "Hello\r\nBcc: victim@example.org"}),
    ("subject", {"subject": "Hello\nBcc: victim@example.org"}),
    ("subject", {"subject": "Hello\u2028Bcc: victim@example.org"}),
    ("to", {"to": "jan@example.cz\r\nBcc: victim@example.org"}),
    ("to", {"to": "=?utf-8?q?Jan=0D=0ABcc:_victim@example.org?= <jan@example.cz>"}),
    ("to", {"to": "=?utf-8?b?4oCoQmNjOiB2aWN0aW1AZXhhbXBsZS5vcmc=?= <jan@example.cz>"}),
    ("to[1]", {"to": ["jan@example.cz", "x@example.org\rBcc: victim@example.org"]}),
    ("cc", {"cc": "x@example.org\nBcc: victim@example.org"}),
    ("bcc", {"bcc": "x@example.org\r\nX-Evil: 1"}),
    ("from", {"from": "podpora@vpsfree.cz\r\nBcc: victim@example.org"}),
    ("reply_to", {"reply_to": "help@vpsfree.cz\r\nBcc: victim@example.org"}),
    ("return_path", {"return_path": "b@vpsfree.cz\r\nRCPT TO:<victim@example.org>"}),
    ("message_id", {"message_id": "<a@b>\r\nBcc: victim@example.org"}),
    ("in_reply_to", {"in_reply_to": "<a@b>\x0bBcc: victim@example.org"}),
    ("references", {"references": "<a@b>\x85Bcc: victim@example.org"}),
]


async def test_header_injection_fails_naming_the_field_before_any_connection(
        db: Any, cfg: Config, smtp: Recorder) -> None:
    chain, rows = await run_chain(db, cfg, mail_chain(*(params(**over) for _, over in HOSTILE)))
    assert [output(r).get("field") for r in rows] == [f for f, _ in HOSTILE]
    assert all(output(r)["error"].startswith(f"Bad param: {f}: ") for r, (f, _) in zip(rows, HOSTILE, strict=True))
    assert all(r["t_success"] == TSuccess.FAILED for r in rows)
    assert smtp.sessions == 0 and smtp.data_seen == []
    assert chain["state"] == ChainState.FAILED  # every one failed and kept going; the last one ends the chain


@pytest.mark.parametrize(("over", "field", "says"), [
    ({"text_plain": None, "text_html": ""}, "text_plain", "message body missing"),
    ({"to": "", "cc": None, "bcc": []}, "to", "no recipient"),
    ({"to": "jan@"}, "to", "not an address list"),
    ({"to": "not an address"}, "to", "invalid address list"),
    ({"to": "alice@example.org)<bob@example.org>"}, "to", "invalid address list"),
    ({"to": "jan@exámple.cz"}, "to", "not ASCII"),
    ({"cc": ["ok@example.org", "@example.org"]}, "cc[1]", "invalid address list"),
    ({"to": 5}, "to", "expected a string"),
    ({"return_path": "a@example.org, b@example.org"}, "return_path", "exactly one address"),
    ({"to": "a" * 250 + "@example.org"}, "to", "longer than 254"),
    ({"message_id": "no-at-sign"}, "message_id", "not a message id"),
    ({"message_id": "x" * 250 + "@example.org"}, "message_id", "at most 255"),
    ({"message_id": "<a@b> <c@d>"}, "message_id", "one message id"),
    ({"references": ["<a@b>", "<c d@e>"]}, "references[1]", "not a message id"),
    ({"text_plain": "broken \ud800 surrogate"}, "text_plain", "lone surrogate"),
    ({"subject": None}, "subject", "expected a string, got null"),
])
def test_invalid_params_name_the_field(over: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(mail.MailParams, params(**over))
    assert err.value.field == field and says in str(err.value)


@pytest.mark.parametrize(("value", "says"), [
    (None, "missing required field"),
    (["podpora@vpsfree.cz"], "expected a string"),
    ("a@vpsfree.cz, b@vpsfree.cz", "exactly one address"),
    ("", "exactly one address"),
])
def test_from_is_one_address(value: str | None, says: str) -> None:
    t_param = json.dumps(params(**{"from": value}))
    with pytest.raises(ParamError) as err:
        mail.sender_of(t_param)
    assert err.value.field == "from" and says in str(err.value)


def test_api_shapes_are_accepted() -> None:
    """v2.0's API joins recipients with "," and leaves unused cc/bcc as ""; lists and bare ids work too."""
    p = parse_params(mail.MailParams, params(to="a@example.org,b@example.org, ,", cc="", bcc="",
                                             references=["x@y", "<z@w>"], in_reply_to="x@y"))
    assert [m.addr for m in p.parsed.to] == ["a@example.org", "b@example.org"]
    assert p.parsed.cc == () and p.parsed.bcc == ()
    assert p.parsed.references == ("<x@y>", "<z@w>") and p.parsed.in_reply_to == ("<x@y>",)


# ------------------------------------------------------------------------------------------------------------
# Crash behaviour and cancellation


async def test_rerun_after_crash_resends_with_the_same_message_id(ctx: HandlerContext, smtp: Recorder) -> None:
    t = transaction(params())
    first, _ = await run_transaction(t, ctx)
    again, _ = await run_transaction(t, ctx, interrupted=True)
    assert first.status == again.status == TSuccess.OK
    assert "re-sent after a crash" in again.output["note"]
    ids = [got.message["Message-ID"] for got in smtp.received]
    assert len(ids) == 2 and ids[0] == ids[1] == first.output["message_id"]
    assert await make_handler(t, ctx).recover(Direction.ROLLBACK) is Recovery.RERUN


async def test_cancelling_the_transaction_cuts_the_smtp_connection(ctx: HandlerContext, smtp: Recorder,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mail, "SMTP_TIMEOUT", 30.0)
    smtp.data_delay = 30.0
    finished = threading.Event()
    deliver = mail._Session.deliver

    def watched(self: Any, *args: Any) -> None:
        try:
            deliver(self, *args)
        finally:
            finished.set()

    monkeypatch.setattr(mail._Session, "deliver", watched)
    task = asyncio.create_task(make_handler(transaction(params()), ctx).exec())
    await until(lambda: len(smtp.data_seen) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Without the abort the thread would wait out the 30 s timeout and might still complete the delivery.
    assert await asyncio.to_thread(finished.wait, 3.0)


@pytest.mark.slow
async def test_kill9_during_delivery_sends_again_after_restart(db: Any, db_settings: TestDbSettings,
                                                               test_database: str, tmp_path: Path,
                                                               smtp: Recorder) -> None:
    smtp.data_delay, smtp.delay_first_only = 30.0, True
    config = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "journal",
                          extra_vpsadmin={"handler_modules": list(HANDLER_MODULES)},
                          sections={"mailer": {"smtp_server": "127.0.0.1", "smtp_port": smtp.port}})
    fired = await mail_chain(params()).fire(db)
    first = DaemonProcess(config, tmp_path / "first.log").start()
    try:
        await until(lambda: len(smtp.data_seen) == 1, timeout=20)
    finally:
        first.kill()  # SIGKILL while the server has the whole message but has not answered
    second = DaemonProcess(config, tmp_path / "second.log").start()
    try:
        chain = await wait_chain(db, fired.chain_id, timeout=30)
        rows = await transactions_of(db, fired.chain_id)
    finally:
        second.kill()
    assert chain["state"] == ChainState.DONE, output(rows[0])
    out = output(rows[0])
    assert "re-sent after a crash" in out["note"]
    # Sent twice, and recognisably the same mail.
    assert len(smtp.data_seen) == 2
    assert smtp.data_seen[0].message["Message-ID"] == smtp.data_seen[1].message["Message-ID"] == out["message_id"]

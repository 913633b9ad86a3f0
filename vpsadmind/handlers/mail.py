"""Mail::Send (9001): one e-mail through the SMTP server of ``mailer`` (contract 5.5, docs/mail.md).

v2.0 built the message with Ruby's Mail gem: ``to``, ``cc``, ``bcc``, ``from``, ``reply_to``, ``return_path``,
``message_id``, ``in_reply_to``, ``references``, ``subject`` and a ``text_plain`` and/or ``text_html`` body
(multipart/alternative when both are given), all UTF-8, plus ``X-Mailer: vpsAdmin``. It delivered it to
``mailer.smtp_server:smtp_port`` and retried up to three times on a timeout. The API marks 9001 keep_going: a
failure is recorded and the chain goes on; a sent mail cannot be recalled, so rollback does nothing.

Here every parameter is validated before any connection is made. A control character (CR, LF and the other
line breaks of ``str.splitlines``) in any header field fails the transaction naming the field, so no
parameter can add a header (``"Hi\\r\\nBcc: x"``). Addresses go through the RFC 5322 parser of the ``email``
package and must parse without defects. ``bcc`` only reaches the envelope, and ``return_path`` is the
envelope sender (MAIL FROM).

The message is generated with the ``compat32`` API on purpose. Python 3.11's ``EmailMessage`` folding drops
the space at a fold point between two encoded words of a long non-ASCII subject, so recipients would read
"úpělďábelské". ``email.header.Header`` folds such a subject correctly. Bodies are quoted-printable and
headers are RFC 2047 encoded, so the message is 7-bit clean and needs neither 8BITMIME nor SMTPUTF8.

SMTP runs in a worker thread with ``smtplib``, because there is no asyncio SMTP client among the
dependencies. Every socket operation has a timeout of :data:`SMTP_TIMEOUT` seconds. A cancelled transaction
shuts the socket down so that the thread stops at once. A recipient refused by the server fails the whole
mail before DATA, so nobody gets it (as in v2.0, where Net::SMTP raised on the first refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import smtplib
import socket
from dataclasses import dataclass, field
from email import policy as email_policy
from email.charset import QP, Charset
from email.errors import ObsoleteHeaderDefect
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate
from typing import Any, Final, NamedTuple

from vpsadmind.engine.model import Direction, Transaction
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, HandlerContext, Outcome, Recovery, failed, handler, ok
from vpsadmind.handlers.params import parse_json_object

__all__ = [
    "MAX_RETRIES",
    "RETRY_DELAY",
    "SMTP_TIMEOUT",
    "X_MAILER",
    "DeliveryError",
    "MailParams",
    "Mailbox",
    "ParsedMail",
    "SendMail",
    "compose",
    "default_message_id",
    "envelope",
    "sender_of",
]

#: Seconds that one socket operation may take: the connect, and waiting for each reply. Reading the value at
#: call time lets the tests lower it. v2.0 used Net::SMTP's defaults, 30 s to connect and 60 s to read.
SMTP_TIMEOUT: float = 60.0
#: Attempts after the first one when a failure is transient. v2.0 retried while ``tries <= 3``, so a mail
#: gets up to 4 attempts.
MAX_RETRIES: int = 3
#: Seconds between two attempts. v2.0 retried at once; a short pause gives a restarting local MTA a chance.
RETRY_DELAY: float = 5.0
X_MAILER: Final = "vpsAdmin"

# Control characters (except TAB, which is header whitespace), C1 controls and every character that
# str.splitlines() (and so the email package) treats as a line break. In a header, any of them could end the
# line and start a header of the sender's choosing. Lone surrogates (possible in JSON) cannot be encoded as
# UTF-8 at all.
_FORBIDDEN: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# msg-id (RFC 5322 3.6.4), loosely: printable ASCII without "<", ">" or a second "@" on either side. The API
# stores ids in VARCHAR(255) columns.
_MSG_ID: Final = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
_MAX_MSG_ID: Final = 255
# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
_MAX_ADDR: Final = 254
# Bytes of UTF-8 per encoded word in a display name: base64 of 45 bytes plus "=?utf-8?b??=" is 72 characters,
# within RFC 2047's limit of 75.
_EW_BYTES: Final = 45
# Text is written as it is, without RFC 2047 encoding, only if it is ASCII that fits on the header's first
# line. The compat32 folder may break a longer line right after "Subject:", which a reader unfolds to a
# leading space, or may leave it unfolded. Encoded words always fold cleanly.
_PLAIN_SUBJECT: Final = 78 - len("Subject: ")
_PLAIN_NAME: Final = 60
# The generator: CRLF line ends as on the wire, and no ">From " mangling, which would change the body.
_POLICY: Final = email_policy.compat32.clone(linesep="\r\n", mangle_from_=False)
# UTF-8 bodies as quoted-printable. Mostly-ASCII text stays readable, and spam filters do not score it as
# base64-encoded text.
_UTF8_QP: Final = Charset("utf-8")
_UTF8_QP.body_encoding = QP
# The email package's RFC 5322 parser. It reports defects instead of guessing, unlike Python 3.11's
# email.utils.getaddresses (CVE-2023-27043).
_parse_header: Final = email_policy.default.header_factory


class Mailbox(NamedTuple):
    """One address: ``name`` is the decoded display name ("" if none), ``addr`` the ASCII addr-spec."""

    name: str
    addr: str


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """The validated header values of :class:`MailParams` in the form the message and envelope need."""

    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    bcc: tuple[Mailbox, ...]
    reply_to: tuple[Mailbox, ...]
    return_path: str | None
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]


# ------------------------------------------------------------------------------------------------------------
# Validation


def _header_text(path: str, value: str) -> str:
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        msg = f"character {bad.group()!r} at offset {bad.start()} is not allowed in a mail header"
        raise ParamError(msg, field=path)
    return value


def _mailboxes(path: str, value: str) -> list[Mailbox]:
    """Every address of an address-list header value (groups are flattened to their members)."""
    _header_text(path, value)
    try:
        parsed = _parse_header("To", value)
    except Exception as exc:  # the parser raises ValueError, IndexError and the like on malformed input
        raise ParamError(f"not an address list ({exc}): {value!r:.120}", field=path) from None
    # Obsolete syntax is harmless and common ("vpsFree.cz <podpora@vpsfree.cz>" has a period in the phrase).
    # Anything else means the parser had to guess, as in "a@x.org)<b@y.org>".
    defects = [d for d in parsed.defects if not isinstance(d, ObsoleteHeaderDefect)]
    if defects:
        raise ParamError(f"invalid address list {value!r:.120}: {defects[0]}", field=path)
    out: list[Mailbox] = []
    for address in parsed.addresses:
        addr = str(address.addr_spec)
        if not address.username or not address.domain:
            raise ParamError(f"{addr!r:.120} is not a complete address (local@domain)", field=path)
        if len(addr) > _MAX_ADDR:
            raise ParamError(f"{addr!r:.60}... is longer than {_MAX_ADDR} characters", field=path)
        if not addr.isascii():
            raise ParamError(f"{addr!r:.120} is not ASCII: internationalised addresses (SMTPUTF8) are not "
                             "supported; write the domain in punycode", field=path)
        # The parser decodes RFC 2047 words, so a control character can hide in an encoded display name.
        name = str(address.display_name or "")
        bad = _FORBIDDEN.search(name)
        if bad is not None:
            raise ParamError(f"the display name of {addr} contains {bad.group()!r} once decoded", field=path)
        out.append(Mailbox(name.strip(), addr))  # strip only after the check: it would remove U+2028 too
    return out


def _address_list(path: str, value: str | list[str] | None) -> tuple[Mailbox, ...]:
    """v2.0's API joins the addresses with "," into one string; a JSON list of strings is accepted too.
    ``None`` and "" mean no address (``mail_logs.cc`` and ``bcc`` are NOT NULL, so they are "" when unused)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(_mailboxes(path, value)) if value.strip() else ()
    return tuple(m for i, item in enumerate(value) if item.strip() for m in _mailboxes(f"{path}[{i}]", item))


def _one_mailbox(path: str, value: str) -> Mailbox:
    found = _mailboxes(path, value)
    if len(found) != 1:
        raise ParamError(f"expected exactly one address, got {len(found)} in {value!r:.120}", field=path)
    return found[0]


def _msg_ids(path: str, value: str | list[str] | None) -> tuple[str, ...]:
    """Message ids, whitespace-separated in a string or one per list item. Bare ids get their angle brackets,
    as the Mail gem added them."""
    items: list[tuple[str, str]] = []
    if isinstance(value, str):
        items = [(path, part) for part in _header_text(path, value).split()]
    elif value is not None:
        items = [(f"{path}[{i}]", part) for i, item in enumerate(value)
                 for part in _header_text(f"{path}[{i}]", item).split()]
    out: list[str] = []
    for where, item in items:
        ident = item if item.startswith("<") else f"<{item}>"
        if not _MSG_ID.fullmatch(ident) or len(ident) > _MAX_MSG_ID:
            msg = f"not a message id (<left@right>, at most {_MAX_MSG_ID} characters): {item!r:.120}"
            raise ParamError(msg, field=where)
        out.append(ident)
    return tuple(out)


def _body(path: str, value: str | None) -> str | None:
    if not value:  # v2.0's has_type?: nil and "" both mean "no such part"
        return None
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise ParamError(f"lone surrogate {bad.group()!r} at offset {bad.start()} is not valid UTF-8", field=path)
    return value


@dataclass(frozen=True, slots=True)
class MailParams:
    """t_param of 9001, except ``from``, which is a Python keyword and so cannot be a field here; see
    :func:`sender_of`. ``parsed`` holds the validated header values."""

    subject: str
    to: str | list[str] | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    reply_to: str | list[str] | None = None
    return_path: str | None = None
    message_id: str | None = None
    in_reply_to: str | list[str] | None = None
    references: str | list[str] | None = None
    text_plain: str | None = None
    text_html: str | None = None
    parsed: ParsedMail = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _header_text("subject", self.subject)
        plain, html = _body("text_plain", self.text_plain), _body("text_html", self.text_html)
        if plain is None and html is None:
            raise ParamError("message body missing: give text_plain, text_html or both", field="text_plain")
        parsed = ParsedMail(
            to=_address_list("to", self.to),
            cc=_address_list("cc", self.cc),
            bcc=_address_list("bcc", self.bcc),
            reply_to=_address_list("reply_to", self.reply_to),
            return_path=_one_mailbox("return_path", self.return_path).addr if self.return_path else None,
            message_id=_single_msg_id(self.message_id),
            in_reply_to=_msg_ids("in_reply_to", self.in_reply_to),
            references=_msg_ids("references", self.references),
        )
        if not (parsed.to or parsed.cc or parsed.bcc):
            raise ParamError("no recipient: to, cc and bcc are all empty", field="to")
        object.__setattr__(self, "parsed", parsed)


def _single_msg_id(value: str | None) -> str | None:
    ids = _msg_ids("message_id", value) if value else ()
    if len(ids) > 1:
        raise ParamError(f"expected one message id, got {len(ids)}", field="message_id")
    return ids[0] if ids else None


def sender_of(t_param: str | None) -> Mailbox:
    """The ``from`` of a 9001 t_param: exactly one address, checked like every other header field."""
    value = parse_json_object(t_param).get("from")
    if value is None:
        raise ParamError("missing required field", field="from")
    if not isinstance(value, str):
        raise ParamError(f"expected a string, got {type(value).__name__}", field="from")
    return _one_mailbox("from", value)


# ------------------------------------------------------------------------------------------------------------
# The message


def default_message_id(t: Transaction, sender: Mailbox) -> str:
    """The Message-ID when the API gave none. It is derived from the transaction, not random, so a re-run after
    a crash sends the same id, and recipients and their MUAs can recognise the duplicate. The digest of t_param
    keeps the ids of two clusters apart when their transaction ids meet."""
    digest = hashlib.sha256((t.t_param or "").encode("utf-8", "surrogatepass")).hexdigest()[:12]
    domain = sender.addr.rpartition("@")[2]
    return f"<vpsadmind.{t.t_id}.{digest}@{domain}>"


def _encoded_words(text: str) -> str:
    """``text`` as RFC 2047 words of at most 75 characters. Whitespace between adjacent encoded words is
    ignored when decoding (RFC 2047 6.2), so splitting anywhere keeps the text."""
    words: list[str] = []
    chunk = ""
    for ch in text:
        if chunk and len((chunk + ch).encode()) > _EW_BYTES:
            words.append(_UTF8_QP.header_encode(chunk))
            chunk = ""
        chunk += ch
    words.append(_UTF8_QP.header_encode(chunk))
    return " ".join(words)


def _format_mailboxes(boxes: tuple[Mailbox, ...] | list[Mailbox]) -> str:
    out: list[str] = []
    for name, addr in boxes:
        if not name:
            out.append(addr)
        elif _plain(name, _PLAIN_NAME):
            out.append(formataddr((name, addr)))  # quotes and escapes specials: "Doe, John" <j@x>
        else:
            out.append(f"{_encoded_words(name)} <{addr}>")
    return ", ".join(out)


def _plain(text: str, limit: int) -> bool:
    """Whether ``text`` may be written unencoded. Literal "=?" is encoded too: a reader would otherwise decode
    "=?utf-8?q?=0A?=" in it to a line break."""
    return text.isascii() and len(text) <= limit and "=?" not in text


def _subject(subject: str) -> str | Header:
    if _plain(subject, _PLAIN_SUBJECT):
        return subject
    return Header(subject, "utf-8", header_name="Subject")


def _text_part(text: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, _UTF8_QP)
    return part


def _body_message(plain: str | None, html: str | None) -> Message:
    if plain and html:
        root = MIMEMultipart("alternative")
        for part in (_text_part(plain, "plain"), _text_part(html, "html")):
            del part["MIME-Version"]  # only the top-level entity carries it (RFC 2045 4)
            root.attach(part)
        return root
    return _text_part(plain or html or "", "plain" if plain else "html")


def compose(p: MailParams, sender: Mailbox, message_id: str) -> Message:
    """The message as v2.0 built it; ``bcc`` and ``return_path`` are left to the envelope."""
    # compat32 headers may be str or Header objects (Message's type defaults to str only).
    msg: Message[Any, Any] = _body_message(p.text_plain, p.text_html)
    mime = msg.items()  # Content-Type, MIME-Version, ...: re-added after ours, so the mail reads naturally
    for name in {name for name, _ in mime}:
        del msg[name]
    m = p.parsed
    headers: list[tuple[str, str | Header]] = [("From", _format_mailboxes([sender]))]
    headers += [(name, _format_mailboxes(boxes)) for name, boxes in
                (("To", m.to), ("Cc", m.cc), ("Reply-To", m.reply_to)) if boxes]
    headers += [("Subject", _subject(p.subject)), ("Date", formatdate(localtime=True)),
                ("Message-ID", message_id)]
    headers += [(name, " ".join(ids)) for name, ids in
                (("In-Reply-To", m.in_reply_to), ("References", m.references)) if ids]
    headers.append(("X-Mailer", X_MAILER))
    for name, value in [*headers, *mime]:
        msg[name] = value
    return msg


def envelope(p: MailParams, sender: Mailbox) -> tuple[str, list[str]]:
    """MAIL FROM (``return_path``, else the From address) and RCPT TO: to, cc and bcc, each address once."""
    m = p.parsed
    recipients: list[str] = []
    seen: set[str] = set()
    for box in (*m.to, *m.cc, *m.bcc):
        if box.addr.lower() not in seen:
            seen.add(box.addr.lower())
            recipients.append(box.addr)
    return m.return_path or sender.addr, recipients


# ------------------------------------------------------------------------------------------------------------
# SMTP


class DeliveryError(Exception):
    """One failed attempt. ``transient`` is true when another attempt may succeed: a timeout, a refused or
    reset connection, or a 4xx reply. ``phase`` is the SMTP step that failed."""

    def __init__(self, message: str, *, transient: bool, phase: str, code: int | None = None,
                 refused: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.phase = phase
        self.code = code
        self.refused = refused or {}

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase}
        if self.code is not None:
            out["smtp_code"] = self.code
        if self.refused:
            out["refused"] = self.refused
        return out


_TRANSIENT_OS: Final = (TimeoutError, ConnectionRefusedError, ConnectionResetError)


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """smtplib turns a timeout while reading a reply into SMTPServerDisconnected, raised while handling the
    TimeoutError. Walk the chain to find what really happened."""
    current: BaseException | None = exc
    visited: set[int] = set()  # a chain can loop back on itself
    while current is not None and id(current) not in visited:
        if isinstance(current, kinds):
            return current
        visited.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reply_text(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


class _Session:
    """One SMTP conversation, run in a worker thread. :meth:`abort` may be called from the event loop."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.phase = "connect"
        # No host yet, so the constructor does not connect. The explicit local_hostname avoids
        # socket.getfqdn(), which may wait on reverse DNS.
        self._smtp = smtplib.SMTP(timeout=timeout, local_hostname=socket.gethostname())

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        try:
            self._converse(mail_from, recipients, data)
        except DeliveryError:
            raise
        except smtplib.SMTPResponseException as exc:  # EHLO/HELO or DATA refused
            raise self._reply_error(exc.smtp_code, exc.smtp_error) from exc
        except OSError as exc:  # socket errors and every other smtplib.SMTPException
            raise DeliveryError(f"{self._where()}: {self._describe(exc)}", phase=self.phase,
                                transient=_caused_by(exc, _TRANSIENT_OS) is not None) from exc
        finally:
            self._close()

    def abort(self) -> None:
        """Cut the connection: the thread's current or next socket call fails at once."""
        sock = self._smtp.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _converse(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        smtp = self._smtp
        self._expect(smtp.connect(self.host, self.port), 220)
        self.phase = "EHLO"
        smtp.ehlo_or_helo_if_needed()
        self.phase = "MAIL FROM"
        self._expect(smtp.mail(mail_from), 250)
        self.phase = "RCPT TO"
        refused: dict[str, tuple[int, bytes]] = {}
        for rcpt in recipients:
            code, message = smtp.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, message)
        if refused:
            # All or nothing, as in v2.0: sending to the others would make a retry send them a second copy.
            raise self._refused(refused, len(recipients))
        self.phase = "DATA"
        self._expect(smtp.data(data), 250)  # smtplib dot-stuffs the lines and ends the data with CRLF.CRLF

    def _expect(self, reply: tuple[int, bytes], want: int) -> None:
        if reply[0] != want:
            raise self._reply_error(*reply)

    def _reply_error(self, code: int, message: bytes | str) -> DeliveryError:
        return DeliveryError(f"{self._where()}: {_reply_text(code, message)}", phase=self.phase, code=code,
                             transient=400 <= code < 500)

    def _refused(self, refused: dict[str, tuple[int, bytes]], total: int) -> DeliveryError:
        replies = {rcpt: _reply_text(code, message) for rcpt, (code, message) in refused.items()}
        listed = "; ".join(f"{rcpt}: {text}" for rcpt, text in replies.items())
        first = next(iter(refused.values()))[0]
        return DeliveryError(f"{self._where()}: refused {len(refused)} of {total} recipients: {listed}",
                             phase=self.phase, code=first, refused=replies,
                             transient=all(400 <= code < 500 for code, _ in refused.values()))

    def _where(self) -> str:
        return f"SMTP {self.host}:{self.port}, {self.phase}"

    def _describe(self, exc: OSError) -> str:
        if _caused_by(exc, (TimeoutError,)) is not None:
            return f"no answer within {self.timeout:g} s"
        cause = _caused_by(exc, _TRANSIENT_OS) or exc
        return str(cause) or type(cause).__name__

    def _close(self) -> None:
        smtp = self._smtp
        # After a timeout smtplib has already closed the socket; otherwise say QUIT. A failing QUIT does not
        # matter: the outcome of the mail is already known.
        if smtp.sock is not None:
            with contextlib.suppress(OSError):
                smtp.quit()
        smtp.close()


async def _attempt(host: str, port: int, mail_from: str, recipients: list[str], data: bytes) -> None:
    session = _Session(host, port, SMTP_TIMEOUT)
    try:
        await asyncio.to_thread(session.deliver, mail_from, recipients, data)
    except asyncio.CancelledError:
        # A thread cannot be cancelled. Cut its socket so it stops now and sends nothing after the transaction
        # was killed.
        session.abort()
        raise


# ------------------------------------------------------------------------------------------------------------
# The handler


@handler(9001)
class SendMail(Handler[MailParams]):
    """Mail::Send: compose the mail and deliver it, retrying transient failures (see the module docstring).

    Crash: not idempotent, since running it again after a crash may send the mail twice. We cannot know
    whether the interrupted attempt got as far as the server's final 250, so ``recover`` re-runs it, as v2.0
    did. We prefer a duplicate notification to a lost one. The duplicate carries the same Message-ID (the
    API's, or :func:`default_message_id`, derived from the transaction), so it can be recognised, and t_output
    says it was re-sent after a crash. Rollback (only if a chain marks 9001 reversible) changes nothing:
    a sent mail cannot be recalled.
    """

    Params = MailParams
    idempotent = False

    def __init__(self, ctx: HandlerContext, params: MailParams, transaction: Transaction) -> None:
        super().__init__(ctx, params, transaction)
        # Raises ParamError like the dataclass, so a bad ``from`` also fails as "Bad param" before any work.
        self.sender = sender_of(transaction.t_param)
        self._after_crash = False

    async def exec(self) -> Outcome | None:
        p = self.params
        message_id = p.parsed.message_id or default_message_id(self.transaction, self.sender)
        data = compose(p, self.sender, message_id).as_bytes(policy=_POLICY)
        mail_from, recipients = envelope(p, self.sender)
        mailer = self.ctx.config.mailer
        info: dict[str, Any] = {"message_id": message_id, "recipients": len(recipients),
                                "smtp": f"{mailer.smtp_server}:{mailer.smtp_port}"}
        if self._after_crash:
            info["note"] = "re-sent after a crash interrupted the first run; it may arrive twice (same Message-ID)"
        errors: list[DeliveryError] = []
        while True:
            try:
                await _attempt(mailer.smtp_server, mailer.smtp_port, mail_from, recipients, data)
                break
            except DeliveryError as exc:
                errors.append(exc)
                if not exc.transient or len(errors) > MAX_RETRIES:
                    return self._failed(exc, errors, info)
                self.log.warning("mail delivery failed, retrying", t_id=self.transaction.t_id, error=str(exc),
                                 attempt=len(errors), retry_in=RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
        self.log.info("mail sent", t_id=self.transaction.t_id, attempts=len(errors) + 1, **info)
        if errors:
            info["retried"] = [str(e) for e in errors]
        return ok(**info, attempts=len(errors) + 1)

    def _failed(self, last: DeliveryError, errors: list[DeliveryError], info: dict[str, Any]) -> Outcome:
        error = str(last)
        if len(errors) > 1:
            error += f" (gave up after {len(errors)} attempts)"
            info["retried"] = [str(e) for e in errors[:-1]]
        self.log.error("mail not sent", t_id=self.transaction.t_id, error=error, **info)
        return failed(error, **info, **last.output(), attempts=len(errors))

    async def rollback(self) -> Outcome | None:
        return ok(note="a sent mail cannot be recalled")

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        if direction is Direction.EXECUTE:
            self._after_crash = True
        return Recovery.RERUN

"""Hostile ``t_param`` for Mail::Send (9001), delivered to a real SMTP server (aiosmtpd) on localhost.

Besides the checks of every handler (refused naming the field, or failed or sent with one of the project's
errors), every mail that does arrive must carry exactly the headers vpsadmind writes: a newline smuggled into a
subject, an address or a message id must never become a header of its own (or a second message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.cases import VALID, scope_of
from tests.fuzz.conftest import next_t_id
from tests.fuzz.harness import count, fuzz_settings, run_input
from tests.fuzz.mutate import mutated
from tests.fuzz.sandbox import VEID, Sandbox
from tests.test_mail import Recorder, smtp_recorder
from vpsadmind.config import MailerConfig
from vpsadmind.handlers import mail
from vpsadmind.handlers.base import HandlerContext

HEADERS = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
           "x-mailer", "content-type", "mime-version", "content-transfer-encoding"}


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[Recorder]:
    with smtp_recorder() as rec:
        yield rec


@pytest.fixture
def mctx(hctx: HandlerContext, smtp_server: Recorder, monkeypatch: pytest.MonkeyPatch) -> HandlerContext:
    monkeypatch.setattr(mail, "RETRY_DELAY", 0.0)
    monkeypatch.setattr(mail, "SMTP_TIMEOUT", 5.0)
    hctx.config = dataclasses.replace(hctx.config, mailer=MailerConfig("127.0.0.1", smtp_server.port))
    return hctx


def check_arrived(rec: Recorder, before: int) -> None:
    for got in rec.received[before:]:
        names = [k.lower() for k in got.raw]  # a Message iterates over its header names
        assert set(names) <= HEADERS, f"headers that vpsadmind does not write: {set(names) - HEADERS}"
        assert len(names) == len(set(names)), f"a header twice: {names}"
        head = got.content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        assert all(line[:1] in (b" ", b"\t") or b":" in line for line in head.splitlines()), head


async def test_valid_mail_arrives(box: Sandbox, mctx: HandlerContext, smtp_server: Recorder) -> None:
    before = len(smtp_server.received)
    verdict = await run_input(box, mctx, 9001, VALID[9001][1], vps=VEID, t_id=next_t_id(), scope_of=scope_of)
    assert verdict.exec_status == "ok", verdict.notes
    assert len(smtp_server.received) == before + 1
    check_arrived(smtp_server, before)


@fuzz_settings(25)
@given(data=st.data())
async def test_hostile_mail(box: Sandbox, mctx: HandlerContext, smtp_server: Recorder,
                            data: st.DataObject) -> None:
    params, _what = data.draw(mutated(VALID[9001][1]), label="input")
    before = len(smtp_server.received)
    verdict = await run_input(box, mctx, 9001, params, vps=VEID, t_id=next_t_id(), scope_of=scope_of)
    check_arrived(smtp_server, before)
    count("mail:9001")
    count(f"mail:{verdict.kind}")

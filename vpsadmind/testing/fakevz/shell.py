"""The ``bash -c`` that ``vzctl exec``/``exec2`` run inside a container, reduced to what the fake needs.

vzctl joins exec's arguments with spaces (an empty one becomes ``''``) and runs ``bash -c "<joined>"`` in the
container. The fake parses that string like bash for the subset it models and runs its own commands
(:mod:`.builtins`) against the container root instead of a real shell:

* words with single quotes, double quotes (``\\"``, ``\\\\``, ``\\$``, ``\\``` escapes) and backslash escapes;
* lists with ``;``, newlines, ``&&`` and ``||``; comments (``#`` at the start of a word);
* redirections ``>``, ``>>``, ``2>``, ``2>>`` to files inside the container;
* anything else (pipes, ``&``, ``<``, ``$VAR``, ``$(...)``, backticks, subshells) is not modelled: the command
  fails with bash's syntax error code 2 and says so. Globs are not expanded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from vpsadmind.testing.fakevz.builtins import COMMANDS, Context, ExitScript
from vpsadmind.testing.fakevz.chroot import ChrootError, resolve

__all__ = ["ShellSyntax", "Command", "tokenize", "parse", "run"]

_OPS = (";", "&&", "||")


class ShellSyntax(Exception):
    """Text the fake cannot (or bash would not) run."""


@dataclass
class Command:
    words: list[str] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)   # (">", ">>", "2>", "2>>"), path


def _double_quoted(text: str, i: int, buf: list[str]) -> int:
    """Consume a "..." string starting after the opening quote; returns the index after the closing quote."""
    while i < len(text):
        c = text[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\$`\n':
            buf.append(text[i + 1] if text[i + 1] != "\n" else "")
            i += 2
            continue
        if c in "$`":
            raise ShellSyntax(f"'{c}' expansion is not modelled by fake-vzctl")
        buf.append(c)
        i += 1
    raise ShellSyntax("unexpected EOF while looking for matching '\"'")


def _operator(text: str, i: int) -> tuple[str, int]:
    two = text[i:i + 2]
    if two in ("&&", "||", ">>"):
        return two, i + 2
    c = text[i]
    if c in ";>\n":
        return (";" if c == "\n" else c), i + 1
    raise ShellSyntax(f"'{c}' is not modelled by fake-vzctl (only ; && || > >> 2> are)")


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.tokens: list[tuple[str, str]] = []
        self.buf: list[str] = []
        self.quoted = False

    def flush(self) -> None:
        if self.buf or self.quoted:
            self.tokens.append(("word", "".join(self.buf)))
        self.buf.clear()
        self.quoted = False

    def single_quoted(self) -> None:
        end = self.text.find("'", self.i + 1)
        if end < 0:
            raise ShellSyntax("unexpected EOF while looking for matching \"'\"")
        self.buf.append(self.text[self.i + 1:end])
        self.quoted, self.i = True, end + 1

    def operator(self) -> None:
        fd2 = self.text[self.i] == ">" and self.buf == ["2"] and not self.quoted
        if fd2:
            self.buf.clear()
        self.flush()
        op, self.i = _operator(self.text, self.i)
        self.tokens.append(("op", "2" + op if fd2 else op))

    def step(self) -> None:
        c = self.text[self.i]
        if c in " \t":
            self.flush()
            self.i += 1
        elif c == "#" and not self.buf and not self.quoted:
            end = self.text.find("\n", self.i)
            self.i = len(self.text) if end < 0 else end
        elif c == "'":
            self.single_quoted()
        elif c == '"':
            self.quoted, self.i = True, _double_quoted(self.text, self.i + 1, self.buf)
        elif c == "\\":
            if self.i + 1 < len(self.text) and self.text[self.i + 1] != "\n":
                self.buf.append(self.text[self.i + 1])
            self.i += 2
        elif c in "$`":
            raise ShellSyntax(f"'{c}' expansion is not modelled by fake-vzctl")
        elif c in ";&|><\n()":
            self.operator()
        else:
            self.buf.append(c)
            self.i += 1


def tokenize(text: str) -> list[tuple[str, str]]:
    """``[("word", w) | ("op", o)]`` for ``text``."""
    lexer = _Lexer(text)
    while lexer.i < len(text):
        lexer.step()
    lexer.flush()
    return lexer.tokens


def parse(tokens: list[tuple[str, str]]) -> list[tuple[str | None, Command]]:
    """A list of ``(connector before it, command)``; connectors are ``;``, ``&&``, ``||``."""
    result: list[tuple[str | None, Command]] = []
    current, connector = Command(), None
    index = 0
    while index < len(tokens):
        kind, value = tokens[index]
        index += 1
        if kind == "word":
            current.words.append(value)
        elif value in _OPS:
            if not current.words:
                if value == ";" and not result and not current.redirects:
                    continue
                raise ShellSyntax(f"syntax error near unexpected token `{value}'")
            result.append((connector, current))
            current, connector = Command(), value
        else:
            if index >= len(tokens) or tokens[index][0] != "word":
                raise ShellSyntax("syntax error near unexpected token `newline'")
            current.redirects.append((value, tokens[index][1]))
            index += 1
    if current.words:
        result.append((connector, current))
    elif connector in ("&&", "||"):
        raise ShellSyntax("syntax error: unexpected end of file")
    return result


def _open_redirects(ctx: Context, command: Command) -> tuple[TextIO, TextIO, list[TextIO]]:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    opened: list[TextIO] = []
    for op, target in command.redirects:
        try:
            host = resolve(ctx.root, target, cwd=ctx.cwd).host
            fh = open(host, "a" if op.endswith(">>") else "w", encoding="utf-8")  # noqa: SIM115 - closed by caller
        except (OSError, ChrootError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ShellSyntax(f"{target}: {reason}") from None
        opened.append(fh)
        if op.startswith("2"):
            err = fh
        else:
            out = fh
    return out, err, opened


def _run_one(ctx: Context, command: Command) -> int:
    name, args = command.words[0], command.words[1:]
    handler = COMMANDS.get(name)
    try:
        out, err, opened = _open_redirects(ctx, command)
    except ShellSyntax as exc:
        sys.stderr.write(f"bash: line 1: {exc}\n")
        return 1
    try:
        if handler is None:
            err.write(f"bash: line 1: {name}: command not found\n")
            return 127
        return handler(ctx, args, out, err)
    finally:
        for fh in opened:
            fh.close()


def run(ctx: Context, script: str) -> int:
    """Run ``script``; returns the exit status bash would (2 for syntax it does not model)."""
    try:
        sequence = parse(tokenize(script))
    except ShellSyntax as exc:
        sys.stderr.write(f"bash: -c: line 1: {exc}\n")
        return 2
    status = 0
    try:
        for connector, command in sequence:
            if (connector == "&&" and status != 0) or (connector == "||" and status == 0):
                continue
            status = _run_one(ctx, command)
    except ExitScript as exc:
        return exc.status
    return status

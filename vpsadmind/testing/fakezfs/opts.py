"""GNU-getopt style option parsing (options may follow operands, as zfs-fuse's glibc getopt allows)."""

from __future__ import annotations

from vpsadmind.testing.fakezfs.errors import UsageError

__all__ = ["getopt", "Opts"]

Opts = list[tuple[str, str]]


def getopt(args: list[str], spec: str, command: str, *, program: str = "zfs",
           missing: str | None = None) -> tuple[Opts, list[str]]:
    """Split ``args`` into options and operands. ``spec`` is getopt's: letters, ':' after those taking a value.

    ``missing`` replaces the "missing argument for 'x' option" message (zfs create says "missing size argument").
    """
    opts: Opts = []
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            letter = arg[j]
            pos = spec.find(letter)
            if pos < 0 or letter == ":":
                raise UsageError(f"invalid option '{letter}'", command, program=program)
            if pos + 1 < len(spec) and spec[pos + 1] == ":":
                value = arg[j + 1:]
                if not value:
                    if i >= len(args):
                        raise UsageError(missing or f"missing argument for '{letter}' option", command,
                                         program=program)
                    value = args[i]
                    i += 1
                opts.append((letter, value))
                break
            opts.append((letter, ""))
            j += 1
    return opts, operands

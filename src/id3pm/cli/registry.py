"""The command registry: each module of id3pm.cli registers its commands with `command`
and their arguments with `flags_of`."""

from __future__ import annotations

COMMANDS: dict[str, dict] = {}  # name -> {"run": fn(args), "help": str, "flags": fn(parser)}


def command(name: str, help: str):
    """Register fn(args) as `id3pm NAME`."""

    def register(fn):
        COMMANDS.setdefault(name, {}).update(run=fn, help=help)
        return fn

    return register


def flags_of(name: str):
    """Register fn(parser) as the arguments of `id3pm NAME`."""

    def register(fn):
        COMMANDS.setdefault(name, {})["flags"] = fn
        return fn

    return register

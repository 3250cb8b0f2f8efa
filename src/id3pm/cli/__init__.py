"""The `id3pm` command. Each subcommand parses its flags and calls the package; the
commands live in the modules of this package, grouped by what they are for."""

from __future__ import annotations

import argparse
import sys

from id3pm.cli import adapt, controls, data, evaluate, generate, serve  # noqa: F401  (they register their commands)
from id3pm.cli.registry import COMMANDS
from id3pm.files import DiskFullError, is_disk_full

ORDER = ["prepare", "augment", "merge", "protect", "reencode", "train", "adapt", "invert", "sample", "sweep", "interpolate", "directions", "edit", "evaluate", "yardstick", "serve"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Lists each flag's default, except where there is none to show (None, False) or
    where the help text already says it in words ("default: the shipped model"):
    argparse's own formatter would print both."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from id3pm import __version__

    parser = argparse.ArgumentParser(prog="id3pm", description="Invert black-box face recognition models via diffusion.")
    parser.add_argument("--version", action="version", version=f"id3pm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ORDER:
        spec = COMMANDS[name]
        p = sub.add_parser(name, help=spec["help"], description=spec["help"],
                           formatter_class=DefaultsHelpFormatter)
        spec["flags"](p)
        p.set_defaults(func=spec["run"])
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, DiskFullError) as e:
        print(f"id3pm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # any other write that met a full disk (a log line, tensorboard)
        if not is_disk_full(e):
            raise
        print(f"id3pm {args.command}: error: no space left on device ({e}); rerun with space to continue",
              file=sys.stderr)
        return 2

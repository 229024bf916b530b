"""The ``ssast`` command: one console script, one subcommand per job."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .checkpoint import CheckpointError
from .sources import SourceError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssast", description=__doc__.strip() if __doc__ else None)
    # The deepspeed launcher passes --local_rank before the subcommand; the rank is read from
    # the environment (LOCAL_RANK) instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Subcommands contributed by the modules of ssast.commands, in name order.
    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, SourceError, FileNotFoundError, ValueError) as e:
        print(f"ssast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

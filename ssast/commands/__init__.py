"""Subcommands of the ``ssast`` console script.

Each module here defines ``register(subparsers)``, which adds its subcommand(s) with a
``func(args) -> int`` default; ``ssast.cli`` finds the modules by name.
"""

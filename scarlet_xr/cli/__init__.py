"""Command-line interface: ``scarlet-xr demo|fit|survey``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(prog="scarlet-xr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import _demo, _fit, _survey

    for mod in (_demo, _fit, _survey):
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``scarlet-xr`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, TypeError, MemoryError) as err:
        print(f"scarlet-xr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""face-organizer COMMAND …: one entry point over the stage scripts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from .. import __version__
from . import common

COMMANDS = {
    "embed": ("embed", "compute embeddings (scripts/generate_embeddings.py)"),
    "embed-all-gpus": ("multigpu", "one embedding worker per GPU (scripts/embed_all_gpus.py)"),
    "info": ("info", "what embeddings files hold, how far their runs got (scripts/embeddings_info.py)"),
    "cluster": ("cluster", "person folders (scripts/cluster_faces.py)"),
    "search": ("search", "every image of one person (scripts/search_faces.py)"),
    "undo-move": ("undo", "put the images of a cluster --link-mode move back (scripts/undo_move.py)"),
    "gender": ("gender", "keep one gender (scripts/gender_filter.py)"),
    "backends": ("backends", "compare face detectors (scripts/benchmark_backends.py)"),
    "diagnose": ("diagnostic", "check the GPU stack (scripts/diagnostic_test.py)"),
}


def usage() -> str:
    lines = ["usage: face-organizer COMMAND [options]   (face-organizer COMMAND --help for each)",
             "       face-organizer --version", "", "commands:"]
    lines += [f"  {name:<16}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"face-organizer {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"Error: unknown command {args[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module = import_module(f"face_organizer.cli.{COMMANDS[args[0]][0]}")
    stage: Callable[[Sequence[str] | None], int] = module.main
    with common.invoked_as(f"face-organizer {args[0]}"):
        return common.run(stage, args[1:])


def cli() -> None:
    sys.exit(main())

"""face-organizer COMMAND …: one entry point over the stage scripts."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from .. import __version__
from . import common

COMMANDS = {  # command: (module under cli/, its script, what it does)
    "embed": ("embed", "generate_embeddings.py", "compute embeddings"),
    "embed-all-gpus": ("multigpu", "embed_all_gpus.py", "one embedding worker per GPU"),
    "info": ("info", "embeddings_info.py", "what embeddings files hold, how far their runs got"),
    "rebase": ("rebase", "rebase_embeddings.py", "an embeddings file's image paths under a new folder"),
    "cluster": ("cluster", "cluster_faces.py", "person folders"),
    "search": ("search", "search_faces.py", "every image of one person"),
    "undo-move": ("undo", "undo_move.py", "put the images of a cluster --link-mode move back"),
    "gender": ("gender", "gender_filter.py", "keep one gender"),
    "backends": ("backends", "benchmark_backends.py", "compare face detectors"),
    "diagnose": ("diagnostic", "diagnostic_test.py", "check the GPU stack"),
}


def usage() -> str:
    lines = ["usage: face-organizer COMMAND [options]   (face-organizer COMMAND --help for each)",
             "       face-organizer --version", "", "commands:"]
    lines += [f"  {name:<16}{text} (scripts/{script})" for name, (_, script, text) in COMMANDS.items()]
    return "\n".join(lines)


def _meant(word: str) -> str | None:
    """The command ``word`` was likely meant as: the one a script name stands for (``cluster_faces.py``,
    ``generate_embeddings``), else the nearest in spelling (``clustr``)."""
    by_script = {script.removesuffix(".py"): name for name, (_, script, _) in COMMANDS.items()}
    stem = os.path.basename(word).removesuffix(".py")
    if stem in by_script:
        return by_script[stem]
    close = difflib.get_close_matches(word.lower(), COMMANDS, n=1, cutoff=0.6)
    return close[0] if close else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"face-organizer {__version__}")
        return 0
    if args[0] not in COMMANDS:
        meant = _meant(args[0])
        print(f"Error: unknown command {args[0]!r}{f' (did you mean {meant!r}?)' if meant else ''}\n{usage()}",
              file=sys.stderr)
        return 2
    module = import_module(f"face_organizer.cli.{COMMANDS[args[0]][0]}")
    stage: Callable[[Sequence[str] | None], int] = module.main
    with common.invoked_as(f"face-organizer {args[0]}",
                           {script: f"face-organizer {name}" for name, (_, script, _) in COMMANDS.items()}):
        return common.run(stage, args[1:])


def cli() -> None:
    sys.exit(main())

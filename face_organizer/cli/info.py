"""embeddings_info: what embeddings files hold, and how far the runs writing them have got."""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Sequence

from ..embfile import PARTS_SUFFIX, expand_unfinished
from ..embinfo import describe, total_lines
from ..errors import FaceOrganizerError, SetupError
from . import common

EXAMPLES = """\
  python scripts/embeddings_info.py /workspace/embeddings_gpu*.pkl
  # while one process per GPU is still running: which are done, which were interrupted
  python scripts/embeddings_info.py /workspace/embeddings_gpu0.pkl --json
  python scripts/embeddings_info.py /workspace/embeddings    # every embeddings file in a folder
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("embeddings_info.py", "Describe embeddings files: model, inputs, images and faces, skipped "
                      "files by reason, and whether the run that writes each one finished, was interrupted "
                      "(checkpoint parts beside it) or is running now. Reads only; safe during a run.", EXAMPLES)
    p.add_argument("files", nargs="+", metavar="FILE.pkl", type=common.path,
                   help="embeddings files (as given to --output); a folder: those in it")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout instead of text")
    common.add_logging_args(p)
    args = p.parse_intermixed_args(argv)  # files before, among or after the options
    common.setup_logging(args.verbose, args.quiet, args.log)
    infos, code = [], 0
    for name in _files(args.files):  # as ls does: one that cannot be described does not hide the others
        try:
            if os.path.isdir(name):
                raise SetupError(f"{name}: a folder without embeddings files (*.pkl) in it")
            infos.append(describe(name))
        except FaceOrganizerError as err:
            print(f"Error: {err}", file=sys.stderr)
            code = max(code, err.exit_code)
    if args.json:
        json.dump([i.as_dict() for i in infos], sys.stdout, indent=2)
        print()
    elif infos:
        print("\n".join(line for i in infos for line in i.lines()))
        if len(infos) > 1:
            print("\n".join(total_lines(infos)))
    return code


def _files(names: Sequence[str]) -> list[str]:
    """The files ``names`` give: a folder (the launcher's ``--output-dir``) stands for the embeddings
    files in it, also those whose runs have written only checkpoints so far; patterns the shell left
    as they were are matched against checkpoints too (``expand_unfinished``). A file given twice
    (named, and in a folder named too) is given once, where it is named first."""
    out: list[str] = []
    for name in names:
        if name.rstrip(os.sep).endswith(PARTS_SUFFIX) and os.path.isdir(name):  # an unfinished file's checkpoints
            out.append(name.rstrip(os.sep)[:-len(PARTS_SUFFIX)])
            continue
        if os.path.isdir(name):
            pattern = os.path.join(glob.escape(name), "*.pkl")
            out += [f for f in expand_unfinished([pattern]) if f != pattern] or [name]
        else:
            out += expand_unfinished([name])
    once: dict[str, str] = {}
    for f in out:
        once.setdefault(os.path.realpath(f), f)
    return list(once.values())


def cli() -> None:
    sys.exit(common.run(main))

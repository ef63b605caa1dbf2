"""undo_move: the images of a cluster_faces --link-mode move, back where they were embedded."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from ..errors import SetupError
from ..fsutil import exclusive, missing_path_hint
from ..undo import undo_move
from . import common

EXAMPLES = """\
  python scripts/undo_move.py /workspace/clustered_faces
  python scripts/undo_move.py /workspace/clustered_faces --dry-run   # what it would put back
  # moved in the container, undone on the host, where /workspace is /srv/faces:
  python scripts/undo_move.py /srv/faces/clustered_faces --from /workspace --to /srv/faces
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("undo_move.py", "Put the images that cluster_faces --link-mode move took into OUTPUT back "
                      "where they were embedded (its clusters.csv says where). Nothing is overwritten: an image "
                      "whose path holds a different file now, or whose folder is gone (moved or deleted since), stays "
                      "in OUTPUT and is named, as is an image where the move put none (dropped there by hand); --from "
                      "and --to put them back into a tree moved since. Interrupted, run it again. clusters.csv, "
                      "summary.json and the previews stay in OUTPUT.", EXAMPLES)
    p.add_argument("output", metavar="OUTPUT", type=common.path,
                   help="the --output folder of a cluster_faces --link-mode move")
    p.add_argument("--dry-run", action="store_true", help="move nothing; print what would happen")
    p.add_argument("--from", dest="old", metavar="DIR", type=common.path,
                   help="with --to: the folders the images were embedded in lie under DIR no longer (moved to "
                   "another disk, or mounted elsewhere) ...")
    p.add_argument("--to", dest="new", metavar="DIR", type=common.path,
                   help="... but under this one: put them back there")
    common.add_logging_args(p)
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    if (args.old is None) != (args.new is None):
        raise SetupError("--from and --to go together: the folder the images were embedded under, and where it is now")
    if not os.path.isdir(args.output):
        raise SetupError(f"{args.output} is not a folder: name the --output folder of a cluster_faces --link-mode move"
                         f"{missing_path_hint(args.output) if not os.path.lexists(args.output) else ''}")
    with contextlib.nullcontext() if args.dry_run else exclusive(args.output, common.OTHER_RUN):
        report = undo_move(args.output, dry_run=args.dry_run, progress=not args.quiet,
                           rewrite=None if args.old is None else (args.old, args.new))
    print("\n".join(report.lines()))
    return 1 if report.left else 0


def cli() -> None:
    sys.exit(common.run(main))

"""rebase_embeddings: an embeddings file's image paths under a new folder, without embedding again."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import embfile
from ..errors import SetupError
from ..fsutil import exclusive, lock_holder
from ..rebase import Rebased, done_before, folder_prefix, rebase
from . import common

EXAMPLES = """\
  # embedded in the container under /workspace, clustered on the host where it is /srv/faces:
  python scripts/rebase_embeddings.py /srv/faces/embeddings_gpu0.pkl --from /workspace --to /srv/faces \\
      --output /srv/faces/embeddings_gpu0_host.pkl
  # the collection moved to another disk; the same file, rewritten in place (undone by the reverse):
  python scripts/rebase_embeddings.py emb.pkl --from /mnt/old_disk/faces --to /mnt/nas/faces --in-place
  # every GPU's file at once (each is checked before any is written):
  python scripts/rebase_embeddings.py /srv/faces/embeddings_gpu*.pkl --from /workspace --to /srv/faces --in-place
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("rebase_embeddings.py", "Rewrite the image paths an embeddings file holds, from one folder to "
                      "another, when the images moved or are mounted elsewhere (embedded in the container, sorted on "
                      "the host): every stage then finds them without embedding them again. Paths outside --from "
                      "stay as they are; the embeddings are untouched.", EXAMPLES)
    p.add_argument("embeddings", metavar="FILE", nargs="+",
                   help="embeddings file written by generate_embeddings.py (several: one per GPU, with --in-place)")
    p.add_argument("--from", dest="old", metavar="DIR", required=True,
                   help="the folder the paths start with now (as embedded)")
    p.add_argument("--to", dest="new", metavar="DIR", required=True, help="the folder they start with from now on")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="FILE", help="write the rewritten file here (a new file; one FILE only)")
    where.add_argument("--in-place", action="store_true", help="replace each FILE itself (atomically)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; print what would change")
    common.add_logging_args(p)
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    sources = list(dict.fromkeys(os.path.abspath(f) for f in args.embeddings))
    if args.output is not None and len(sources) > 1:
        raise SetupError(f"--output names one new file, for one FILE ({len(sources)} given): use --in-place to "
                         "rewrite each of them")
    outputs = sources if args.in_place else [os.path.abspath(args.output)]
    if not args.in_place and os.path.lexists(outputs[0]):
        raise SetupError(f"--output {outputs[0]} exists; name a new file, or use --in-place to replace {sources[0]}")
    # Every file is read and rewritten before any is written: one refused leaves them all as they were.
    done = [_rebased(source, args.old, args.new, named=len(sources) > 1) for source in sources]
    for source, output, rebased in zip(sources, outputs, done):
        if isinstance(rebased, str):
            print(f"{source}: rebased from {folder_prefix(args.old)} to {folder_prefix(args.new)} already ({rebased}); "
                  "left as it was")
            continue
        shown = "(dry run: nothing written)" if args.dry_run else output
        if not args.dry_run:
            with exclusive(output, common.OTHER_RUN):
                embfile.save(output, rebased.file)
        last = rebased.file.meta["rebased"][-1]
        print("\n".join(rebased.lines(last["from"], last["to"], shown)))
    return 0


def _rebased(source: str, old: str, new: str, *, named: bool) -> Rebased | str:
    """``source`` rebased from ``old`` to ``new``; when that was done before (the same command again),
    when it was. ``named``: errors begin with the file's path (one of several)."""
    try:
        ef = _readable(source)
        return done_before(ef, old, new) or rebase(ef, old, new)
    except SetupError as err:
        raise SetupError(f"{source}: {err}" if named and source not in str(err) else str(err)) from None


def _readable(source: str) -> embfile.EmbeddingsFile:
    """The embeddings file ``source``, refused while a run is still adding to it."""
    writer = lock_holder(source)
    if writer is not None:
        raise SetupError(f"a generate_embeddings run (pid {writer}) is writing {source}: let it finish first, or "
                         "its new images would keep the old paths")
    if embfile.parts_dir(source).exists():
        raise SetupError(f"the run writing {source} was interrupted (checkpoints in {embfile.parts_dir(source)}): "
                         "run it again to finish first, or its new images would keep the old paths")
    return embfile.load(source)


def cli() -> None:
    sys.exit(common.run(main))

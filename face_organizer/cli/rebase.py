"""rebase_embeddings: an embeddings file's image paths under a new folder, without embedding again."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import embfile
from ..errors import SetupError
from ..fsutil import exclusive, lock_holder
from ..rebase import rebase
from . import common

EXAMPLES = """\
  # embedded in the container under /workspace, clustered on the host where it is /srv/faces:
  python scripts/rebase_embeddings.py /srv/faces/embeddings_gpu0.pkl --from /workspace --to /srv/faces \\
      --output /srv/faces/embeddings_gpu0_host.pkl
  # the collection moved to another disk; the same file, rewritten in place (undone by the reverse):
  python scripts/rebase_embeddings.py emb.pkl --from /mnt/old_disk/faces --to /mnt/nas/faces --in-place
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("rebase_embeddings.py", "Rewrite the image paths an embeddings file holds, from one folder to "
                      "another, when the images moved or are mounted elsewhere (embedded in the container, sorted on "
                      "the host): every stage then finds them without embedding them again. Paths outside --from "
                      "stay as they are; the embeddings are untouched.", EXAMPLES)
    p.add_argument("embeddings", metavar="FILE", help="embeddings file written by generate_embeddings.py")
    p.add_argument("--from", dest="old", metavar="DIR", required=True,
                   help="the folder the paths start with now (as embedded)")
    p.add_argument("--to", dest="new", metavar="DIR", required=True, help="the folder they start with from now on")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="FILE", help="write the rewritten file here (a new file)")
    where.add_argument("--in-place", action="store_true", help="replace FILE itself (atomically)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; print what would change")
    common.add_logging_args(p)
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    source = os.path.abspath(args.embeddings)
    output = source if args.in_place else os.path.abspath(args.output)
    if not args.in_place and os.path.lexists(output):
        raise SetupError(f"--output {output} exists; name a new file, or use --in-place to replace {source}")
    writer = lock_holder(source)
    if writer is not None:
        raise SetupError(f"a generate_embeddings run (pid {writer}) is writing {source}: let it finish first, or "
                         "its new images would keep the old paths")
    if embfile.parts_dir(source).exists():
        raise SetupError(f"the run writing {source} was interrupted (checkpoints in {embfile.parts_dir(source)}): "
                         "run it again to finish first, or its new images would keep the old paths")
    ef = embfile.load(source)
    done = rebase(ef, args.old, args.new)
    shown = "(dry run: nothing written)" if args.dry_run else output
    if not args.dry_run:
        with exclusive(output, common.OTHER_RUN):
            embfile.save(output, done.file)
    last = done.file.meta["rebased"][-1]
    print("\n".join(done.lines(last["from"], last["to"], shown)))
    return 0


def cli() -> None:
    sys.exit(common.run(main))

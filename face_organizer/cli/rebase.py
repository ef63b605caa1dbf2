"""rebase_embeddings: an embeddings file's image paths under a new folder, without embedding again."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import embfile
from ..embed_run import gathered
from ..errors import SetupError
from ..fsutil import exclusive, lock_holder
from ..progress import count
from ..multigpu import file_list_of, read_file_list, write_file_list
from ..rebase import Rebased, done_before, folder_prefix, moved, rebase, under
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
    p.add_argument("embeddings", metavar="FILE", nargs="+", type=common.path,
                   help="embeddings file written by generate_embeddings.py (several: one per GPU, with --in-place)")
    p.add_argument("--from", dest="old", metavar="DIR", required=True, type=common.path,
                   help="the folder the paths start with now (as embedded)")
    p.add_argument("--to", dest="new", metavar="DIR", required=True, type=common.path,
                   help="the folder they start with from now on")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="FILE", type=common.path,
                       help="write the rewritten file here (a new file; one FILE only)")
    where.add_argument("--in-place", action="store_true", help="replace each FILE itself (atomically)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; print what would change")
    common.add_logging_args(p)
    args = p.parse_intermixed_args(argv)  # files before, among or after the options
    common.setup_logging(args.verbose, args.quiet, args.log)
    sources = list(dict.fromkeys(os.path.abspath(f) for f in embfile.expand_unfinished(args.embeddings)))
    if args.output is not None and len(sources) > 1:
        raise SetupError(f"--output names one new file, for one FILE ({len(sources)} given): use --in-place to "
                         "rewrite each of them")
    outputs = sources if args.in_place else [common.file_output(args.output,
                                                                os.path.basename(sources[0]))]
    if not args.in_place and os.path.lexists(outputs[0]):
        raise SetupError(f"--output {outputs[0]} exists; name a new file, or use --in-place to replace {sources[0]}")
    # Every file is read and rewritten before any is written: one refused leaves them all as they were.
    done = [_rebased(source, args.old, args.new, named=len(sources) > 1) for source in sources]
    lists = [_file_list(source, output, args.old, args.new) for source, output in zip(sources, outputs)]
    for source, output, (rebased, parts), listed in zip(sources, outputs, done, lists):
        if listed is not None:  # first: a file rebased before the list (a run stopped between) gets it now
            if not args.dry_run:
                write_file_list(*listed)
            print(f"{source}: its file list (embed_all_gpus.py) rewritten too: {listed[0]}"
                  + (" (dry run: nothing written)" if args.dry_run else ""))
        if isinstance(rebased, str):
            print(f"{source}: {rebased}")
            continue
        shown = "(dry run: nothing written)" if args.dry_run else output
        if not args.dry_run:
            with exclusive(output, common.OTHER_RUN):
                embfile.save(output, rebased.file)
                if parts is not None and output == source:
                    shutil.rmtree(embfile.parts_dir(source), ignore_errors=True)  # now in the file itself
        last = rebased.file.meta["rebased"][-1]
        print("\n".join(rebased.lines(last["from"], last["to"], shown)))
        if parts is not None:
            print(f"its run was interrupted: what its {count(parts, 'checkpoint part')} held is in the rewritten file "
                  "too (generate_embeddings.py over the folders at their new place embeds the images it had left)")
    return 0


def _rebased(source: str, old: str, new: str, *, named: bool) -> tuple[Rebased | str, int | None]:
    """(``source`` rebased from ``old`` to ``new``, or why it is left as it is: done before by the same
    command, or an interrupted run that saved nothing; the checkpoint parts of an interrupted run
    taken in, None where it was not interrupted). ``named``: errors begin with the file's path (one
    of several)."""
    try:
        ef, parts = _readable(source)
        if ef is None:
            return ("its run was interrupted before it saved anything: nothing to rebase (generate_embeddings.py "
                    "over the folders at their new place starts it again)"), None
        if (when := done_before(ef, old, new)) is not None:
            return f"rebased from {folder_prefix(old)} to {folder_prefix(new)} already ({when}); left as it was", parts
        return rebase(ef, old, new), parts
    except SetupError as err:
        raise SetupError(f"{source}: {err}" if named and source not in str(err) else str(err)) from None


def _file_list(source: str, output: str, old: str, new: str) -> tuple[Path, list[str]] | None:
    """Where the rewritten file list of ``source``'s GPU worker goes, and what it names; None where
    there is no such list, or it names nothing under ``old``. The launcher reads from it which
    GPU's file holds each image: left with the old paths, a re-run at the new place would spread
    the images anew, most to a GPU whose file does not hold them, to be embedded again."""
    listed = file_list_of(Path(source))
    if not listed.is_file():
        return None
    paths = read_file_list(str(listed))
    old, new = folder_prefix(old), folder_prefix(new)
    if not any(under(p, old) for p in paths):
        return None
    target = file_list_of(Path(output))
    if target != listed and target.exists():
        raise SetupError(f"{target} exists: the rewritten file's list of files would replace it; name another --output")
    return target, [moved(p, old, new) for p in paths]


def _readable(source: str) -> tuple[embfile.EmbeddingsFile | None, int | None]:
    """The embeddings file ``source`` with, where its run was interrupted, what its checkpoint parts
    hold (the run cannot go on where its images are no more; None where they hold nothing
    readable), and how many parts that was (None: not interrupted); refused while a run is adding
    to it."""
    writer = lock_holder(source)
    if writer is not None:
        raise SetupError(f"a generate_embeddings run (pid {writer}) is writing {source}: let it finish first, or "
                         "its new images would keep the old paths")
    if not embfile.parts_dir(source).exists():
        return embfile.load(source), None
    return gathered(Path(source)), len(embfile.checkpoint_parts(source))


def cli() -> None:
    sys.exit(common.run(main))

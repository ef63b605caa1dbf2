"""embed_all_gpus: one generate_embeddings worker per GPU, one embeddings file per GPU."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..embed_plan import HEADER, plan_run
from ..embed_run import RunSummary
from ..errors import SetupError
from ..modelpack import resolve_pack
from ..multigpu import FRAME_BLOCK, Dropped, Worker, find_dropped, parse_gpus, plan_workers, run_workers
from ..progress import count
from . import common
from . import embed as embed_cli

log = logging.getLogger(__name__)

EXAMPLES = """\
  python scripts/embed_all_gpus.py --input /workspace/input/2006 /workspace/input/2007 \\
      --output-dir /workspace --gpus all --workers 4
  # then, as before:
  python scripts/cluster_faces.py --embeddings /workspace/embeddings_gpu*.pkl --output /workspace/clustered_faces
  # a new year folder since? what each GPU would embed, before anything starts:
  python scripts/embed_all_gpus.py --input /workspace/input/2006 /workspace/input/2007 /workspace/input/2008 \\
      --output-dir /workspace --gpus all --dry-run
"""


def file_prefix(value: str) -> str:
    """``--prefix``: the start of the files' names, which ``--output-dir`` holds (a folder in it would put them
    elsewhere: ``../x`` outside it)."""
    if not value or "/" in value or os.sep in value:
        raise argparse.ArgumentTypeError(f"the start of a file name, without '/' (the folder is --output-dir): "
                                         f"got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = common.parser("embed_all_gpus.py", "Embed images on several GPUs at once: files are balanced over the GPUs, "
                      "one worker process per GPU writes OUTPUT_DIR/embeddings_gpu<ID>.pkl. Options of "
                      "generate_embeddings.py (--workers, --batch-size, --model, --device, --mode, …) are passed "
                      "to every worker.", EXAMPLES,
                      allow_abbrev=False)  # generate_embeddings' --output is not short for --output-dir
    p.add_argument("--input", nargs="+", required=True, metavar="DIR", type=common.path,
                   help="folders (searched recursively) or image files, shared out over the GPUs")
    p.add_argument("--output-dir", required=True, metavar="DIR", type=common.path,
                   help="folder for the embeddings files, one per GPU (PREFIX<ID>.pkl)")
    p.add_argument("--gpus", default="all", help="'all' (nvidia-smi) or ids such as 0,1,3 (default: all)")
    p.add_argument("--prefix", default="embeddings_gpu", type=file_prefix,
                   help="file name prefix (default: embeddings_gpu)")
    common.add_logging_args(p)
    return p


def check_passthrough(parser: argparse.ArgumentParser, passthrough: Sequence[str]) -> argparse.Namespace:
    """Refuse, before any worker starts, options that generate_embeddings would refuse in every
    worker, and those the launcher sets for each worker itself (also when abbreviated); return
    the options every worker will run with."""
    stage = embed_cli.build_parser()
    stage.prog = parser.prog  # its errors name the command that was typed
    own = ["--input", "<launcher>", "--output", "<launcher>"]
    chosen, unknown = stage.parse_known_args([*own, *passthrough])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if (chosen.input != own[1:2] or chosen.output != own[3] or chosen.file_list or chosen.status_file
            or chosen.launcher_pid is not None):
        parser.error("--input, --output and --file-list are set for each worker by embed_all_gpus: give the "
                     "folders to its --input, and the embeddings files' folder and name to --output-dir and --prefix")
    embed_cli.embed_options(chosen)  # options of the other mode: SetupError
    return chosen


def added_up(summaries: Sequence[dict], workers: int, elapsed: float, mode: str = "crops") -> list[str]:
    """The summary over the workers that finished: their runs' counts added up, and the images
    per second of them all together."""
    total = RunSummary(output="", device="", mode=mode, elapsed=elapsed)
    for counts in summaries:
        total.add(counts)
    which = (f"the {len(summaries)} of {workers} workers that finished" if len(summaries) < workers
             else f"the {count(workers, 'worker')}")
    return [f"total over {which}:", *(f"  {line}" for line in total.count_lines()),
            f"  elapsed: {elapsed:.1f} s" + (f", {total.rate:.1f} images/s" if total.processed else "")]


def dry_run_lines(workers: Sequence[Worker], dropped: Sequence[Dropped], recogniser: str, chosen: argparse.Namespace,
                  name: Callable[[int], str]) -> list[str]:
    """``--dry-run``: what each worker would embed (``embed_plan.plan_run`` over its files), what the GPUs not given
    keep, and the total; nothing is written, no worker starts."""
    options = embed_cli.embed_options(chosen)
    out = [HEADER]
    total = 0
    for w in workers:
        if not w.files:
            out.append(f"{name(w.gpu)}: no images for it: it would not be started")
            continue
        plan = plan_run(w.paths, w.output, recogniser, options, resume=chosen.resume)
        total += plan.to_embed
        out += [f"{name(w.gpu)}: {count(w.files, 'file')}", *(f"  {line}" for line in plan.lines())]
    out += [d.line(name(d.gpu)) for d in dropped]
    out.append(f"to embed over the {count(sum(1 for w in workers if w.files), 'worker')}: {count(total, 'image')}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    chosen = check_passthrough(parser, passthrough)
    common.setup_logging(args.verbose, args.quiet, args.log)
    args.input = common.shell_patterns(args.input, "--input")
    gpus = parse_gpus(args.gpus)
    # The pack is checked (and a known pack not here yet downloaded) once, before any worker starts:
    # not one error per worker, nor one download per worker into the same folder.
    pack = resolve_pack(chosen.model, common.model_root(chosen.model_root))
    out_dir = Path(args.output_dir).absolute()
    earlier = [out_dir / f"{args.prefix}{gpu}.pkl" for gpu in gpus]
    # As generate_embeddings: folders emptied since an earlier run into these files (their images
    # moved into person folders) leave the files as they are, and a loop over year folders goes on.
    paths = common.find_images(args.input, none_ok=chosen.resume and any(f.is_file() for f in earlier))
    # Repeated frames are found among consecutive files: a shot's frames stay with one worker.
    block = FRAME_BLOCK if chosen.reuse_similar_frames else 0
    # GPUs an earlier run used and this one is not given keep what their files hold.
    dropped = find_dropped(out_dir, args.prefix, gpus, pack.recognizer.name, chosen.mode, paths) if chosen.resume else []
    workers = plan_workers([os.path.abspath(i) for i in args.input], paths, gpus, out_dir, args.prefix, passthrough,
                           block, resume=chosen.resume, elsewhere=set().union(*(d.kept for d in dropped)))
    idle = [w for w in workers if not w.files]  # fewer images than GPUs, or none left
    if not chosen.resume and (kept := [w.output for w in idle if w.output.exists()]):
        raise SetupError(f"--no-resume: {', '.join(map(str, kept))} would be left from an earlier run, with no images "
                         "left for its GPU: remove it, or name fewer --gpus")

    def name(gpu: int) -> str:  # --device cpu: workers on the CPU, numbered as the GPUs would be
        return f"worker {gpu} (CPU)" if chosen.device == "cpu" else f"GPU {gpu}"

    if chosen.dry_run:
        print("\n".join(dry_run_lines(workers, dropped, pack.recognizer.name, chosen, name)))
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in dropped:
        d.settle()
    for w in workers:
        w.write_list()
    busy = [w for w in workers if w.files]

    if not args.quiet:
        for w in busy:
            print(f"{name(w.gpu)}: {count(w.files, 'file')} → {w.output}", file=sys.stderr)
        for d in dropped:
            print(d.line(name(d.gpu)), file=sys.stderr)
    started = time.monotonic()
    if busy:
        run_workers(busy, len(paths), progress=not args.quiet, expect_gpu=chosen.device != "cpu")
    for d in dropped:
        print(d.line(name(d.gpu)))
    for w in workers:
        if not w.files:
            left = "its earlier file is left as it is" if w.output.exists() else "no file written"
            print(f"{name(w.gpu)}: not started, no images for it: {left} ({w.output})")
        else:
            state = "ok" if w.code == 0 else f"FAILED (exit {w.code})"
            if w.device == "cpu" and chosen.device != "cpu":
                state += ", but ON THE CPU (its log says why)"
            print(f"{name(w.gpu)}: {state}: {count(w.files, 'file')} → {w.output} (log: {w.log})")
            for warning in w.warnings():  # in its log only, where a user of the launcher does not look
                log.warning("%s: %s", name(w.gpu), warning)
    failed = [w for w in busy if w.code != 0]
    for w in busy:
        if w.code == 0:
            w.tidy()
    if finished := [w.summary for w in busy if w.code == 0 and w.summary]:
        print("\n".join(added_up(finished, len(busy), time.monotonic() - started, chosen.mode)))
        if kept_away := sum(len(d.kept) for d in dropped if d.writer is None):
            print(f"  beside these, {count(kept_away, 'image')} in the files of GPUs not given (see above)")
    for w in failed:
        last = [line for line in w.log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()][-1:]
        print(f"{name(w.gpu)} said: {last[0] if last else '(nothing)'}")
        print(f"  re-run it alone (it resumes): {w.rerun_line()}")
        if chosen.resume and len(failed) < len(busy):
            print(f"  or leave {w.gpu} out of --gpus and run this command again: the images its file holds stay "
                  "there, the others take the rest")
    if len(busy) > 1 and len(failed) == len(busy):  # a cause they share (the input, the model), not one GPU
        print("every worker failed: mend what they said, then run this command again (each resumes)")
    return 1 if failed else 0


def cli() -> None:
    sys.exit(common.run(main))

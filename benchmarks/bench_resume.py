#!/usr/bin/env python3
"""generate_embeddings re-run over a large finished collection with a few new images: what the
shell loops over year folders do every time they run again.

Makes N image files in year folders (hard links to one real 256x256 face crop, so that N can be
500,000 without 45 GB of disk), a finished embeddings file for them as a complete run would have
written it (the testpack's embedding size, every file's size and modification time and a digest
of its bytes, the unrecognisable-face centre), and --new more files in a new year folder. The old
files' digests are drawn at random, so that the new files, whose bytes are the same crop, are
embedded rather than taken for copies of old ones. Then runs
scripts/generate_embeddings.py as users do, as its own process, reports its wall time and peak
memory, and checks the result: every old row kept unchanged, every new image embedded once, no
checkpoint parts left, and with nothing new the file not written again.

  python benchmarks/bench_resume.py --n 500000 --new 1000
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument  # noqa: E402
from face_organizer import embfile  # noqa: E402
from face_organizer.embed_run import unrecognisable_meta  # noqa: E402
from face_organizer.faces import FaceRows, load_face_models  # noqa: E402
from face_organizer.images import Signature, file_signature  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402

YEARS = 10
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generate_embeddings.py"


def make_links(source: Path, root: Path, n: int, first_year: int, years: int) -> dict[str, Signature]:
    """``n`` image files in ``years`` year folders with the same names in each, and their signatures.

    The files of a folder are hard links to one copy of ``source`` in it (a file takes at most
    65,000 links on ext4)."""
    per_year = -(-n // years)
    made: dict[str, Signature] = {}
    for i in range(n):
        folder = root / str(first_year + i // per_year)
        if i % per_year == 0:
            folder.mkdir(parents=True)
            original = folder.parent / f".{folder.name}.png"  # hidden: not an input image
            shutil.copyfile(source, original)
            found = file_signature(str(original))
            assert found is not None, original
            signature = found
        path = folder / f"frame_{i % per_year:06d}.png"
        path.hardlink_to(original)
        made[str(path)] = signature
    return dict(sorted(made.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="images embedded before (default: 100,000)")
    parser.add_argument("--new", type=int, default=1_000, help="images added since (default: 1,000)")
    parser.add_argument("--dir", default=None, help="where the images and the file go (default: a temporary folder)")
    add_shared_argument(parser)
    args = parser.parse_args()
    pack = resolve_pack(str(Path(args.shared) / "models" / "testpack"), download=False)
    photo = next(iter(sorted((Path(args.shared) / "datasets" / "lfw_dev").rglob("*.jpg"))))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        source = root / "crop.png"
        cv2.imwrite(str(source), cv2.resize(cv2.imread(str(photo)), (256, 256)))
        started = time.perf_counter()
        signatures = make_links(source, root / "input", args.n, 2008, YEARS)
        old = list(signatures)
        models = load_face_models(pack, "cpu")
        dim = models.dim
        rng = np.random.default_rng(0)
        x = rng.standard_normal((len(old), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        n = len(old)
        rows = FaceRows(old, x, np.ones(n, bool), np.ones(n, np.float32), np.zeros((n, 4), np.float32), np.zeros(n, np.int32))
        meta = embfile.make_meta(pack_name=pack.name, model_files=pack.file_names(), dim=dim, device="cpu",
                                 inputs=[str(root / "input")], mode="crops", complete=True,
                                 **unrecognisable_meta(models))
        output = root / "embeddings.pkl"
        digests = dict(zip(old, (rng.bytes(16) for _ in old)))  # as if each old file held other bytes
        embfile.save(output, embfile.EmbeddingsFile(rows, [], [], meta, signatures=signatures, digests=digests))
        new = list(make_links(source, root / "input", args.new, 2008 + YEARS, 1))
        print(f"{args.n:,} images embedded before and {args.new:,} new ones in {YEARS + (args.new > 0)} year folders, made in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        written = output.stat().st_mtime_ns
        command = [sys.executable, str(SCRIPT), "--input", str(root / "input"), "--output", str(output),
                   "--model", str(pack.folder), "--device", "cpu", "-q"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        print(f"generate_embeddings re-run: {args.n:,} done + {args.new:,} new: {seconds:.1f} s, peak memory {peak:.2f} GB")
        ef = embfile.load(output)
        position = {p: i for i, p in enumerate(ef.rows.paths)}
        if sorted(position) != sorted(old + new) or len(ef.rows) != len(old) + len(new):
            raise SystemExit(f"the file holds {len(ef.rows):,} rows, not one per image ({len(old) + len(new):,})")
        kept = ef.rows.embeddings[[position[p] for p in old]]
        if not np.array_equal(kept, x):
            raise SystemExit("rows of images embedded before changed")
        if not ef.meta.get("complete") or embfile.parts_dir(output).exists():
            raise SystemExit("the run did not finish its file")
        if not new:
            if output.stat().st_mtime_ns != written:
                raise SystemExit("nothing was new, yet the file was written again")
            print(f"{len(ef.rows):,} rows unchanged; the file was left as it was")
            return 0
        fresh = ef.rows.embeddings[[position[p] for p in new]]
        print(f"{len(ef.rows):,} rows: the {len(old):,} old ones unchanged, {len(new):,} new ones embedded "
              f"({int(ef.rows.detected[[position[p] for p in new]].sum()):,} with a face found; all alike, as their "
              f"files are: {bool(np.allclose(fresh, fresh[0], atol=1e-5))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

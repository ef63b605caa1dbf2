#!/usr/bin/env python3
"""Face search accuracy on LFW dev and query speed on synthetic embeddings.

Accuracy: every LFW dev identity with >= 10 photos; its first photo is the one reference
(embedded from the photo as search_faces.py does), the others are what should be found
among all 2,805 faces. Mean precision and recall over identities, with and without query
expansion (the reference image itself is not counted).
References of someone else: for every LFW dev identity with >= 6 photos, draws of 2-5 of its
faces as references, alone and with one face of another identity added (--draws of each): how
often a genuine reference is left out as likely someone else, how often the references are only
warned about, and how often the other identity's face is left out (search_faces' rule: references
are alike at search.REFERENCE_Z spreads above the collection's impostor peak; --reference-z to try
another).
Speed: one query against --speed-n synthetic 512-d embeddings, after loading.

  python benchmarks/eval_search.py
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument  # noqa: E402
from face_organizer import embfile  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer.faces import load_face_models  # noqa: E402
from face_organizer.images import discover_images  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402
from face_organizer.search import (REFERENCE_Z, FaceIndex, Reference, alike_sets, embed_reference,  # noqa: E402
                                   search, someone_else)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_argument(parser)
    parser.add_argument("--speed-n", type=int, default=500_000)
    parser.add_argument("--draws", type=int, default=2000, help="draws of references per count (default: 2000)")
    parser.add_argument("--reference-z", type=float, default=REFERENCE_Z,
                        help="impostor spreads above the peak at which references are alike "
                             f"(default: {REFERENCE_Z:g})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    shared = Path(args.shared)
    lfw = shared / "datasets" / "lfw_dev"
    models = load_face_models(resolve_pack(str(shared / "models" / "testpack")), "cpu", 0)
    with tempfile.TemporaryDirectory() as tmp:
        run_embeddings(discover_images([lfw]), Path(tmp) / "lfw.pkl", models, inputs=[str(lfw)], progress=False)
        ef = embfile.load(Path(tmp) / "lfw.pkl")
    with open(lfw / "labels.csv", newline="") as handle:
        identity = {str((lfw / r["path"]).absolute()): r["identity"] for r in csv.DictReader(handle)}
    truth = np.array([identity[p] for p in ef.rows.paths])
    people = sorted(i for i, c in Counter(truth).items() if c >= 10)
    for expand in (False, True):
        precision, recall = [], []
        for person in people:
            rows = np.nonzero(truth == person)[0]
            ref_row = rows[0]
            ref = embed_reference(ef.rows.paths[ref_row], models)
            found = search(ef.rows.embeddings, [ref.embedding], expand=expand)
            hits = found.index[found.index != ref_row]
            tp = int((truth[hits] == person).sum())
            precision.append(tp / max(1, len(hits)))
            recall.append(tp / (len(rows) - 1))
        print(f"LFW dev, {len(people)} identities with >= 10 photos, one reference each, expansion {'on ' if expand else 'off'}: "
              f"mean precision {np.mean(precision):.4f}, mean recall {np.mean(recall):.4f} (threshold {found.threshold:.3f})")
    cut = FaceIndex(ef.rows.embeddings).impostor.cut(args.reference_z)
    someone_else_among_references(ef.rows.embeddings, truth, cut, args.draws)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.speed_n, 512), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    query = x[123] + 0.5 * rng.standard_normal(512).astype(np.float32) / np.sqrt(512)
    start = time.perf_counter()
    index = FaceIndex(x)
    print(f"loading {args.speed_n:,} x 512 embeddings into the FAISS index: {time.perf_counter() - start:.3f} s")
    for expand in (False, True):
        start = time.perf_counter()
        result = search(index, [query], expand=expand)  # includes the data-derived threshold on first use
        print(f"one query, expansion {'on ' if expand else 'off'}: {time.perf_counter() - start:.3f} s "
              f"({len(result.index)} matches, threshold {result.threshold:.3f})")
    return 0


def someone_else_among_references(x: np.ndarray, truth: np.ndarray, threshold: float, draws: int) -> None:
    rng = np.random.default_rng(0)
    people = sorted(i for i, c in Counter(truth).items() if c >= 6)

    def refs(rows: np.ndarray) -> list[Reference]:
        return [Reference(str(i), x[i][None], None) for i in rows]

    for count in (2, 3, 4, 5):
        left_out = warned = caught = 0
        for _ in range(draws):
            person, other = rng.choice(len(people), 2, replace=False)
            rows = rng.choice(np.nonzero(truth == people[person])[0], count, replace=False)
            sets = alike_sets(refs(rows), threshold)
            if len(sets) > 1:
                if someone_else(sets, count) is None:
                    warned += 1
                else:
                    left_out += 1
            intruder = rng.choice(np.nonzero(truth == people[other])[0])
            with_other = refs(np.append(rows, intruder))
            caught += someone_else(alike_sets(with_other, threshold), count + 1) == [count]
        print(f"{count} references of one person ({draws} draws, alike at {threshold:.3f}): a genuine one left out "
              f"in {left_out / draws:.1%}, only warned about in {warned / draws:.1%}; one of another person added: "
              f"it alone left out in {caught / draws:.1%}")


if __name__ == "__main__":
    sys.exit(main())

"""cluster_faces: embeddings files -> person_A/, person_B/, …, outliers/."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from ..cluster_stage import ClusterConfig, cluster_faces, dry_run_lines, load_embeddings
from ..cpus import fit_openmp_threads
from ..fsutil import exclusive
from . import common

EXAMPLES = """\
  python scripts/cluster_faces.py --embeddings /workspace/embeddings_gpu0.pkl /workspace/embeddings_gpu1.pkl \\
      --output /workspace/clustered_faces --clusters 2
  python scripts/cluster_faces.py --embeddings photos.pkl --output people --clusters auto --link-mode symlink
  python scripts/cluster_faces.py --embeddings emb.pkl --output sorted --dry-run
  # images moved into person folders by an earlier --link-mode move, sorted again for three people:
  python scripts/cluster_faces.py --embeddings emb.pkl --output sorted3 --clusters 3 --moved-to sorted
  # next year's faces into the same person_A/, person_B/, … as last year's run:
  python scripts/cluster_faces.py --embeddings /workspace/embeddings_2018.pkl --output /workspace/clustered_2018 \\
      --people-from /workspace/clustered_faces
  # the same, with people new since in folders of their own (person_C/, …), which later years follow too:
  python scripts/cluster_faces.py --embeddings /workspace/embeddings_2019.pkl --output /workspace/clustered_2019 \\
      --people-from /workspace/clustered_2018 --new-people
"""
NOT_GIVEN = -1  # --clusters left out: 2, unless --people-from names the people


def clusters_arg(value: str) -> int | None:
    if value.strip().lower() == "auto":  # as --gender takes any case
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError("use a number of people (1 or more) or 'auto'")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = common.parser("cluster_faces.py", "Group faces by person into person_A/, person_B/, … (largest first) and "
                      "outliers/, with clusters.csv, summary.json and an index.html preview.", EXAMPLES)
    p.add_argument("--embeddings", nargs="+", required=True, metavar="FILE", type=common.path,
                   help="embeddings files (one per GPU is fine)")
    p.add_argument("--output", required=True, metavar="DIR", type=common.path,
                   help="folder for the person folders (new or empty)")
    p.add_argument("--clusters", type=clusters_arg, default=NOT_GIVEN, metavar="K|auto",
                   help="number of people, or 'auto' to find it (default: 2); the summary names a folder that "
                        "does not look like one person, and folders that look like one person split")
    p.add_argument("--people-from", metavar="DIR", type=common.path, default=None,
                   help="instead of clustering, sort each face into the most similar person of an earlier "
                        "cluster_faces output DIR (same folder names; below its cut-off: outliers/)")
    p.add_argument("--new-people", action="store_true",
                   help="with --people-from: groups of alike faces that match none of its people (someone new "
                        "since) get folders of their own after its people's (person_C/, …) instead of outliers/")
    p.add_argument("--min-similarity", type=common.similarity, default=None,
                   help="faces less similar than this to their cluster go to outliers/ (auto: to join a cluster); "
                        "default: derived from the data for the model in use")
    p.add_argument("--link-mode", choices=("copy", "hardlink", "symlink", "move"), default="copy",
                   help="how files reach the folders (default: copy; undo_move.py puts moved images back)")
    common.add_moved_to_arg(p)
    p.add_argument("--dry-run", action="store_true", help="write nothing; print what would happen")
    p.add_argument("--min-cluster-size", type=common.positive, default=None,
                   help="auto: smaller groups go to outliers/ (default: 2, so two faces that are each other's "
                        "most similar make a folder: a person with two photos; 3 leaves them in outliers/)")
    p.add_argument("--neighbours", type=common.graph_neighbours, default=None,
                   help="auto: neighbours per face in the graph (default: 10)")
    p.add_argument("--seed", type=common.seed, default=1234, help="random seed: the same input gives the same folders")
    p.add_argument("--no-extra-groups", dest="extra_groups", action="store_false",
                   help="with a number of people: do not look for further recurring people first (their faces "
                        "are then shared out among the K folders instead of going to outliers/)")
    p.add_argument("--no-second-pass", dest="attach_outliers", action="store_false",
                   help="auto: leave in outliers/ the faces no graph edge reached, even those close to a cluster's "
                        "centre (by default a second pass gives them to it; never with --min-similarity)")
    p.add_argument("--keep-unrecognisable", dest="set_aside_unrecognisable", action="store_false",
                   help="cluster faces too blurred or degraded to recognise like the others (by default they go "
                        "to outliers/ first, when the embeddings file says where the model puts them)")
    p.add_argument("--no-previews", dest="previews", action="store_false", help="skip contact sheets and index.html")
    common.add_logging_args(p)
    return p


def options_without_effect(args: argparse.Namespace) -> str | None:
    """Why options given would change nothing with the method the others choose (None: they all act): those of
    the graph with a number of people or ``--people-from``, and ``--no-extra-groups`` without a number; or
    ``--clusters`` with ``--people-from``, which names the people."""
    if args.new_people and not args.people_from:
        return ("--new-people is for --people-from (people new since an earlier run's); without it, --clusters auto "
                "gives every group of alike faces a folder of its own")
    if args.people_from and args.clusters != NOT_GIVEN:
        return "--people-from sorts faces into the people of an earlier run: leave out --clusters"
    clusters = 2 if args.clusters == NOT_GIVEN else args.clusters
    graph = [name for name, given in (("--neighbours", args.neighbours is not None),
                                      ("--min-cluster-size", args.min_cluster_size is not None),
                                      ("--no-second-pass", not args.attach_outliers)) if given]
    if graph and (args.people_from or clusters is not None):
        named = " and ".join(graph)
        method = "--people-from sorts into an earlier run's people" if args.people_from else \
            f"--clusters {clusters} makes that many folders with k-means"
        return (f"{named} {'is' if len(graph) == 1 else 'are'} for --clusters auto (its graph of alike faces), and "
                f"{method}: leave {'it' if len(graph) == 1 else 'them'} out, or use --clusters auto")
    if not args.extra_groups and (args.people_from or clusters is None):
        return ("--no-extra-groups is for a number of people (--clusters K): "
                + ("--people-from sorts into an earlier run's people" if args.people_from else
                   "--clusters auto gives every group of alike faces a folder of its own") + "; leave it out")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv, options_without_effect)
    if args.clusters == NOT_GIVEN:
        args.clusters = 2  # also with --people-from, whose runs record it so
    args.neighbours = ClusterConfig.neighbours if args.neighbours is None else args.neighbours
    args.min_cluster_size = ClusterConfig.min_cluster_size if args.min_cluster_size is None else args.min_cluster_size
    common.setup_logging(args.verbose, args.quiet, args.log)
    fit_openmp_threads()
    ef = load_embeddings(args.embeddings)
    config = ClusterConfig(clusters=args.clusters, min_similarity=args.min_similarity, link_mode=args.link_mode,
                           dry_run=args.dry_run, neighbours=args.neighbours, min_cluster_size=args.min_cluster_size,
                           seed=args.seed, previews=args.previews, extra_groups=args.extra_groups,
                           set_aside_unrecognisable=args.set_aside_unrecognisable, people_from=args.people_from,
                           new_people=args.new_people,
                           attach_outliers=args.attach_outliers, moved_to=tuple(args.moved_to))
    with contextlib.nullcontext() if args.dry_run else exclusive(args.output, common.OTHER_RUN):
        report = cluster_faces(ef, args.output, config, progress=not args.quiet, sources=args.embeddings)
    print("\n".join(report.lines() + (dry_run_lines(report) if args.dry_run else [])))
    return 0


def cli() -> None:
    sys.exit(common.run(main))

#!/usr/bin/env python3
"""Quick start: make video-style face crops from the sample faces that ship with pip
packages, embed them, and sort them into person folders.

  python scripts/demo.py --output demo_output
Uses the testpack of $FACE_ORGANIZER_SHARED (default ../shared) when present (offline machines),
else the buffalo_l pack (downloaded by insightface on first use). Open demo_output/clustered/index.html after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli import cluster, common, embed  # noqa: E402
from face_organizer.errors import ModelPackError, SetupError  # noqa: E402
from face_organizer.faces import load_face_models  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402
from face_organizer.organize import is_os_clutter  # noqa: E402
from face_organizer.samples import sample_collection  # noqa: E402

SHARED = Path(os.environ.get("FACE_ORGANIZER_SHARED") or Path(__file__).resolve().parents[2] / "shared")
TESTPACK = SHARED.expanduser().resolve() / "models" / "testpack"
# Written first into the demo's folder. Its other names are those of a real workspace (input/, embeddings_gpu0.pkl),
# so only this file tells a folder the demo made, which it may empty, from a user's.
MARKER = ".face-organizer-demo"


def check_own_folder(out: Path) -> None:
    """Refuse a folder the demo did not make (no ``MARKER``) unless it is empty, or holds only the files an
    operating system leaves in a folder it showed (Finder's ``.DS_Store``, Explorer's ``Thumbs.db``, …; not
    folders, which may be a recycle bin): it is emptied before each run."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"--output {out} is a file: name a new folder for the demo")
    held = sorted(name for name in (os.listdir(out) if out.is_dir() else [])
                  if not (is_os_clutter(name) and (out / name).is_file()))
    if held and MARKER not in held:
        raise SetupError(f"--output {out} holds files the demo did not make (such as {held[0]}), and the demo empties "
                         "its folder before each run: name a new folder")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output",
                        help="a new folder, or one an earlier demo made, which is emptied first (default: demo_output)")
    default = str(TESTPACK) if TESTPACK.is_dir() else "buffalo_l"
    parser.add_argument("--model", default=default, help=f"model pack name or folder (default here: {default})")
    args = parser.parse_args(argv)
    common.setup_logging()
    out = Path(args.output).absolute()
    check_own_folder(out)
    if out.exists():
        shutil.rmtree(out)  # the demo's own folder: always start clean
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by scripts/demo.py, which empties this folder on each run\n")
    try:
        pack = resolve_pack(args.model, common.model_root(None))  # as generate_embeddings finds it
    except ModelPackError as err:
        if args.model != "buffalo_l" or TESTPACK.is_dir():
            raise
        raise ModelPackError(f"{err}; offline, the demo runs on the testpack of the shared models instead: "
                             f"set FACE_ORGANIZER_SHARED to the folder that holds models/testpack "
                             f"(not at {SHARED})") from None
    print(f"1/3 making sample face crops with model pack {pack.name} …", file=sys.stderr)
    sample_collection(out / "input", load_face_models(pack, "cpu", 0).detector)
    print("2/3 generate_embeddings …", file=sys.stderr)
    code = embed.main(["--input", str(out / "input" / "2017"), str(out / "input" / "2018"),
                       "--output", str(out / "embeddings_gpu0.pkl"), "--model", args.model, "-q"])
    if code:
        return code
    print("3/3 cluster_faces --clusters auto …", file=sys.stderr)
    code = cluster.main(["--embeddings", str(out / "embeddings_gpu0.pkl"), "--output", str(out / "clustered"),
                         "--clusters", "auto", "-q"])
    print(f"open {out / 'clustered' / 'index.html'} to see who is in which folder", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(common.run(main))

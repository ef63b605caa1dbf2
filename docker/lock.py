#!/usr/bin/env python3
"""Write or check ../constraints.txt: exact pins for the Docker image's Python environment.

The image runs Python 3.10 (Ubuntu 22.04) on manylinux x86_64, so pins are resolved
for that platform with pip's own resolver (``pip install --dry-run --report``), whatever
machine runs this script.

  python docker/lock.py --write   # re-resolve requirements-*.txt into constraints.txt
  python docker/lock.py --check   # resolve again under constraints.txt: must succeed and
                                  # give exactly the pinned versions (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE.parent / "constraints.txt"
REQUIREMENTS = [HERE / "requirements-gpu.txt", HERE / "requirements-deepface.txt"]
PLATFORM = ["--python-version", "3.10", "--implementation", "cp", "--abi", "cp310", "--only-binary=:all:"] + [
    arg for tag in ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                    "manylinux_2_17_x86_64", "manylinux2014_x86_64") for arg in ("--platform", tag)]
# Installed by the Dockerfile with --no-deps; resolving them with deps would pull the CPU
# onnxruntime and GUI opencv-python that must not be in the image.
NO_DEPS = ["insightface", "deepface", "retina-face"]
HEADER = """\
# Exact pins for the Docker image (Python 3.10, manylinux x86_64), written by docker/lock.py --write
# from docker/requirements-*.txt and checked in CI by docker/lock.py --check. GPU-critical pins:
# onnxruntime-gpu < 1.27 (CUDA 12 / cuDNN 9 build; 1.27+ is CUDA 13, without Pascal/Volta code) and
# nvidia-cudnn-cu12 < 9.11 (9.11 dropped Pascal/Maxwell).
"""


def resolve(extra: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--target", str(Path(tmp) / "t"), *PLATFORM, *[a for r in REQUIREMENTS for a in ("-r", str(r))], *extra]
        subprocess.run(cmd, check=True)
        data = json.loads(report.read_text())
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in data["install"]}


def no_deps_pins() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-deps",
                        "--report", str(report), "--target", str(Path(tmp) / "t"), *PLATFORM, *NO_DEPS], check=True)
        return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def read_pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.write:
        pins = {**resolve([]), **no_deps_pins()}
        CONSTRAINTS.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        print(f"wrote {len(pins)} pins to {CONSTRAINTS}")
        return 0
    pins = read_pins()
    resolved = resolve(["-c", str(CONSTRAINTS)])
    resolved.update({k: v for k, v in no_deps_pins().items() if k not in resolved})
    unpinned = sorted(set(resolved) - set(pins))
    differ = sorted(n for n in resolved if n in pins and resolved[n] != pins[n])
    if unpinned or differ:
        print(f"constraints.txt is incomplete or inconsistent: unpinned {unpinned}, differing {differ}", file=sys.stderr)
        return 1
    print(f"constraints.txt: {len(pins)} pins resolve consistently for Python 3.10 manylinux x86_64")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fail the image build when its Python environment has a known GPU trap.

- the CPU 'onnxruntime' or GUI 'opencv-python' installed beside the GPU/headless ones
  (they share a module name and whichever was installed last wins);
- an ONNX Runtime without the CUDA provider compiled in;
- cuDNN 9.11 or newer, which no longer supports Pascal and Maxwell GPUs.
No GPU is needed: this checks what is installed, not what a GPU does (diagnostic_test does that).
"""

from __future__ import annotations

import sys
from importlib import metadata


def main() -> int:
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    problems = []
    for bad in ("onnxruntime", "opencv-python", "opencv-contrib-python"):
        if bad in installed:
            problems.append(f"{bad} is installed and shadows the GPU/headless build")
    opencv = sorted(n for n in installed if n.startswith("opencv"))
    if len(opencv) != 1:
        problems.append(f"exactly one OpenCV distribution expected, found {opencv}")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        problems.append(f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider")
    try:
        cudnn = metadata.version("nvidia-cudnn-cu12")
        if tuple(int(x) for x in cudnn.split(".")[:2]) >= (9, 11):
            problems.append(f"cuDNN {cudnn} dropped Pascal/Maxwell GPUs; pin nvidia-cudnn-cu12<9.11")
    except metadata.PackageNotFoundError:
        problems.append("nvidia-cudnn-cu12 is not installed")
    for p in problems:
        print(f"verify_env: {p}", file=sys.stderr)
    if not problems:
        print(f"verify_env: ok (onnxruntime {onnxruntime.__version__}, cuDNN {cudnn}, {opencv[0]})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

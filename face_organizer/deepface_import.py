"""Import DeepFace without the start-up lines TensorFlow and DeepFace print on stderr.

Importing TensorFlow writes a handful of lines from its C++ side before its own log level
applies (oneDNN notes, "Could not find cuda drivers", absl's "All log messages before
absl::InitializeLog()"), and DeepFace logs every weight download it tries. Between a
command's own lines they read as errors; the reasons a download failed are in the command's
own line. They are kept for ``-vv`` (debug), shown if the import fails, and otherwise dropped;
``TF_CPP_MIN_LOG_LEVEL``, ``DEEPFACE_LOG_LEVEL`` and ``RETINAFACE_LOG_LEVEL`` set by the user
are left as they are.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import IO

log = logging.getLogger(__name__)


@contextmanager
def _stderr_into(file: IO[bytes]) -> Iterator[None]:
    """Send file descriptor 2 (what C++ libraries write to) into ``file`` while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_deepface() -> ModuleType:
    """``deepface.DeepFace``, imported with TensorFlow's and DeepFace's start-up lines held back.

    Raises what the import raises (``ImportError`` when it is not installed, ``OSError`` when it
    cannot make its folders), after writing the held lines to stderr, where they may say why.
    """
    if "deepface.DeepFace" in sys.modules:
        return sys.modules["deepface.DeepFace"]
    if log.isEnabledFor(logging.DEBUG):
        from deepface import DeepFace

        return DeepFace
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("DEEPFACE_LOG_LEVEL", "RETINAFACE_LOG_LEVEL"):  # retinaface: a detector DeepFace imports
        os.environ.setdefault(name, str(logging.ERROR))
    with tempfile.TemporaryFile() as held:
        try:
            with _stderr_into(held):
                from deepface import DeepFace
        except BaseException:
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
    return DeepFace

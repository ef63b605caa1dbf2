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
from pathlib import Path
from types import ModuleType

from . import native_stderr

log = logging.getLogger(__name__)


def deepface_home_default() -> Path:
    """The folder DeepFace keeps ``.deepface/weights`` in: ``$DEEPFACE_HOME``, else the home folder."""
    return Path(os.environ.get("DEEPFACE_HOME", os.path.expanduser("~")))


def import_deepface() -> ModuleType:
    """``deepface.DeepFace``, imported with TensorFlow's and DeepFace's start-up lines held back.

    Raises what the import raises (``ImportError`` when it is not installed, ``OSError`` when it
    cannot make its folders), after writing the held lines to stderr, where they may say why.
    """
    if log.isEnabledFor(logging.DEBUG):
        from deepface import DeepFace

        return DeepFace
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("DEEPFACE_LOG_LEVEL", "RETINAFACE_LOG_LEVEL"):  # retinaface: a detector DeepFace imports
        os.environ.setdefault(name, str(logging.ERROR))
    startup = native_stderr.Held()
    try:
        with native_stderr.held() as startup:
            from deepface import DeepFace
    except BaseException:
        sys.stderr.write(startup.text)
        raise
    return DeepFace

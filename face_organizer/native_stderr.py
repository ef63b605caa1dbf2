"""What native libraries (TensorFlow's C++ side, CUDA) write straight to file descriptor 2.

Python's ``sys.stderr`` cannot hold such lines back; ``held()`` sends the descriptor itself
into a temporary file while inside, and gives what was written there.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Held:
    """The text written to stderr while ``held()`` was active; filled when it ends."""

    text: str = ""


@contextmanager
def held() -> Iterator[Held]:
    """Hold back everything written to stderr (file descriptor 2) while inside."""
    out = Held()
    with tempfile.TemporaryFile() as file:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            out.text = file.read().decode("utf-8", "replace")

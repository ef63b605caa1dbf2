"""A decoder for worker processes that dies, as a segfaulting codec or the OOM killer
would, on any file named 'poison'."""

from __future__ import annotations

import os

from face_organizer import images


def load_many(paths: list[str]) -> list[images.Loaded]:
    if any("poison" in os.path.basename(p) for p in paths):
        os._exit(3)
    return images.load_many(paths)

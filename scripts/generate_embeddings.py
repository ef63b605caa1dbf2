#!/usr/bin/env python3
"""Compute face embeddings for folders of images. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.embed import cli  # noqa: E402

if __name__ == "__main__":
    cli()

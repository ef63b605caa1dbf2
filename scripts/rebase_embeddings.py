#!/usr/bin/env python3
"""Rewrite the image paths of an embeddings file from one folder to another. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.rebase import cli  # noqa: E402

if __name__ == "__main__":
    cli()

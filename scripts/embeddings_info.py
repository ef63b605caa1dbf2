#!/usr/bin/env python3
"""Describe embeddings files and the runs writing them. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.info import cli  # noqa: E402

if __name__ == "__main__":
    cli()

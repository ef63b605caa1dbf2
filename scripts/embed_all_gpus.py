#!/usr/bin/env python3
"""Embed images on every GPU at once, one worker per GPU. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.multigpu import cli  # noqa: E402

if __name__ == "__main__":
    cli()

#!/usr/bin/env python3
"""Compare face-detector backends on a sample of your images. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.backends import cli  # noqa: E402

if __name__ == "__main__":
    cli()

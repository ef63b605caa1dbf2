#!/usr/bin/env python3
"""Keep the face images of one gender. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.gender import cli  # noqa: E402

if __name__ == "__main__":
    cli()

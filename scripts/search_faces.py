#!/usr/bin/env python3
"""Find every image of one person from reference photos. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.search import cli  # noqa: E402

if __name__ == "__main__":
    cli()

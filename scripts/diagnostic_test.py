#!/usr/bin/env python3
"""Check the GPU stack: versions, GPUs, provider self-tests. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.diagnostic import cli  # noqa: E402

if __name__ == "__main__":
    cli()

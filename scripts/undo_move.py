#!/usr/bin/env python3
"""Put the images of a cluster_faces --link-mode move back where they were embedded. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from face_organizer.cli.undo import cli  # noqa: E402

if __name__ == "__main__":
    cli()

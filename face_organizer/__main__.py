"""``python -m face_organizer COMMAND …``: the ``face-organizer`` command where its entry point is not on PATH."""

from .cli.main import cli

if __name__ == "__main__":
    cli()

"""face-organizer: sort very large collections of face images by person."""

__version__ = "0.1.0"

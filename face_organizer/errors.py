"""Domain exceptions. The CLI layer turns each into one line and an exit code."""


class FaceOrganizerError(Exception):
    """A problem the user can fix: bad arguments, missing model, unusable file."""

    exit_code = 2


class SetupError(FaceOrganizerError):
    """The run cannot start: no inputs, unwritable output, incompatible files."""


class ModelPackError(SetupError):
    """A model pack is missing, incomplete or unusable."""


class DeviceError(SetupError):
    """The requested execution device is not really in use."""


class EmbeddingsFileError(FaceOrganizerError):
    """An embeddings file is unreadable, malformed or unsafe."""


class UnsafePickleError(EmbeddingsFileError):
    """A pickle asked to import something other than plain data and numpy arrays."""

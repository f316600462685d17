"""The project's exceptions. The CLI prints any of them as one line, never a traceback."""


class PosterGenreError(Exception):
    """Base class: a problem with user input or the environment, explained in one line."""


class InvalidImageError(PosterGenreError):
    """A file or byte string that is not a usable poster image."""


class NotAnImageError(InvalidImageError):
    """Bytes in no image format at all (as opposed to a truncated image or a decompression bomb)."""


class DatasetError(PosterGenreError):
    """A labels file, poster folder or dataset directory that cannot be used."""


class RunError(PosterGenreError):
    """A run directory (config, weights, thresholds) that cannot be used."""

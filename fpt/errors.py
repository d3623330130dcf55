"""Typed errors. The CLI turns each into one line and a non-zero exit code.

Every message should say what went wrong, which file, and what to do about it.
"""

from __future__ import annotations


class FptError(Exception):
    """Base class for every error fpt reports to a user."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: object | None = None, hint: str | None = None):
        self.message = message
        self.path = path
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.message]
        if self.path is not None:
            parts[0] = f"{self.path}: {self.message}"
        if self.hint:
            parts.append(self.hint)
        return " — ".join(parts)


class InputError(FptError):
    """A user-supplied file or folder cannot be used (missing, unreadable, wrong kind)."""

    exit_code = 2


class ImageError(InputError):
    """A file is not a usable image (not an image, truncated, too small, too large)."""


class EmptyInputError(InputError):
    """A folder (or list of paths) holds no images."""


class StoreError(FptError):
    """An HDF5 store (gallery, pool, manifold) is missing, foreign, corrupt or of another schema."""

    exit_code = 3


class CheckpointError(FptError):
    """An extractor checkpoint is missing, tampered with, or not an fpt checkpoint."""

    exit_code = 3


class ExtractorMismatchError(FptError):
    """Embeddings made by one extractor are being mixed with another's."""

    exit_code = 4


class ConfigError(FptError):
    """Command-line options or a config that cannot work together."""

    exit_code = 2

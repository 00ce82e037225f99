"""Errors raised by manifest IO: each names the file and what was expected."""

from __future__ import annotations


class ManifestError(ValueError):
    """A manifest or shard file that does not meet its contract."""


class SchemaMismatchError(ManifestError):
    def __init__(self, path: str, column: str, expected: str, found: str) -> None:
        super().__init__(f"{path}: column '{column}': expected {expected}, found {found}")
        self.path, self.column, self.expected, self.found = path, column, expected, found


# a path that is not there or cannot be written: a user's error, reported in one line
# (the message names the path)
PATH_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)  # fmt: skip


def error_line(exc: Exception) -> str:
    """A user error as the one line a command prints: an OS error as ``PATH: reason``."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)

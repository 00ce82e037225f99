"""Errors raised by manifest IO: each names the file and what was expected."""

from __future__ import annotations


class ManifestError(ValueError):
    """A manifest or shard file that does not meet its contract."""


class SchemaMismatchError(ManifestError):
    def __init__(self, path: str, column: str, expected: str, found: str) -> None:
        super().__init__(f"{path}: column '{column}': expected {expected}, found {found}")
        self.path, self.column, self.expected, self.found = path, column, expected, found

"""The errors of ``index/``: every failure a caller can act on is an :class:`IndexStoreError` naming what and where."""

from __future__ import annotations


class IndexStoreError(ValueError):
    """The index, its files or a call's arguments are wrong; the message says what and where."""


class VersionMismatchError(IndexStoreError):
    """Vectors or queries from another encoder version than the one the index was built with."""

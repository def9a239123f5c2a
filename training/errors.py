"""The one error the training loop raises on purpose, in a module of its own so every part of the loop can raise it.

``training.train`` re-exports it: callers catch ``training.train.TrainingError``.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, collapse, inconsistent resume); the message says what to change."""

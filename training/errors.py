"""The one error the training loop raises on purpose, in a module of its own so every part of the loop can raise it.

``training.train`` re-exports it: callers catch ``training.train.TrainingError``.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, collapse, inconsistent resume); the message says what to change."""


class RunFailed(TrainingError):
    """The run itself went wrong at ``step``: ``kind`` is 'diverged' (a non-finite loss) or 'collapsed' (the
    embeddings' std under ``train.collapse_std``). The loop writes no encoder for it, only a summary saying so."""

    def __init__(self, kind: str, step: int, message: str) -> None:
        super().__init__(message)
        self.kind, self.step = kind, step

"""The one error base type: every failure a user can fix derives from ``AlmaError``.

The CLI (and ``jobs/``) catch ``AlmaError`` and print its message, never a traceback. Each layer raises its own
subclass where it detects the problem (``ConfigError`` in the schema, ``StoreError`` in the store, ...); the
message names the file, line, key or stage and says what to change.
"""

from __future__ import annotations


class AlmaError(Exception):
    """A failure the user can fix; the message says where and how."""


class EmptyStageError(AlmaError, RuntimeError):
    """A stage produced no rows; nothing is committed, and the message says what to change."""


class StageInputError(AlmaError, ValueError):
    """A stage's input lacks a column the stage needs (checked before the stage runs)."""

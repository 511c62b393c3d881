"""Reading a user's row file (JSONL or parquet) one record at a time, with every problem named by file and line.

``read_records`` yields ``(where, row)``: ``where`` is ``file:line`` (JSONL) or ``file: row i`` (parquet), for the
caller's own checks of the fields. A line that is not UTF-8, not JSON or not an object raises ``error`` naming it,
or is counted in ``Skipped`` when ``skip_bad``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Skipped:
    """Bad lines skipped (``skip_bad``)."""

    lines: int = 0


def read_records(path: Path, error: type[Exception], *, skip_bad: bool = False, skipped: Skipped | None = None,
                 hint: str = "", blank_ok: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record of a JSONL or parquet file; ``hint`` ends the message of a bad line (what to do). A blank line
    is skipped, or is a bad line when not ``blank_ok``."""
    if not path.is_file():
        raise error(f"file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
            raise error(f"{path}: not a readable parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}: row {i}", row
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            problem, row = _parse(raw)
            if problem == "" and blank_ok:
                continue
            if problem is None:
                yield f"{path}:{lineno}", row  # type: ignore[misc]
            elif skip_bad and skipped is not None:
                skipped.lines += 1
            else:
                raise error(f"{path}:{lineno}: {problem or 'empty line'}{hint}")


def _parse(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """(what is wrong with a JSONL line: None if nothing, "" if it is blank; the record)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8", None
    if not line.strip():
        return "", None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg})", None
    return (None, row) if isinstance(row, dict) else ("not a JSON object", None)

"""Live progress for long stages: engine actors report rows and tokens, the driver draws one bar.

Ray Data's own bars count blocks and rows per operator; what a person watching generation wants is rows of the
stage's output, tokens/s and an ETA. Engine actors push counts to a ``ProgressCounter`` actor (fire and forget,
never on the hot path's critical section); ``StageProgress`` polls it from a driver thread and renders a tqdm bar.
The same counter gives the benchmarks their steady-state window (first batch started -> last batch done).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Counts what engine actors report. Retried batches may be counted twice: this is display, not data."""

    def __init__(self) -> None:
        self.rows = 0
        self.tokens = 0
        self.batches = 0
        self.engines_ready = 0
        self.first_ready: float | None = None
        self.engine_build_s = 0.0
        self.first_start: float | None = None
        self.last_done: float | None = None

    def ready(self, at: float, build_s: float = 0.0) -> None:
        self.engines_ready += 1
        self.engine_build_s = max(self.engine_build_s, build_s)
        self.first_ready = at if self.first_ready is None else min(self.first_ready, at)

    def add(self, rows: int, tokens: int, started: float, done: float) -> None:
        self.rows += rows
        self.tokens += tokens
        self.batches += 1
        self.first_start = started if self.first_start is None else min(self.first_start, started)
        self.last_done = done if self.last_done is None else max(self.last_done, done)

    def snapshot(self) -> dict[str, Any]:
        return dict(rows=self.rows, tokens=self.tokens, batches=self.batches, engines_ready=self.engines_ready,
                    engine_build_s=self.engine_build_s,
                    first_ready=self.first_ready, first_start=self.first_start, last_done=self.last_done)


class StageProgress:
    """``with StageProgress("responses", total_rows) as p:`` pass ``p.counter`` to the engine actors.

    Draws ``rows/total [elapsed<eta, tok/s]`` while the block runs; ``p.final`` holds the last snapshot plus
    ``steady_tok_s``: tokens over the window from the first batch an engine started to the last batch done
    (engine start-up and the pipeline's ramp-up before the first batch are start-up, not steady state).
    """

    def __init__(self, stage: str, total_rows: int | None, *, interval_s: float = 1.0, show: bool = True) -> None:
        self.stage, self.total, self.interval, self.show = stage, total_rows, interval_s, show
        self.counter: Any = None
        self.final: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageProgress:
        self.counter = ProgressCounter.remote()  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._draw, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        ray.kill(self.counter)

    def _draw(self) -> None:
        from tqdm import tqdm

        started = time.time()
        bar = tqdm(total=self.total, desc=self.stage, unit="row", dynamic_ncols=True, disable=not self.show,
                   mininterval=self.interval)
        snap: dict[str, Any] = {}
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                snap = ray.get(self.counter.snapshot.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a slow poll must never fail the stage
                if stopping:
                    break
                continue
            bar.n = min(snap["rows"], self.total) if self.total else snap["rows"]
            elapsed = time.time() - started
            bar.set_postfix_str(f"{snap['tokens'] / max(elapsed, 1e-9):,.0f} tok/s, "
                                f"{snap['engines_ready']} engines", refresh=False)
            bar.refresh()
            if stopping:
                break
        bar.close()
        window = (snap.get("last_done") or 0) - (snap.get("first_start") or 0)
        self.final = {**snap, "steady_tok_s": snap["tokens"] / window if snap and window > 0 else 0.0}


def busy_window(final: dict[str, Any]) -> float | None:
    """Seconds from the first batch an engine started to the last one done: the stage's busy time (what is left
    of its wall time is start-up and pipeline overhead)."""
    if not final.get("first_start") or not final.get("last_done"):
        return None
    return round(final["last_done"] - final["first_start"], 3)

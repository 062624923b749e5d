"""Progress reporting and cooperative cancel, shared by every stage.

A stage calls `progress.start(stage, total)`, `progress.advance(stage, n)` and `cancel.check()` between
batches. The CLI shows tqdm bars; `--json-progress` and the Blender worker print one JSON object per line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable, TextIO

from .errors import Cancelled


class CancelToken:
    """Set from another thread (stdin reader, signal handler); checked by the engine between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class Progress:
    """Silent base: also the interface. Subclasses render it."""

    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class TqdmProgress(Progress):
    def __init__(self) -> None:
        self._bars: dict = {}

    def start(self, stage, total):
        from tqdm import tqdm

        self.finish(stage)
        self._bars[stage] = tqdm(total=total, desc=stage, unit="frame", leave=True, file=sys.stderr)

    def advance(self, stage, n=1):
        bar = self._bars.get(stage)
        if bar is not None:
            bar.update(n)

    def finish(self, stage):
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def log(self, message):
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


class JsonProgress(Progress):
    """One JSON object per line: {"event": "progress", "stage", "done", "total"} / {"event": "log", ...}.

    Throttled to ~10 lines/s per stage so a fast stage does not flood the pipe; start and finish always print.
    """

    def __init__(self, stream: TextIO | None = None, emit: Callable[[dict], None] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._emit_fn = emit
        self._done: dict[str, int] = {}
        self._total: dict[str, int | None] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def emit(self, obj: dict) -> None:
        if self._emit_fn is not None:
            self._emit_fn(obj)
            return
        with self._lock:
            self._stream.write(json.dumps(obj) + "\n")
            self._stream.flush()

    def _progress(self, stage: str, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last.get(stage, 0.0) < 0.1:
            return
        self._last[stage] = now
        self.emit({"event": "progress", "stage": stage, "done": self._done[stage], "total": self._total[stage]})

    def start(self, stage, total):
        self._done[stage] = 0
        self._total[stage] = total
        self._progress(stage, True)

    def advance(self, stage, n=1):
        if stage not in self._done:
            self.start(stage, None)
        self._done[stage] += n
        self._progress(stage, False)

    def finish(self, stage):
        if stage in self._done:
            self._progress(stage, True)

    def log(self, message):
        self.emit({"event": "log", "message": message})

"""The one running job: a thread runs its steps (job_steps.py) and only queues their events; the main thread
drains them.

Module state is plain Python (not bpy data) so undo or a file load cannot desync it; a file load cancels
the job (its results would belong to the closed file).
"""

from __future__ import annotations

import queue
import re
import threading

import bpy
from bpy.app.handlers import persistent

from .job_steps import JobSteps, Outcome

current: Job | None = None


class Job:
    def __init__(self, steps: JobSteps, scene_name: str) -> None:
        self.steps = steps
        self.scene_name = scene_name
        self.events: queue.Queue = queue.Queue()
        self.outcome: Outcome | None = None
        self.stage = "starting"
        self.done = 0
        self.total: int | None = None
        self.last_log = ""
        steps.emit = self.events.put  # the thread only queues; bpy is touched by drain()'s caller
        self._thread = threading.Thread(target=self._run, name="lipsync-job", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def _run(self) -> None:
        out = self.steps.run()
        self.events.put({"event": "_finished", "outcome": out})

    def drain(self) -> list[dict]:
        """Take the queued events (main thread); updates stage/progress and sets .outcome at the end."""
        got = []
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            got.append(ev)
            kind = ev.get("event")
            if kind == "progress":
                self.stage = str(ev.get("stage") or self.stage)
                self.done = int(ev.get("done") or 0)
                self.total = ev.get("total")
            elif kind == "log":
                self.last_log = str(ev.get("message", ""))
            elif kind == "_finished":
                self.outcome = ev["outcome"]
        return got

    @property
    def fraction(self) -> float:
        """Of the whole press: a stage "cut 3 of 12: ..." counts the cuts before it as done."""
        part = max(0.0, min(1.0, self.done / self.total)) if self.total else 0.0
        m = re.match(r"cut (\d+) of (\d+)", self.stage)
        if m:
            i, n = int(m.group(1)), int(m.group(2))
            return max(0.0, min(1.0, (i - 1 + part) / max(n, 1)))
        return part

    @property
    def status_line(self) -> str:
        count = f" {self.done}/{self.total}" if self.total else ""
        return f"{self.stage}{count}"

    def cancel(self) -> None:
        self.steps.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self.outcome is not None


def start(steps: JobSteps, scene_name: str) -> Job:
    global current
    if current is not None:
        raise RuntimeError("a lip-sync job is already running")
    current = Job(steps, scene_name).start()
    return current


def release(job: Job) -> None:
    global current
    if current is job:
        current = None


def busy() -> bool:
    return current is not None


def cancel_current() -> bool:
    if current is None:
        return False
    current.cancel()
    return True


@persistent
def _on_load_pre(*_args) -> None:
    cancel_current()


def register() -> None:
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    global current
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    if current is not None:
        current.cancel()
        current.wait(timeout=20)
        current.steps.discard()
        current = None

"""The client of the engine's worker process: find a Python with torch, check it, run
`<python> -m lipsync_core.worker` on the add-on's runner and read its events.

No bpy here: this runs on a job thread (or inline in background mode) and only handles plain data.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .runner import Runner, RunnerError, json_event

HERE = Path(__file__).resolve().parent
CANCEL_GRACE_S = 15.0  # the engine checks between batches; then SIGTERM, then kill


class WorkerError(Exception):
    """The engine's process cannot run: a message for the editor that says what to do."""


def core_dir() -> Path | None:
    """The folder holding lipsync_core: the extension's own folder once built, the checkout in development."""
    for cand in (HERE, HERE.parent):
        if (cand / "lipsync_core" / "__init__.py").is_file():
            return cand
    return None


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def python_candidates(user_dir: Path | None) -> list[tuple[Path, str]]:
    """Where a Python with torch may be, best first, each with where it came from."""
    out: list[tuple[Path, str]] = []
    env = os.environ.get("LIPSYNC_PYTHON")
    if env:
        p = Path(env).expanduser()
        for cand in (p, venv_python(p), venv_python(p / ".venv")) if p.is_dir() else (p,):
            out.append((cand, "LIPSYNC_PYTHON"))
    core = core_dir()
    if core is not None and core == HERE.parent:  # running from a checkout: its .venv (python build.py setup)
        out.append((venv_python(core / ".venv"), "the checkout's .venv"))
    if user_dir is not None:
        out.append((venv_python(user_dir / "venv"), "the extension's engine venv"))
    return out


def find_python(user_dir: Path | None) -> tuple[str, str] | None:
    for cand, origin in python_candidates(user_dir):
        if cand.is_file():
            return str(cand), origin
    return None


def subprocess_env(cache_dir: str = "") -> dict[str, str]:
    """Environment for engine processes: PYTHONPATH at the bundled lipsync_core, nothing of Blender's Python.

    The engine's detection cache goes under the extension's folder unless LIPSYNC_CACHE_DIR says otherwise.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    core = core_dir()
    if core is not None:
        env["PYTHONPATH"] = str(core)
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir and not env.get("LIPSYNC_CACHE_DIR"):
        env["LIPSYNC_CACHE_DIR"] = cache_dir
    return env


_check_cache: dict[tuple[str, float], dict] = {}


def require_python_file(python: str) -> Path:
    """The engine Python's path; WorkerError when there is no such file (checked without starting it)."""
    path = Path(python)
    if not path.is_file():
        raise WorkerError(f"The engine Python '{python}' does not exist. Set Preferences > Add-ons > Lip Sync > "
                          "Python to a Python that has torch installed.")
    return path


def is_import_failure(detail: str, stderr_tail: list[str]) -> bool:
    """The engine could not import what it needs (torch, numpy...): this Python has no engine installed."""
    return any(k in text for text in [detail, *stderr_tail] for k in ("No module named", "ImportError"))


def no_engine_message(python: str, detail: str, stderr_tail: list[str]) -> str:
    lines = [ln.strip() for ln in (detail.splitlines() + stderr_tail) if ln.strip()]
    hint = "it has no torch" if "torch" in detail or any("torch" in ln for ln in stderr_tail) else "it failed"
    last = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "no output")
    return (f"The engine Python '{python}' cannot import torch ({hint}: {last}). Install the engine there "
            "(python build.py setup makes .venv) or pick another Python in Preferences > Add-ons > Lip Sync.")


def check_python(python: str, timeout: float = 120.0, use_cache: bool = True) -> dict:
    """The worker's `check` command run with `python`: {'torch', 'cuda', 'mps', ...}.

    Raises WorkerError that says what to do. Answers are kept per interpreter file (path and mtime): torch's
    first import takes seconds and every job starts with this check.
    """
    path = require_python_file(python)
    key = (str(path), path.stat().st_mtime)
    if use_cache and key in _check_cache:
        return _check_cache[key]
    worker = WorkerProcess(str(path), {"command": "check"})
    timed_out = threading.Event()
    timer = threading.Timer(timeout, lambda: (timed_out.set(), worker.kill()))
    timer.daemon = True
    timer.start()
    try:
        res = worker.run()
    finally:
        timer.cancel()
    if res.kind != "result":
        if timed_out.is_set():
            raise WorkerError(f"Could not run '{python}': it did not answer within {timeout:.0f} s.")
        raise WorkerError(no_engine_message(python, str(res.event.get("message") or ""), res.stderr_tail))
    info = {k: v for k, v in res.event.items() if k != "event"}
    _check_cache[key] = info
    return info


def describe(info: dict) -> str:
    """One line for the preferences: torch version, the interpreter's when known, CUDA and MPS."""
    python = f" (Python {info['python']})" if info.get("python") else ""
    return (f"torch {info.get('torch')}{python}, CUDA: {'yes' if info.get('cuda') else 'no'}, "
            f"MPS: {'yes' if info.get('mps') else 'no'}")


@dataclass
class WorkerResult:
    event: dict  # the final event: result / cancelled / error (an error is made up when the worker died)
    returncode: int | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.event.get("event", "error")


class WorkerProcess:
    """One `python -m lipsync_core.worker` run on the add-on's runner: job JSON in, events out.

    `run()` blocks and calls on_event for every event (from the calling thread); `cancel()` may be called from
    any other thread: the worker's `cancel` line, SIGTERM after CANCEL_GRACE_S, then kill.
    """

    def __init__(self, python: str, job: dict, on_event: Callable[[dict], None] | None = None,
                 cache_dir: str = "") -> None:
        self.python = python
        self.job = job
        self.on_event = on_event or (lambda ev: None)
        core = core_dir()
        self.runner = Runner([python, "-m", "lipsync_core.worker"], env=subprocess_env(cache_dir),
                             cwd=str(core) if core else None, first_line=json.dumps(job), stderr="tail",
                             cancel_line="cancel", grace_s=CANCEL_GRACE_S)

    @property
    def proc(self):
        return self.runner.proc

    def run(self) -> WorkerResult:
        if core_dir() is None:
            raise WorkerError("lipsync_core is missing from the extension; reinstall it.")
        if self.runner.cancelled:
            return WorkerResult({"event": "cancelled"})
        try:
            self.runner.start()
        except RunnerError as exc:
            raise WorkerError(f"Could not start the engine with '{self.python}': {exc}") from exc
        final: dict | None = None
        try:
            for line in self.runner.lines():
                ev = json_event(line)
                if ev is None:
                    continue
                if ev.get("event") in ("result", "cancelled", "error"):
                    final = ev
                self.on_event(ev)
        except BaseException:  # Ctrl+C in a background run, or a bug: never leave the engine running alone
            self.runner.kill()
            raise
        rc = self.runner.returncode
        tail = list(self.runner.stderr_tail)[-8:]
        if final is None:
            if self.runner.cancelled:
                final = {"event": "cancelled"}
            else:
                final = {"event": "error", "message": died_message(rc, tail)}
        elif final["event"] == "result" and rc != 0:
            final = {"event": "error", "message": died_message(rc, tail)}
        return WorkerResult(final, rc, tail)

    def cancel(self) -> None:
        """Ask the worker to stop (a `cancel` line), then SIGTERM, then kill if it does not."""
        self.runner.cancel()

    def kill(self) -> None:
        self.runner.kill()

    @property
    def cancelled(self) -> bool:
        return self.runner.cancelled


def died_message(rc: int | None, tail: list[str]) -> str:
    how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
    last = ("\nLast lines of its output:\n  " + "\n  ".join(tail)) if tail else ""
    return f"The lip-sync engine {how} before it finished; the timeline was not changed.{last}"


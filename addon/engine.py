"""The engine process: find a Python with torch, probe it, run `-m lipsync_core.worker` and read its events.

No bpy here: this runs on a job thread (or inline in background mode) and only handles plain data.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE_CODE = (
    "import json, torch; "
    "mps = getattr(getattr(torch, 'backends', None), 'mps', None); "
    "print(json.dumps({'torch': torch.__version__, 'cuda': bool(torch.cuda.is_available()), "
    "'mps': bool(mps is not None and mps.is_available()), 'python': __import__('sys').version.split()[0]}))"
)
CANCEL_GRACE_S = 15.0  # the engine checks between batches; then SIGTERM, then kill


class EngineError(Exception):
    """A message for the editor: what went wrong and what to do."""


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


_probe_cache: dict[tuple[str, float], dict] = {}


def probe_python(python: str, timeout: float = 120.0, use_cache: bool = True) -> dict:
    """{'torch', 'cuda', 'mps', 'python'} from `python`; raises EngineError that says what to do."""
    path = Path(python)
    if not path.is_file():
        raise EngineError(f"The engine Python '{python}' does not exist. Set Preferences > Add-ons > Lip Sync > "
                          "Python to a Python that has torch installed.")
    key = (str(path), path.stat().st_mtime)
    if use_cache and key in _probe_cache:
        return _probe_cache[key]
    try:
        proc = subprocess.run([str(path), "-c", PROBE_CODE], capture_output=True, text=True, timeout=timeout,
                              env=subprocess_env(), stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"Could not run '{python}': {exc}") from exc
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        hint = "it has no torch" if "torch" in proc.stderr else "it failed"
        raise EngineError(f"The engine Python '{python}' cannot import torch ({hint}: {tail}). Install the engine "
                          "there (python build.py setup makes .venv) or pick another Python in "
                          "Preferences > Add-ons > Lip Sync.")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise EngineError(f"Unexpected answer from '{python}': {proc.stdout[-200:]!r}") from exc
    _probe_cache[key] = info
    return info


@dataclass
class WorkerResult:
    event: dict  # the final event: result / cancelled / error (an error is made up when the worker died)
    returncode: int | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.event.get("event", "error")


def signal_group(proc, sig) -> None:
    """Signal a helper process and what it started (ffmpeg, pip): it leads its own process group on POSIX."""
    if proc.poll() is not None:
        return
    try:
        if os.name != "nt":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:
            proc.terminate()
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


class WorkerProcess:
    """One `python -m lipsync_core.worker` run: job JSON in, events out, cancel by a stdin line.

    `run()` blocks and calls on_event for every event (from the calling thread); `cancel()` may be called from
    any other thread.
    """

    def __init__(self, python: str, job: dict, on_event: Callable[[dict], None] | None = None,
                 cache_dir: str = "") -> None:
        self.python = python
        self.cache_dir = cache_dir
        self.job = job
        self.on_event = on_event or (lambda ev: None)
        self.proc: subprocess.Popen | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._escalation: threading.Timer | None = None

    def run(self) -> WorkerResult:
        core = core_dir()
        if core is None:
            raise EngineError("lipsync_core is missing from the extension; reinstall it.")
        with self._lock:
            if self._cancelled.is_set():
                return WorkerResult({"event": "cancelled"})
            try:
                self.proc = subprocess.Popen(
                    [self.python, "-m", "lipsync_core.worker"], cwd=str(core), env=subprocess_env(self.cache_dir),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, encoding="utf-8", errors="replace", bufsize=1,
                    start_new_session=(os.name != "nt"),  # Ctrl+C in Blender's terminal goes to Blender only
                )
            except OSError as exc:
                raise EngineError(f"Could not start the engine with '{self.python}': {exc}") from exc
            self.proc.stdin.write(json.dumps(self.job) + "\n")
            self.proc.stdin.flush()
        err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        err_thread.start()
        final: dict | None = None
        try:
            for line in self.proc.stdout:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") in ("result", "cancelled", "error"):
                    final = ev
                self.on_event(ev)
        except BaseException:  # Ctrl+C in a background run, or a bug: never leave the engine running alone
            self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            raise
        rc = self.proc.wait()
        err_thread.join(timeout=5)
        if self._escalation is not None:
            self._escalation.cancel()
        self._close_stdin()
        tail = list(self._stderr)[-8:]
        if final is None:
            if self._cancelled.is_set():
                final = {"event": "cancelled"}
            else:
                final = {"event": "error", "message": died_message(rc, tail)}
        elif final["event"] == "result" and rc != 0:
            final = {"event": "error", "message": died_message(rc, tail)}
        return WorkerResult(final, rc, tail)

    def cancel(self) -> None:
        """Ask the worker to stop (a `cancel` line), then SIGTERM, then kill if it does not."""
        with self._lock:
            self._cancelled.set()
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            try:
                proc.stdin.write("cancel\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
        self._escalation = threading.Timer(CANCEL_GRACE_S, self._escalate)
        self._escalation.daemon = True
        self._escalation.start()

    def kill(self) -> None:
        self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)

    def _signal(self, sig) -> None:
        if self.proc is not None:
            signal_group(self.proc, sig)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _escalate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_stdin(self) -> None:
        with self._lock:
            try:
                if self.proc is not None and self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass

    def _read_stderr(self) -> None:
        assert self.proc is not None
        for line in self.proc.stderr:
            line = line.rstrip()
            if line:
                self._stderr.append(line)


def died_message(rc: int | None, tail: list[str]) -> str:
    how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
    last = ("\nLast lines of its output:\n  " + "\n  ".join(tail)) if tail else ""
    return f"The lip-sync engine {how} before it finished; the timeline was not changed.{last}"


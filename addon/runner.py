"""The add-on's one way to run a helper process: the engine worker, Set up Engine and Download Weights alike.

start() launches it in its own process group (a cancel reaches what it started: ffmpeg, pip) with an optional
first line on stdin; a reader thread queues its output lines (JSON events or plain text) for whichever thread
consumes them: `lines()` blocks (a job thread, background mode), `drain()` does not (a modal timer on Blender's
main thread). cancel() sends the polite cancel line if the process understands one, then SIGTERM, then kills.
No bpy here.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
_EXIT = object()  # queued after the last line, once the process has ended


class RunnerError(Exception):
    """The process could not be started; the message says which and why."""


def json_event(line: str) -> dict | None:
    """A JSON object line as a dict; None for anything else (a traceback, a stray print)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def signal_group(proc: subprocess.Popen, sig) -> None:
    """Signal a helper process and what it started: it leads its own process group on POSIX."""
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


class Runner:
    """One helper process: its output lines in order, its exit code, the tail of what it printed.

    stderr="merge" reads stderr with stdout (pip, the weights CLI: everything is the message); "tail" keeps it
    apart in `stderr_tail` (the worker: stdout is the event stream, stderr its log). With `cancel_line`, cancel()
    first writes that line and waits `grace_s` before SIGTERM; SIGTERM is followed by a kill after `kill_after_s`.
    `on_exit(returncode, every stdout line)` runs on the reader thread once the process has ended (not after a
    cancel), before the end is reported; what it returns, or the exception it raised, is `exit_result`.
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 first_line: str | None = None, stderr: str = "merge", cancel_line: str | None = None,
                 grace_s: float = 0.0, kill_after_s: float = 5.0, keep: int = 400,
                 on_exit: Callable[[int, list[str]], object] | None = None) -> None:
        assert stderr in ("merge", "tail")
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.first_line = first_line
        self.stderr = stderr
        self.cancel_line = cancel_line
        self.grace_s = grace_s
        self.kill_after_s = kill_after_s
        self.on_exit = on_exit
        self.exit_result: object = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=keep)  # non-empty lines, for messages
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._timers: list[threading.Timer] = []
        self._threads: list[threading.Thread] = []

    # -- life cycle

    def start(self) -> Runner:
        """Start the process; raises RunnerError when it cannot be run. A cancel before start stops it at once."""
        with self._lock:
            try:
                self.proc = subprocess.Popen(
                    self.argv, cwd=self.cwd, env=self.env,
                    stdin=subprocess.PIPE if (self.first_line is not None or self.cancel_line) else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT if self.stderr == "merge" else subprocess.PIPE,
                    text=True, encoding="utf-8", errors="replace", bufsize=1,
                    start_new_session=(os.name != "nt"),  # Ctrl+C in Blender's terminal goes to Blender only
                )
            except OSError as exc:
                raise RunnerError(f"Could not start '{self.argv[0]}': {exc}") from exc
            if self.first_line is not None:
                self._write(self.first_line)
        readers = [threading.Thread(target=self._read_stdout, name="lipsync-runner-out", daemon=True)]
        if self.stderr == "tail":
            readers.append(threading.Thread(target=self._read_stderr, name="lipsync-runner-err", daemon=True))
        self._threads = readers
        for t in readers:
            t.start()
        if self._cancelled.is_set():
            self._stop()
        return self

    def _write(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line.rstrip("\n") + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError, AttributeError):
            return False

    def _read_stdout(self) -> None:
        assert self.proc is not None
        every: list[str] = []
        for line in self.proc.stdout:
            line = line.rstrip("\r\n")
            if self.on_exit is not None:
                every.append(line)
            self._queue.put(line)
        rc = self.proc.wait()
        if len(self._threads) > 1:
            self._threads[1].join(timeout=5)  # stderr complete before anyone reads the tail
        if self.on_exit is not None and not self.cancelled:
            try:
                self.exit_result = self.on_exit(rc, every)
            except Exception as exc:  # noqa: BLE001  (handed to the consumer, never lost on a thread)
                self.exit_result = exc
        self._queue.put((_EXIT, rc))

    def _read_stderr(self) -> None:
        assert self.proc is not None
        for line in self.proc.stderr:
            line = line.rstrip()
            if line:
                self.stderr_tail.append(line)

    def _take(self, item) -> str | None:
        """One queued item -> the line (None at the end, which sets returncode)."""
        if isinstance(item, tuple) and item and item[0] is _EXIT:
            self.returncode = item[1]
            self._finish()
            return None
        if item.strip():
            self.output.append(item)
        return item

    def lines(self) -> Iterator[str]:
        """Every output line as it comes, blocking, until the process has ended (then `returncode` is set)."""
        if self.returncode is not None:
            return
        while True:
            line = self._take(self._queue.get())
            if line is None:
                return
            yield line

    def drain(self) -> tuple[list[str], bool]:
        """The lines queued so far, without blocking, and whether the process has ended."""
        got: list[str] = []
        while self.returncode is None:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            line = self._take(item)
            if line is not None:
                got.append(line)
        return got, self.returncode is not None

    def wait(self) -> int:
        """Read to the end (discarding lines not yet read); the exit code."""
        for _ in self.lines():
            pass
        assert self.returncode is not None
        return self.returncode

    # -- stopping

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop it (any thread): the cancel line if it has one, then SIGTERM, then kill."""
        with self._lock:
            self._cancelled.set()
            if self.proc is None:
                return  # not started yet: start() stops it
        self._stop()

    def _stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if self.cancel_line and self._write(self.cancel_line):
            self._later(self.grace_s, self._terminate)
        else:
            self._terminate()

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            signal_group(self.proc, signal.SIGTERM)
            self._later(self.kill_after_s, self.kill)

    def kill(self) -> None:
        """Kill it and what it started, now."""
        if self.proc is not None:
            signal_group(self.proc, KILL)

    def _later(self, seconds: float, fn) -> None:
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def _finish(self) -> None:
        with self._lock:
            for t in self._timers:
                t.cancel()
            try:
                if self.proc is not None and self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass

    # -- shown to the user

    def tail(self, n: int = 12) -> str:
        return "\n".join(list(self.output)[-n:])


def run_to_end(argv: list[str], timeout: float, **kwargs) -> tuple[int | None, list[str]]:
    """Run a short helper to its end, blocking: (exit code, its stdout lines); killed after `timeout` seconds.

    Raises RunnerError when it cannot be started.
    """
    runner = Runner(argv, stderr="tail", **kwargs).start()
    timer = threading.Timer(timeout, runner.kill)
    timer.daemon = True
    timer.start()
    try:
        lines = list(runner.lines())
    finally:
        timer.cancel()
    return runner.returncode, lines

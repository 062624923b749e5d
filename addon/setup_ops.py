"""Engine set-up from Blender ("Set up engine" in the preferences) and the helper-process runner it shares with
the weights download (weights_ops.py).

Neither touches torch in Blender's Python: each runs one helper process (`python -m lipsync_core.setup_env`,
`python -m lipsync_core weights download`) with the bundled lipsync_core on PYTHONPATH. A thread only reads the
helper's output lines into a queue; the main thread drains them (the modal operator's timer in the interface, a
plain loop in background mode and from scripts) and is the only one that writes preferences. One helper at a time.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import engine, prefs
from .modal import BlockingOrModal

TIMER_S = 0.2
KILL_AFTER_S = 5.0  # a cancelled helper gets this long after SIGTERM before it is killed
REPORT_EVERY_S = 2.0  # blocking runs print the status to the terminal at most this often

current: HelperProcess | None = None  # the running helper (set-up or download); plain Python, not bpy data
last_message: dict[str, tuple[str, str]] = {}  # helper kind -> (report level, message) for the preferences


class Refused(Exception):
    """The operator cannot start: the message says what to do."""


class HelperProcess:
    """One helper process: output lines go through on_line() on the main thread; finish() makes the outcome.

    Subclasses set `kind`/`title` and override on_line(), finish() and optionally poll() (extra progress, e.g.
    the size of a growing download) and after_exit() (runs on the reader thread once the process has ended).
    """

    kind = "helper"
    title = "Working"

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.stage = "starting"
        self.done: int | None = None
        self.total: int | None = None
        self.returncode: int | None = None
        self.outcome: dict | None = None  # {"status": "done"|"error"|"cancelled", "message": ..., ...}
        self.started = time.monotonic()
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> HelperProcess:
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
                start_new_session=(os.name != "nt"),  # a cancel reaches pip/ffmpeg children too
            )
        except OSError as exc:
            raise Refused(f"Could not start '{self.argv[0]}': {exc}") from exc
        self._thread = threading.Thread(target=self._read, name=f"lipsync-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        raw: list[str] = []
        for line in self.proc.stdout:
            line = line.rstrip("\r\n")
            raw.append(line)
            self._queue.put(line)
        rc = self.proc.wait()
        extra = None
        if not self._cancelled.is_set():
            try:
                extra = self.after_exit(rc, raw)
            except Exception as exc:  # noqa: BLE001  (reported, never lost on a thread)
                extra = {"after_exit_error": repr(exc)}
        self._queue.put(("_exit", rc, extra))

    def drain(self) -> bool:
        """Handle queued output (main thread); True once the helper has ended and `outcome` is set."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                _, rc, extra = item
                self.returncode = rc
                if self._cancelled.is_set():
                    self.outcome = {"status": "cancelled", "message": f"{self.title} cancelled."}
                else:
                    self.outcome = self.finish(rc, extra or {})
                return True
            if item.strip():
                self.lines.append(item)
                self.on_line(item)
        if self.outcome is None:
            self.poll()
        return self.outcome is not None

    def wait(self, report=None, timeout: float | None = None) -> dict:
        """Block until the helper ends (background mode, scripts); `report(text)` on every new status line."""
        shown, shown_at = "", 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.drain():
            now = time.monotonic()
            if report is not None and self.status_line != shown and now - shown_at >= REPORT_EVERY_S:
                shown, shown_at = self.status_line, now
                report(shown)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(0.05)
        return self.outcome

    def cancel(self) -> None:
        """Stop the helper and whatever it started (SIGTERM to its process group, then kill)."""
        self._cancelled.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        engine.signal_group(proc, signal.SIGTERM)
        timer = threading.Timer(KILL_AFTER_S, engine.signal_group, (proc, getattr(signal, "SIGKILL", signal.SIGTERM)))
        timer.daemon = True
        timer.start()

    # -- what subclasses fill in

    def on_line(self, line: str) -> None:
        self.stage = line.strip()[:120]

    def poll(self) -> None:
        pass

    def after_exit(self, rc: int, lines: list[str]) -> dict | None:
        """Reader thread, once the process has ended (never touches bpy); its dict reaches finish()."""
        return None

    def finish(self, rc: int, extra: dict) -> dict:
        if rc == 0:
            return {"status": "done", "message": f"{self.title}: done."}
        return {"status": "error", "message": f"{self.title} failed (exit code {rc}):\n" + self.tail()}

    # -- shown to the user

    def tail(self, n: int = 12) -> str:
        return "\n".join(list(self.lines)[-n:])

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def fraction(self) -> float | None:
        if self.total and self.done is not None:
            return max(0.0, min(1.0, self.done / self.total))
        return None

    @property
    def status_line(self) -> str:
        return f"{self.title}: {self.stage}"




def elapsed_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ----------------------------------------------------------------------------------------- engine set-up


def setup_python() -> str:
    """The Python that creates the engine venv: Blender's own (Python 3.11 in Blender 4.2-5.0); with bpy as a
    module, the Python running it."""
    return sys.executable


def default_venv_dir() -> Path:
    """<extension user folder>/venv: where the engine looks for it when Python is left empty."""
    return Path(prefs.user_dir()) / "venv"


class SetupProcess(HelperProcess):
    """`<python> -m lipsync_core.setup_env VENV --json`: the same routine as `python build.py setup`."""

    kind = "setup"
    title = "Engine set-up"

    def __init__(self, base_python: str, venv_dir: Path) -> None:
        core = engine.core_dir()
        if core is None:
            raise Refused("lipsync_core is missing from the extension; reinstall the Lip Sync extension.")
        self.venv_dir = Path(venv_dir)
        self.packages = 0
        self.result: dict | None = None
        self.error: str | None = None
        env = engine.subprocess_env()
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        super().__init__([base_python, "-m", "lipsync_core.setup_env", str(self.venv_dir), "--json"], env,
                         str(core))

    def on_line(self, line: str) -> None:
        ev = _json_event(line)
        if ev is None:  # a traceback or a stray print: kept in .lines for the error message
            return
        kind = ev.get("event")
        if kind == "log":
            msg = str(ev.get("message", ""))
            if msg.startswith("Collecting"):
                self.packages += 1
            self.stage = _setup_stage(msg, self.packages)
            print(f"lipsync set-up: {msg}")
        elif kind == "result":
            self.result = ev
        elif kind == "error":
            self.error = str(ev.get("message") or "unknown error")

    def after_exit(self, rc: int, lines: list[str]) -> dict | None:
        results = [ev for ev in map(_json_event, lines) if ev and ev.get("event") == "result"]
        if rc != 0 or not results:
            return None
        python = str(results[-1].get("python") or engine.venv_python(self.venv_dir))
        try:  # torch's first import takes seconds: done here on the reader thread, not in Blender's UI
            return {"probe": engine.probe_python(python, use_cache=False)}
        except engine.EngineError as exc:
            return {"probe_error": str(exc)}

    def _python(self) -> str:
        if self.result and self.result.get("python"):
            return str(self.result["python"])
        return str(engine.venv_python(self.venv_dir))

    def finish(self, rc: int, extra: dict) -> dict:
        if rc != 0 or self.result is None:
            detail = self.error or (self.tail() or f"exit code {rc}")
            hint = ""
            if "pip failed" in detail:
                # the report's first line is what a popup shows: pip's own ERROR line, then the rest
                errors = [ln.strip() for ln in detail.splitlines() if ln.strip().startswith("ERROR")]
                if errors:
                    detail = f"pip failed: {errors[-1]}\n{detail}"
                hint = ("\nCheck the internet connection and free disk space, then press Set up engine again "
                        "(finished packages are kept).")
            return {"status": "error", "message": f"Engine set-up failed: {detail}{hint}"}
        python = self._python()
        if "probe" in extra:
            info = extra["probe"]
            msg = (f"Engine ready: torch {info.get('torch')}, CUDA: {'yes' if info.get('cuda') else 'no'}; "
                   f"Python set to {python}")
            return {"status": "done", "python": python, "message": msg, "info": info}
        problem = extra.get("probe_error") or extra.get("after_exit_error") or "torch was not checked"
        return {"status": "done", "python": python, "level": "WARNING",
                "message": f"Engine venv made at {self.venv_dir}, Python set to it, but torch does not work there "
                           f"yet: {problem}"}


def _json_event(line: str) -> dict | None:
    if not line.lstrip().startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def _setup_stage(msg: str, packages: int) -> str:
    if msg.startswith("creating"):
        return "creating the Python environment"
    if msg.startswith("up to date"):
        return "already up to date"
    if msg.startswith(("Collecting", "Downloading")):
        return f"downloading packages ({packages}): {msg.split()[1] if len(msg.split()) > 1 else ''}"
    if msg.startswith("Installing collected"):
        return "installing the downloaded packages"
    if msg.startswith("Successfully"):
        return "installed"
    if msg.startswith("installing:"):
        return "starting pip"
    return msg[:100]


# ----------------------------------------------------------------------------------------- operators


def busy() -> bool:
    return current is not None


def stop_current(wait_s: float = 10.0) -> None:
    """Cancel the running helper (unregister, file quit) and wait a little for it to end."""
    global current
    task = current
    if task is None:
        return
    task.cancel()
    if task.proc is not None:
        try:
            task.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            engine.signal_group(task.proc, getattr(signal, "SIGKILL", signal.SIGTERM))
    current = None


def redraw_preferences(context=None) -> None:
    wm = (context or bpy.context).window_manager
    for window in getattr(wm, "windows", []):
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


class HelperOperator(BlockingOrModal):
    """Shared by Set up engine and Download weights: blocking in execute(), modal with a timer from invoke()."""

    @classmethod
    def poll(cls, context):
        return current is None

    def make(self, context) -> HelperProcess:  # raises Refused
        raise NotImplementedError

    def apply(self, context, task: HelperProcess, outcome: dict) -> None:
        """Main thread, after a successful helper: write the preferences."""

    def execute(self, context):
        global current
        try:
            task = self.make(context).start()
        except Refused as exc:
            return self._refuse(str(exc), task_kind=self.kind)
        current = task
        try:
            outcome = task.wait(report=lambda text: print(f"lipsync: {text}"))
        except BaseException:  # Ctrl+C in a background run: the helper must not outlive it
            task.cancel()
            raise
        finally:
            current = None
        return self._conclude(context, task, outcome)

    def _begin(self, context):
        global current
        try:
            self._task = self.make(context).start()
        except Refused as exc:
            return self._refuse(str(exc), task_kind=self.kind)
        current = self._task
        last_message.pop(self.kind, None)
        self._timer = context.window_manager.event_timer_add(TIMER_S, window=context.window)
        redraw_preferences(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._task.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = self._task.drain()
        redraw_preferences(context)
        if not finished:
            return {"PASS_THROUGH"}  # other handlers' timers must still reach them
        self._end_modal(context)
        return self._conclude(context, self._task, self._task.outcome)

    def cancel(self, context):
        """Blender ends the modal (quit, window closed): stop the helper."""
        self._task.cancel()
        self._end_modal(context)

    def _end_modal(self, context) -> None:
        global current
        if current is self._task:
            current = None
        context.window_manager.event_timer_remove(self._timer)

    def _conclude(self, context, task: HelperProcess, outcome: dict):
        status = outcome.get("status")
        if status == "done":
            try:
                self.apply(context, task, outcome)
            except Exception as exc:  # noqa: BLE001  (e.g. preferences gone: say so, never crash the UI)
                outcome = {"status": "error", "message": f"{task.title} finished but applying it failed: {exc!r}"}
                status = "error"
        level = outcome.get("level") or {"done": "INFO", "cancelled": "WARNING"}.get(status, "ERROR")
        message = outcome.get("message") or status
        last_message[self.kind] = (level, message)
        if level != "INFO":
            print(f"lipsync: {message}")
        self.report({level}, message)
        redraw_preferences(context)
        return {"FINISHED"} if status == "done" else {"CANCELLED"}

    def _refuse(self, message: str, task_kind: str):
        last_message[task_kind] = ("ERROR", message)
        self.report({"ERROR"}, message)
        return {"CANCELLED"}


class LIPSYNC_OT_setup_engine(HelperOperator, bpy.types.Operator):
    """Create the engine's Python environment (torch and the engine's packages, several GB) in the extension's
    user folder and point the Python preference at it"""

    bl_idname = "lipsync.setup_engine"
    bl_label = "Set up Engine"
    bl_options = {"REGISTER"}
    kind = "setup"

    venv_dir: StringProperty(
        name="Folder", description="Where to make the venv; empty: 'venv' in the extension's user folder",
        subtype="DIR_PATH", options={"SKIP_SAVE", "HIDDEN"},
    )

    def make(self, context) -> HelperProcess:
        if sys.version_info[:2] != (3, 11):
            raise Refused(f"Blender's Python is {sys.version.split()[0]}; the engine needs Python 3.11. Make the "
                          "environment with `python build.py setup` from a checkout and set Python to its "
                          ".venv, or use Blender 4.2-5.0.")
        base = setup_python()
        if not base or not Path(base).is_file():
            raise Refused(f"Blender's Python was not found ({base!r}); set up the engine with `python build.py "
                          "setup` and set Python to its .venv.")
        target = Path(bpy.path.abspath(self.venv_dir)) if self.venv_dir.strip() else default_venv_dir()
        print(f"lipsync: setting up the engine in {target} with {base}")
        return SetupProcess(base, target)

    def apply(self, context, task: HelperProcess, outcome: dict) -> None:
        p = prefs.get(context)
        if p is None:
            raise RuntimeError("the Lip Sync preferences are not available")
        p.python_path = outcome["python"]
        prefs._last_check.pop(outcome["python"], None)
        if "info" in outcome:
            info = outcome["info"]
            prefs._last_check[outcome["python"]] = (
                f"torch {info['torch']} (Python {info.get('python', '?')}), CUDA: {'yes' if info['cuda'] else 'no'}"
                f", MPS: {'yes' if info.get('mps') else 'no'}")


class LIPSYNC_OT_cancel_helper(bpy.types.Operator):
    """Stop the running engine set-up or weights download (a download resumes where it stopped next time)"""

    bl_idname = "lipsync.cancel_helper"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return current is not None

    def execute(self, context):
        current.cancel()
        self.report({"INFO"}, f"Cancelling: {current.title.lower()}...")
        return {"FINISHED"}


def draw_status(layout, kind: str) -> None:
    """The running helper's progress (when it is `kind`) or its last message, for the preferences."""
    task = current
    if task is not None and task.kind == kind:
        box = layout.box()
        frac = task.fraction
        text = f"{task.status_line}  ({elapsed_text(task.elapsed)})"
        if hasattr(box, "progress") and frac is not None:
            box.progress(factor=frac, type="BAR", text=text)
        else:
            box.label(text=text, icon="TIME")
        box.operator(LIPSYNC_OT_cancel_helper.bl_idname, icon="CANCEL")
        return
    if kind in last_message:
        level, msg = last_message[kind]
        icon = {"INFO": "CHECKMARK", "WARNING": "ERROR"}.get(level, "CANCEL")
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        for i, line in enumerate(lines[:6]):
            layout.label(text=line[:200], icon=icon if i == 0 else "BLANK1")


classes = (LIPSYNC_OT_setup_engine, LIPSYNC_OT_cancel_helper)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    stop_current()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""What the preferences' long buttons (Set up Engine, Download Weights) share: a task on the add-on's runner,
the operator base that runs it blocking or modal, the Cancel button and the status lines the preferences draw.

A task never touches torch in Blender's Python: it runs one helper process. Its output lines are handled on the
main thread (the modal operator's timer in the interface, a plain loop in background mode and from scripts),
which is also the only one that writes preferences. One helper at a time.
"""

from __future__ import annotations

import time

import bpy

from .modal import BlockingOrModal
from .runner import Runner, RunnerError

TIMER_S = 0.2
KILL_AFTER_S = 5.0  # a cancelled helper gets this long after SIGTERM before it is killed
REPORT_EVERY_S = 2.0  # blocking runs print the status to the terminal at most this often

current: HelperTask | None = None  # the running helper (set-up or download); plain Python, not bpy data
last_message: dict[str, tuple[str, str]] = {}  # helper kind -> (report level, message) for the preferences


class Refused(Exception):
    """The operator cannot start: the message says what to do."""


class HelperTask:
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
        self.runner: Runner | None = None
        self.stage = "starting"
        self.done: int | None = None
        self.total: int | None = None
        self.returncode: int | None = None
        self.outcome: dict | None = None  # {"status": "done"|"error"|"cancelled", "message": ..., ...}
        self.started = time.monotonic()

    # -- life cycle

    def start(self) -> HelperTask:
        self.runner = Runner(self.argv, env=self.env, cwd=self.cwd, stderr="merge", kill_after_s=KILL_AFTER_S,
                             on_exit=self.after_exit)
        try:
            self.runner.start()
        except RunnerError as exc:
            raise Refused(str(exc)) from exc
        return self

    @property
    def proc(self):
        return self.runner.proc if self.runner is not None else None

    @property
    def lines(self) -> list[str]:
        """The helper's last non-empty output lines."""
        return list(self.runner.output) if self.runner is not None else []

    def drain(self) -> bool:
        """Handle queued output (main thread); True once the helper has ended and `outcome` is set."""
        if self.outcome is not None:
            return True
        new, ended = self.runner.drain()
        for line in new:
            if line.strip():
                self.on_line(line)
        if not ended:
            self.poll()
            return False
        self.returncode = self.runner.returncode
        if self.runner.cancelled:
            self.outcome = {"status": "cancelled", "message": f"{self.title} cancelled."}
        else:
            extra = self.runner.exit_result
            if isinstance(extra, Exception):
                extra = {"after_exit_error": repr(extra)}
            self.outcome = self.finish(self.returncode, extra or {})
        return True

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
        if self.runner is not None:
            self.runner.cancel()

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
        return self.runner.tail(n) if self.runner is not None else ""

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
        except Exception:  # noqa: BLE001  (TimeoutExpired: kill it, the add-on is going away)
            task.runner.kill()
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

    def make(self, context) -> HelperTask:  # raises Refused
        raise NotImplementedError

    def apply(self, context, task: HelperTask, outcome: dict) -> None:
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

    def _request_cancel(self) -> None:
        self._task.cancel()

    def _advance(self, context) -> bool:
        finished = self._task.drain()
        redraw_preferences(context)
        return finished

    def _finish(self, context):
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

    def _conclude(self, context, task: HelperTask, outcome: dict):
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


classes = (LIPSYNC_OT_cancel_helper,)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    stop_current()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""Operators: lipsync.detect_segments, lipsync.sync, lipsync.cancel, lipsync.restore_original.

In the interface a job runs modal: the worker in a subprocess, a thread that only queues its events, and a
timer in the modal that applies them here on the main thread. From scripts (EXEC) and in background mode the
same steps run to completion before the operator returns. One job at a time (poll).
"""

from __future__ import annotations

import bpy

from . import apply, compat, jobs, snapshot
from .edit_plan import plan_cuts
from .job_steps import JobSteps, Outcome
from .modal import BlockingOrModal
from .plan import PlanError

TIMER_S = 0.1


def prepare(context, command: str):
    """Snapshot + cheap checks on the main thread; raises PlanError."""
    snap = snapshot.take_edit(context, command)
    if command == "sync":
        plan_cuts(snap)  # every cut's problems, listed together, before anything starts
    return snap


def start_job(context, command: str, steps: JobSteps | None = None) -> jobs.Job:
    """Start a job (`steps`, or the command's own) on its thread (what the modal operator does); raises
    PlanError for bad input."""
    steps = steps or JobSteps(prepare(context, command), command)
    job = jobs.start(steps, steps.snap.scene)
    _show(context, job, running=True)
    return job


def pump(context, job: jobs.Job) -> bool:
    """Apply the queued events to the UI state (main thread); True once the job has finished."""
    if job.drain():
        _show(context, job, running=not job.finished)
    return job.finished


def conclude(context, job_or_steps, outcome: Outcome) -> tuple[set, str, str]:
    """Put a finished job on the timeline; returns (operator result, report level, message)."""
    steps = job_or_steps.steps if isinstance(job_or_steps, jobs.Job) else job_or_steps
    if isinstance(job_or_steps, jobs.Job):
        jobs.release(job_or_steps)
    snap = steps.snap
    scene = bpy.data.scenes.get(snap.scene)
    if outcome.status == "done" and scene is None and steps.command != "export":  # export: its files are written
        steps.discard()
        outcome = Outcome("error", f"Scene '{snap.scene}' was renamed or removed while lip sync ran; nothing was "
                                   "changed.")
    if outcome.status == "done":
        try:
            if steps.command == "export":  # nothing to put on the timeline
                summary = outcome.message
            elif steps.command == "sync":
                summary = apply.apply_edit(scene, snap, outcome)
            else:
                summary = apply.apply_detect(scene, snap, outcome)
            result, level, msg = {"FINISHED"}, "WARNING" if outcome.warning else "INFO", f"Lip Sync: {summary}"
        except PlanError as exc:  # refused before any change: its files are of no use
            steps.discard()
            result, level, msg = {"CANCELLED"}, "ERROR", str(exc)
        except Exception as exc:  # noqa: BLE001  (a bug; strips may point at the files, so they stay)
            result, level, msg = {"CANCELLED"}, "ERROR", f"Applying the lip-sync results failed: {exc!r}"
    elif outcome.status == "cancelled":
        result, level, msg = {"CANCELLED"}, "WARNING", outcome.message or "Lip sync cancelled."
    else:
        result, level, msg = {"CANCELLED"}, "ERROR", outcome.message
    if scene is not None:
        st = scene.lipsync
        st.running, st.message = False, msg.splitlines()[0] if msg else ""
        st.stage = "" if result == {"FINISHED"} else st.stage
    _tag_redraw(context)
    return result, level, msg


def _show(context, job: jobs.Job, running: bool) -> None:
    scene = bpy.data.scenes.get(job.scene_name)
    if scene is not None:
        st = scene.lipsync
        st.running, st.stage, st.progress = running, job.status_line, job.fraction
    compat.set_status(context, f"Lip Sync: {job.status_line}  (Esc to cancel)" if running else None)
    wm = context.window_manager
    if running and wm is not None and not bpy.app.background:
        wm.progress_update(int(job.fraction * 100))
    _tag_redraw(context)


def _tag_redraw(context) -> None:
    screen = getattr(context, "screen", None)
    if screen is None:
        return
    for area in screen.areas:
        if area.type == "SEQUENCE_EDITOR":
            area.tag_redraw()


class JobOperator(BlockingOrModal):
    command = "sync"

    @classmethod
    def poll(cls, context):
        return not jobs.busy() and compat.edit_scene(context) is not None

    def make_steps(self, context) -> JobSteps:
        """The job to run (raises PlanError): the command's own; Export Batch makes its own."""
        return JobSteps(prepare(context, self.command), self.command)

    def execute(self, context):
        try:
            steps = self.make_steps(context)
        except PlanError as exc:
            return self._fail(context, str(exc))
        last = [""]

        def emit(ev: dict) -> None:  # synchronous run: stage changes to the terminal
            if ev.get("event") == "progress" and ev.get("stage") != last[0]:
                last[0] = ev.get("stage")
                print(f"lipsync: {last[0]}")

        steps.emit = emit
        outcome = steps.run()
        result, level, msg = conclude(context, steps, outcome)
        self.report({level}, msg)
        return result

    def _begin(self, context):
        """Start the job and the timer that polls it; the caller adds the modal handler."""
        try:
            self._job = start_job(context, self.command, self.make_steps(context))
        except PlanError as exc:
            return self._fail(context, str(exc))
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _request_cancel(self) -> None:
        self._job.cancel()
        self.report({"INFO"}, "Cancelling lip sync...")

    def _advance(self, context) -> bool:
        return pump(context, self._job)

    def _finish(self, context):
        # Returning FINISHED makes Blender push this operator's one undo step, right after the apply.
        result, level, msg = conclude(context, self._job, self._job.outcome)
        self.report({level}, msg)
        return result

    def cancel(self, context):
        """Blender ends the modal (file load, window closed): stop the job, leave the timeline alone."""
        self._job.cancel()
        self._job.wait(timeout=20)
        self._job.steps.discard()
        jobs.release(self._job)
        self._end_modal(context)

    def _end_modal(self, context) -> None:
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        compat.set_status(context, None)

    def _fail(self, context, msg: str):
        compat.edit_scene(context).lipsync.message = msg.splitlines()[0]
        self.report({"ERROR"}, msg)
        return {"CANCELLED"}


class LIPSYNC_OT_detect_segments(JobOperator, bpy.types.Operator):
    """Find where the selected movie strips show a face and mark each face / no-face segment with timeline markers"""

    bl_idname = "lipsync.detect_segments"
    bl_label = "Detect Segments"
    bl_options = {"REGISTER", "UNDO"}
    command = "detect"


class LIPSYNC_OT_sync(JobOperator, bpy.types.Operator):
    """Lip-sync every selected movie strip to the selected dub sound strips over it; each strip then shows its
    result file (only cuts whose inputs changed are made again)"""

    bl_idname = "lipsync.sync"
    bl_label = "Lip Sync"
    bl_options = {"REGISTER", "UNDO"}
    command = "sync"


class LIPSYNC_OT_cancel(bpy.types.Operator):
    """Stop the running lip-sync job; nothing it made so far is kept"""

    bl_idname = "lipsync.cancel"
    bl_label = "Cancel Lip Sync"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return jobs.busy()

    def execute(self, context):
        jobs.cancel_current()
        self.report({"INFO"}, "Cancelling lip sync...")
        return {"FINISHED"}


class LIPSYNC_OT_restore_original(bpy.types.Operator):
    """Show the original file again in the selected strips that show a lip-synced result, and unmute the sound
    Lip Sync muted for them (result files stay on disk: a new Lip Sync with the same inputs reuses them)"""

    bl_idname = "lipsync.restore_original"
    bl_label = "Restore Original"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return not jobs.busy() and compat.edit_scene(context) is not None

    def execute(self, context):
        scene = compat.edit_scene(context)
        strips = [s for s in snapshot.top_strips(scene) if s.select and snapshot.shows_result(s)]
        if not strips:
            self.report({"ERROR"}, "Select the strips that show a lip-synced result to restore their original.")
            return {"CANCELLED"}
        for strip in strips:
            for s in apply.muted_for(scene, strip.name):
                s.mute = False
                del s[apply.MUTED_FOR]
            apply.restore_original(strip)
        self.report({"INFO"}, f"Lip Sync: {len(strips)} strip(s) show their original again")
        return {"FINISHED"}


classes = (LIPSYNC_OT_detect_segments, LIPSYNC_OT_sync, LIPSYNC_OT_cancel, LIPSYNC_OT_restore_original)


register, unregister = bpy.utils.register_classes_factory(classes)

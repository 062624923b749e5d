"""Operators: lipsync.export_batch (a farm batch folder for the cuts a press would sync now) and
lipsync.import_batch (the farm's finished results placed as a press places them, in one undo step).

The export plans exactly as a press does (snapshot.take_edit, edit_plan.plan_cuts: the same selection, the same
problem list, the same options); the engine worker mixes each cut's dub into a WAV and writes JOBS.json
(worker command export_batch), run as a press's job is (modal with progress and Esc after the file browser,
blocking from scripts). The import checks every job's cuts against their content key at export and
hands the good ones to apply.apply_edit, the press's own apply.
"""

from __future__ import annotations

import dataclasses
import os

import bpy
from bpy.props import BoolProperty, StringProperty

from . import apply, batch_io, compat, jobs, prefs, snapshot
from .edit_plan import plan_cuts
from .job_steps import JobSteps, Outcome
from .ops import JobOperator
from .plan import PlanError


def _folder(path: str) -> str:
    return os.path.normpath(bpy.path.abspath(path)) if path.strip() else ""


def _last_line(exc: Exception) -> str:
    lines = [ln.lstrip("- ") for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[1:]) if len(lines) > 1 and "problem(s)" in lines[0] else (lines[0] if lines else "")


class _FolderOperator:
    directory: StringProperty(name="Folder", subtype="DIR_PATH")
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return not jobs.busy() and compat.edit_scene(context) is not None

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def _fail(self, context, msg: str):
        compat.edit_scene(context).lipsync.message = msg.splitlines()[0]
        self.report({"ERROR"}, msg)
        return {"CANCELLED"}


class LIPSYNC_OT_export_batch(JobOperator, bpy.types.Operator):
    """Write a batch for a render farm into a folder: JOBS.json with one job per cut that Lip Sync would sync now
    (the same selection and settings), each cut's dub mixed into one WAV. Run it with
    python -m lipsync_core batch JOBS.json, then Import Batch Results"""

    bl_idname = "lipsync.export_batch"
    bl_label = "Export Batch"
    bl_options = {"REGISTER"}
    command = "export"

    directory: StringProperty(name="Folder", subtype="DIR_PATH")
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    path_map: StringProperty(
        name="Path Map",
        description="Rewrites absolute paths for the farm, HERE=FARM, several separated by ';' "
                    "(e.g. /mnt/projects=/shared/projects); empty: the preference Farm Path Map")
    from_browser: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        p = prefs.get(context)
        if not self.path_map and p is not None:
            self.path_map = p.farm_path_map
        self.from_browser = True
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if self.from_browser and not bpy.app.background and context.window is not None:
            result = self._begin(context)  # chosen in the file browser: mix the dubs while Blender stays usable
            if result == {"RUNNING_MODAL"}:
                context.window_manager.modal_handler_add(self)
            return result
        return super().execute(context)  # scripts, background: to the end before returning

    def make_steps(self, context) -> JobSteps:
        folder = _folder(self.directory)
        if not folder:
            raise PlanError("Choose the folder to export the batch into.")
        p = prefs.get(context)
        snap = snapshot.take_edit(context, "sync")
        plans = plan_cuts(snap)  # the press's own problem list: nothing is written when there is one
        rules = batch_io.parse_path_map(self.path_map or (p.farm_path_map if p is not None else ""))
        dubs = {c.name: [d.name for d in snap.dubs.get(c.name, ())] for c in snap.cuts}
        exp = batch_io.build_export(snap, plans, folder, rules, dubs)
        job = {"command": "export_batch", "folder": folder, "jobs": exp.jobs, "mixes": exp.mixes,
               "files": {batch_io.MANIFEST: exp.manifest}}
        there = batch_io.map_path(folder, rules)  # the folder as the farm sees it
        note = (f"exported {len(exp.jobs['jobs'])} job(s) for {len(plans)} cut(s) to "
                f"{os.path.join(folder, batch_io.JOBS)}; on the farm run: python -m lipsync_core batch "
                f"{there}/{batch_io.JOBS} --ray auto --report {there}/{batch_io.REPORT}")
        if exp.unmapped:
            note += ("; no path map entry covers " + ", ".join(exp.unmapped)
                     + " (the farm must see them at the same path)")
        return JobSteps(snap, "export", worker_job=job, note=note, warning=bool(exp.unmapped))


class LIPSYNC_OT_import_batch(_FolderOperator, bpy.types.Operator):
    """Place the finished results of an exported batch on the timeline, as Lip Sync would (one undo step); jobs
    that failed, are not finished, or whose strips changed since the export are named and left alone"""

    bl_idname = "lipsync.import_batch"
    bl_label = "Import Batch Results"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        folder = _folder(self.directory)
        scene = compat.edit_scene(context)
        if not folder:
            return self._fail(context, "Choose the folder Export Batch wrote.")
        try:
            state = batch_io.read_folder(folder)
        except PlanError as exc:
            return self._fail(context, str(exc))
        # (short: the cuts and why, for the first line; the whole line)
        skipped = [(f"{', '.join(cuts)} (failed)", f"job {jid} ({', '.join(cuts)}) failed on the farm: {msg}")
                   for jid, cuts, msg in state.failed]
        skipped += [(f"{', '.join(cuts)} (not finished)", f"job {jid} ({', '.join(cuts)}): {why}")
                    for jid, cuts, why in state.missing]
        good, snap = [], None
        for f in state.finished:
            for cut in f.cuts:
                try:
                    one = snapshot.take_named(context, scene, cut, f.dubs.get(cut, []))
                    (plan,) = plan_cuts(one)
                except PlanError as exc:
                    skipped.append((f"{cut} (changed)", f"'{cut}': {_last_line(exc)}"))
                    continue
                if plan.key != f.key:
                    skipped.append((f"{cut} (changed)", f"'{cut}' changed since the export (its source range, dub, "
                                    "segments, face, options or checkpoint): export it again"))
                    continue
                good.append((f, plan, one.cuts[0]))
                snap = snap or one
        details = "\n- ".join(d for _, d in skipped)
        if not good:
            return self._fail(context, "Import Batch Results placed nothing:\n- "
                              + (details or "the batch has no jobs"))
        try:
            for f, plan, _ in good:
                batch_io.place_result(f.output, plan, f.clip)
        except OSError as exc:
            return self._fail(context, f"Cannot copy a result into {snap.out_dir}: {exc}; the timeline was not "
                                       "changed.")
        snap = dataclasses.replace(snap, cuts=tuple(c for _, _, c in good),
                                   dubs={c.name: () for _, _, c in good})
        try:
            summary = apply.apply_edit(scene, snap, Outcome("done", cuts=[p for _, p, _ in good],
                                                            made={p.cut: f.clip for f, p, _ in good}))
        except PlanError as exc:
            return self._fail(context, str(exc))
        text = f"Lip Sync: {summary}"
        if skipped:
            text += f"; not placed: {', '.join(short for short, _ in skipped)}\n- {details}"
        scene.lipsync.message = text.splitlines()[0]
        self.report({"WARNING" if skipped else "INFO"}, text)
        return {"FINISHED"}


classes = (LIPSYNC_OT_export_batch, LIPSYNC_OT_import_batch)


register, unregister = bpy.utils.register_classes_factory(classes)

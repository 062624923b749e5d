"""Add-on preferences: which Python runs the engine, which checkpoint, which device; the Check button, and the
Set up Engine / Download Weights buttons (setup_ops.py, weights_ops.py), drawn by their bl_idname so that this
module imports neither (they read the preferences from here)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from . import helper_ops, worker_client

PACKAGE = __package__
last_check: dict[str, str] = {}  # python path -> the last Check (or set-up) answer, shown in the preferences

# The generator checkpoints the engine knows (lipsync_core.weights.KNOWN); s3fd is the detector, not offered here.
GENERATORS = (
    ("wav2lip_gan", "Wav2Lip GAN", "Sharper mouth, slightly weaker sync: the usual choice (~436 MB)"),
    ("wav2lip", "Wav2Lip", "Most accurate sync, slightly blurrier mouth (~436 MB)"),
)
# The result encodings (the engine's `codec` option, lipsync_core.media.encoder.CODECS); plan.RESULT_EXTENSIONS
# names the file each is written as.
ENCODINGS = (
    ("H264", "H.264", "H.264 + AAC in .mp4, CRF 18: small files, any player (8-bit 4:2:0; an odd-"
                       "sized picture 4:4:4, to keep its size)"),
    ("PRORES", "ProRes 422 HQ", "ProRes 422 HQ + PCM in .mov: an intermediate for grading; 10-bit 4:2:2, so a "
                                "10-bit source keeps its 10 bits (large files)"),
    ("FFV1", "FFV1 (lossless)", "FFV1 + FLAC in .mkv: lossless, the source's own chroma and bit depth; outside the "
                                "mouth every pixel is the source's (very large files)"),
)
LICENCE_NOTE = "Wav2Lip weights: personal / research / non-commercial use only (see the licence)."


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(PACKAGE)
    return addon.preferences if addon is not None else None


def user_dir() -> str:
    """The extension's own writable folder (caches, the engine venv); a temp folder outside an extension."""
    try:
        return bpy.utils.extension_path_user(PACKAGE, create=True)
    except (ValueError, RuntimeError):  # loaded as a plain add-on from a checkout
        path = Path(tempfile.gettempdir()) / "lipsync-blender"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


def _user_dir_if_any() -> Path | None:
    try:
        return Path(bpy.utils.extension_path_user(PACKAGE, create=False))
    except (ValueError, RuntimeError):
        return None


def online_access() -> bool:
    """Blender's "Allow Online Access" preference (read-only in Python; tests replace this function)."""
    return bool(getattr(bpy.app, "online_access", True))


def found_python() -> tuple[str, str] | None:
    """(path, where from) of an engine Python found without the preference."""
    return worker_client.find_python(_user_dir_if_any())


def engine_python(p) -> str:
    """The preference when set, else the automatic choice; '' when there is none."""
    if p is not None and p.python_path.strip():
        return os.path.normpath(bpy.path.abspath(p.python_path.strip()))
    found = found_python()
    return found[0] if found else ""


class LIPSYNC_OT_check_python(bpy.types.Operator):
    """Run the engine's worker once (its check command) and report whether it has torch, its version and whether
    CUDA / MPS are available"""

    bl_idname = "lipsync.check_python"
    bl_label = "Check"
    bl_options = {"REGISTER"}

    def execute(self, context):
        python = engine_python(get(context))
        if not python:
            self.report({"ERROR"}, "No engine Python set or found; set Python to one with torch installed.")
            return {"CANCELLED"}
        try:
            info = worker_client.check_python(python, use_cache=False)
        except worker_client.WorkerError as exc:
            last_check[python] = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        text = worker_client.describe(info)
        last_check[python] = text
        self.report({"INFO"}, text)
        return {"FINISHED"}


class LipsyncPreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    python_path: StringProperty(
        name="Python",
        description="The Python with torch that runs the lip-sync engine; empty: found automatically "
                    "(LIPSYNC_PYTHON, a checkout's .venv, or the engine venv in the extension's user folder)",
        subtype="FILE_PATH",
    )
    checkpoint_path: StringProperty(
        name="Checkpoint",
        description="Wav2Lip generator weights (.pth)",
        subtype="FILE_PATH",
    )
    device: EnumProperty(
        name="Device",
        items=[("AUTO", "Auto", "CUDA if available, else Apple MPS, else CPU"),
               ("CUDA", "CUDA", "NVIDIA GPU"),
               ("CPU", "CPU", "Processor only (slow but always there)"),
               ("MPS", "MPS", "Apple GPU")],
        default="AUTO",
    )
    result_encoding: EnumProperty(
        name="Result encoding",
        description="How Lip Sync writes its result files (same size and frame rate as the source)",
        items=list(ENCODINGS),
        default=ENCODINGS[0][0],
    )
    farm_path_map: StringProperty(
        name="Farm Path Map",
        description="Export Batch rewrites absolute paths for the render farm: HERE=FARM, several separated by ';' "
                    "(e.g. /mnt/projects=/shared/projects); empty: the farm sees the same paths",
    )
    weights_model: EnumProperty(
        name="Weights",
        description="Which Wav2Lip generator Download Weights fetches",
        items=list(GENERATORS),
        default=GENERATORS[0][0],
    )

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        row.prop(self, "python_path")
        row.operator(LIPSYNC_OT_check_python.bl_idname, icon="CHECKMARK")
        python = engine_python(self)
        if not self.python_path.strip():
            found = found_python()
            if found:
                layout.label(text=f"Automatic: {found[0]} ({found[1]})", icon="INFO")
            else:
                layout.label(text="No Python with torch found: set one (python build.py setup makes "
                                  ".venv/bin/python in a checkout)", icon="ERROR")
        if python in last_check:
            layout.label(text=last_check[python])
        _draw_setup(layout)
        layout.prop(self, "checkpoint_path")
        _draw_weights(self, layout)
        layout.prop(self, "device")
        layout.prop(self, "result_encoding")
        layout.prop(self, "farm_path_map")


def _draw_setup(layout) -> None:
    """Module functions, not methods: tests draw the preferences with a stand-in `self`."""
    box = layout.box()
    row = box.row()
    row.operator("lipsync.setup_engine", icon="CONSOLE")
    row.label(text=f"Installs torch and the engine (several GB) into {_setup_target()}")
    helper_ops.draw_status(box, "setup")


def _draw_weights(p, layout) -> None:
    box = layout.box()
    row = box.row(align=True)
    row.prop(p, "weights_model", text="")
    row.operator("lipsync.download_weights", icon="IMPORT")
    if not online_access():
        box.label(text="Online access is off: allow it in Preferences > System > Network, or download "
                       "the weights by hand and set Checkpoint", icon="ERROR")
    box.label(text=LICENCE_NOTE, icon="INFO")
    helper_ops.draw_status(box, "weights")


def _setup_target() -> str:
    path = _user_dir_if_any()
    return str(path / "venv") if path is not None else "the extension's user folder"


classes = (LIPSYNC_OT_check_python, LipsyncPreferences)


register, unregister = bpy.utils.register_classes_factory(classes)

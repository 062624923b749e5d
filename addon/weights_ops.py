"""Download weights from Blender ("Download weights" in the preferences).

Runs `<engine python> -m lipsync_core weights download NAME --dest <extension user folder>/checkpoints`, the
same command as the CLI: it resumes a partial file, verifies it (size/sha256 where recorded, always the tensor
structure, which needs torch: hence the engine Python) and only then moves it into place. Progress is the size
of its growing `<file>.part` against the recorded size; the command prints `NAME: PATH` when done.

Blender's "Allow Online Access" (Preferences > System > Network, `bpy.app.online_access`) is respected: with it
off the operator refuses and says how to get the weights by hand (`prefs.online_access()`).
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from . import prefs, worker_client
from .helper_ops import HelperOperator, HelperTask, Refused
from .prefs import GENERATORS
from .runner import RunnerError, run_to_end

INFO_CODE = (
    "import json, sys; from lipsync_core.weights import get; e = get(sys.argv[1]); "
    "print(json.dumps({'filename': e.filename, 'size': e.size, 'licence_short': e.licence_short, "
    "'licence': e.licence}))"
)


def offline_message(name: str) -> str:
    return (f"Online access is off in Blender: allow it in Preferences > System > Network > Allow Online Access, "
            f"or download the weights yourself (`python -m lipsync_core weights download {name}` in a checkout, "
            "or from a mirror listed in checkpoints/README.md) and set Checkpoint to the .pth file.")


def default_dir() -> Path:
    """<extension user folder>/checkpoints."""
    return Path(prefs.user_dir()) / "checkpoints"


def entry_info(python: str, name: str) -> dict:
    """File name, recorded size and licence of checkpoint `name`, asked from the bundled registry (no torch)."""
    core = worker_client.core_dir()
    try:
        rc, lines = run_to_end([python, "-c", INFO_CODE, name], 60.0, env=worker_client.subprocess_env(),
                               cwd=str(core) if core else None)
        info = json.loads(lines[-1]) if rc == 0 else {}
    except (RunnerError, ValueError, IndexError):
        info = {}
    info.setdefault("filename", f"{name}.pth")
    info.setdefault("size", None)
    info.setdefault("licence_short", "non-commercial (Wav2Lip)")
    return info


def mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.0f} MB"


class DownloadTask(HelperTask):
    kind = "weights"
    title = "Weights download"

    def __init__(self, python: str, name: str, dest: Path, info: dict) -> None:
        core = worker_client.core_dir()
        if core is None:
            raise Refused("lipsync_core is missing from the extension; reinstall the Lip Sync extension.")
        self.name = name
        self.dest = Path(dest)
        self.info = info
        self.final = self.dest / info["filename"]
        self.part = self.final.with_name(self.final.name + ".part")
        super().__init__([python, "-m", "lipsync_core", "weights", "download", name, "--dest", str(self.dest)],
                         worker_client.subprocess_env(), str(core))
        self.total = info.get("size")
        self.stage = f"connecting for {self.final.name}"

    def on_line(self, line: str) -> None:
        print(f"lipsync weights: {line}")

    def poll(self) -> None:
        try:
            size = self.part.stat().st_size
        except OSError:
            return
        self.done = size
        of = f" of {mb(self.total)}" if self.total else ""
        self.stage = f"downloading {self.final.name}: {mb(size)}{of}"

    def finish(self, rc: int, extra: dict) -> dict:
        lines = list(self.lines)
        if rc == 0:
            prefix = f"{self.name}: "
            paths = [ln[len(prefix):].strip() for ln in lines if ln.startswith(prefix)]
            path = Path(paths[-1]) if paths else self.final
            if not path.is_file():
                return {"status": "error", "message": f"The download reported success but {path} is missing."}
            return {"status": "done", "path": str(path),
                    "message": f"{path.name} downloaded and verified; Checkpoint set to {path}. Licence: "
                               f"{self.info.get('licence_short')}."}
        errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
        detail = "\n".join(lines[errors[-1]:]) if errors else self.tail()
        detail = detail.removeprefix("error: ")
        return {"status": "error", "message": f"Weights download failed: {detail}"}


class LIPSYNC_OT_download_weights(HelperOperator, bpy.types.Operator):
    """Download Wav2Lip generator weights into the extension's user folder (verified before use) and set the
    Checkpoint preference to them. Needs Blender's online access and the engine (Set up Engine)"""

    bl_idname = "lipsync.download_weights"
    bl_label = "Download Weights"
    bl_options = {"REGISTER"}
    kind = "weights"

    model: EnumProperty(
        name="Model",
        items=[("PREFERENCES", "As in Preferences", "The model chosen in the preferences")] + list(GENERATORS),
        default="PREFERENCES", options={"SKIP_SAVE"},
    )
    directory: StringProperty(
        name="Folder", description="Where to save; empty: 'checkpoints' in the extension's user folder",
        subtype="DIR_PATH", options={"SKIP_SAVE", "HIDDEN"},
    )

    def make(self, context) -> HelperTask:
        p = prefs.get(context)
        name = self.model
        if name == "PREFERENCES":
            name = p.weights_model if p is not None else GENERATORS[0][0]
        if not prefs.online_access():
            raise Refused(offline_message(name))
        python = prefs.engine_python(p)
        if not python or not Path(python).is_file():
            raise Refused("No engine Python yet: press Set up Engine first (the download is checked with torch), "
                          "or set Python to one with torch.")
        dest = Path(bpy.path.abspath(self.directory)) if self.directory.strip() else default_dir()
        info = entry_info(python, name)
        print(f"lipsync: downloading {info['filename']} ({mb(info.get('size'))}) into {dest}")
        print(f"lipsync: licence: {info.get('licence') or info['licence_short']}")
        return DownloadTask(python, name, dest, info)

    def apply(self, context, task: HelperTask, outcome: dict) -> None:
        p = prefs.get(context)
        if p is None:
            raise RuntimeError("the Lip Sync preferences are not available")
        p.checkpoint_path = outcome["path"]


classes = (LIPSYNC_OT_download_weights,)


register, unregister = bpy.utils.register_classes_factory(classes)

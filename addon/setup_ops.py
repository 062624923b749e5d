"""Engine set-up from Blender ("Set up Engine" in the preferences): `<Blender's Python> -m lipsync_core.setup_env
VENV --json`, the same routine as `python build.py setup`, run as a helper task (helper_ops.py) on the add-on's
runner. When the venv is made, the worker's `check` command tells whether torch works there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import prefs, worker_client
from .helper_ops import HelperOperator, HelperTask, Refused
from .runner import json_event


def setup_python() -> str:
    """The Python that creates the engine venv: Blender's own (Python 3.11 in Blender 4.2-5.0); with bpy as a
    module, the Python running it."""
    return sys.executable


def default_venv_dir() -> Path:
    """<extension user folder>/venv: where the engine looks for it when Python is left empty."""
    return Path(prefs.user_dir()) / "venv"


class SetupTask(HelperTask):
    """`<python> -m lipsync_core.setup_env VENV --json`: the same routine as `python build.py setup`."""

    kind = "setup"
    title = "Engine set-up"

    def __init__(self, base_python: str, venv_dir: Path) -> None:
        core = worker_client.core_dir()
        if core is None:
            raise Refused("lipsync_core is missing from the extension; reinstall the Lip Sync extension.")
        self.venv_dir = Path(venv_dir)
        self.packages = 0
        self.result: dict | None = None
        self.error: str | None = None
        env = worker_client.subprocess_env()
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        super().__init__([base_python, "-m", "lipsync_core.setup_env", str(self.venv_dir), "--json"], env,
                         str(core))

    def on_line(self, line: str) -> None:
        ev = json_event(line)
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
        results = [ev for ev in map(json_event, lines) if ev and ev.get("event") == "result"]
        if rc != 0 or not results:
            return None
        python = str(results[-1].get("python") or worker_client.venv_python(self.venv_dir))
        try:  # torch's first import takes seconds: done here on the reader thread, not in Blender's UI
            return {"probe": worker_client.check_python(python, use_cache=False)}
        except worker_client.WorkerError as exc:
            return {"probe_error": str(exc)}

    def _python(self) -> str:
        if self.result and self.result.get("python"):
            return str(self.result["python"])
        return str(worker_client.venv_python(self.venv_dir))

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

    def make(self, context) -> HelperTask:
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
        return SetupTask(base, target)

    def apply(self, context, task: HelperTask, outcome: dict) -> None:
        p = prefs.get(context)
        if p is None:
            raise RuntimeError("the Lip Sync preferences are not available")
        p.python_path = outcome["python"]
        prefs.last_check.pop(outcome["python"], None)
        if "info" in outcome:
            prefs.last_check[outcome["python"]] = worker_client.describe(outcome["info"])


classes = (LIPSYNC_OT_setup_engine,)


register, unregister = bpy.utils.register_classes_factory(classes)

"""The extension zip: built with Blender's own builder/validator, installed and removed as Blender does."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build(out: Path) -> Path:
    # exactly what `python build.py extension --output-dir DIR` runs after its setup step
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tools.build_extension", "--output-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zips = list(out.glob("*.zip"))
    assert len(zips) == 1, zips
    return zips[0]


def test_manifest_is_what_the_issue_asks():
    m = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    assert m["schema_version"] == "1.0.0" and m["id"] == "lipsync" and m["type"] == "add-on"
    assert m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert m["tags"] == ["Sequencer"]
    assert "video" in m["permissions"]["files"].lower()
    assert not (ROOT / "addon" / "blender_manifest.toml").exists()  # one manifest, the root one


def test_zip_bundles_addon_and_engine(tmp_path):
    zpath = _build(tmp_path)
    names = zipfile.ZipFile(zpath).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    for mod in ("compat.py", "ops.py", "prefs.py", "props.py", "ui.py", "timeline.py"):
        assert mod in names
    assert "lipsync_core/__init__.py" in names and "lipsync_core/worker.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "addon/", ".venv"))]
    # the add-on never imports torch, nor the engine (that runs in the worker process)
    for n in names:
        if n.endswith(".py") and not n.startswith("lipsync_core/"):
            tree = ast.parse(zipfile.ZipFile(zpath).read(n))
            imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for a in node.names}
            imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and not node.level}
            assert not imported & {"torch", "lipsync_core", "numpy", "cv2"}, (n, imported)


INSTALL_SCRIPT = r"""
import os, sys
import bpy, addon_utils
mod = "bl_ext.user_default.lipsync"
res = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
assert res == {"FINISHED"}, res
assert mod in bpy.context.preferences.addons
p = bpy.context.preferences.addons[mod].preferences
assert type(p).bl_idname == mod and p.device == "AUTO" and p.checkpoint_path == ""
assert tuple(bpy.context.scene.lipsync.pads) == (0, 10, 0, 0)
assert bpy.context.scene.lipsync.segment_source == "MARKERS"
for cls in ("LIPSYNC_OT_sync", "LIPSYNC_OT_detect_segments", "LIPSYNC_OT_cancel", "LIPSYNC_PT_panel"):
    assert hasattr(bpy.types, cls), cls
panel = bpy.types.LIPSYNC_PT_panel
assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("SEQUENCE_EDITOR", "UI", "Lip Sync")
pkg_dir = os.path.dirname(sys.modules[mod].__file__)
assert os.path.isfile(os.path.join(pkg_dir, "lipsync_core", "worker.py"))
worker_client = sys.modules[mod + ".worker_client"]
assert worker_client.core_dir() == __import__("pathlib").Path(pkg_dir)
assert "torch" not in sys.modules, "the add-on imported torch"
addon_utils.disable(mod)
for cls in ("LIPSYNC_OT_sync", "LIPSYNC_PT_panel", "LipsyncPreferences", "LIPSYNC_PG_settings"):
    assert not hasattr(bpy.types, cls), cls
assert not hasattr(bpy.types.Scene, "lipsync")
assert not any(getattr(h, "__module__", "").startswith(mod) for h in bpy.app.handlers.load_pre)
addon_utils.enable(mod)  # and back: register after unregister works
assert hasattr(bpy.types, "LIPSYNC_OT_sync")
print("INSTALL-OK")
"""


def test_installs_enables_and_unregisters_cleanly(tmp_path):
    zpath = _build(tmp_path / "dist")
    user = tmp_path / "user"
    user.mkdir()
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(zpath)], env=env, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path, check=False)
    assert "INSTALL-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (user / "extensions" / "user_default" / "lipsync" / "lipsync_core" / "worker.py").is_file()

"""Blender 4.2 LTS smoke test: install, detect_segments, the refusals of sync, the batch operators and Restore
Original, the engine check, the face choice, disable.

Needs a Python with the bpy 4.2 wheel (`pip install "bpy==4.2.*" "numpy<2"` in a separate venv) named by
LIPSYNC_BPY42_PYTHON; skipped otherwise. That wheel has no audio (`new_sound` fails), so sync itself is
covered on 5.0.1 only.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tools import sample_media as media

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY42 = os.environ.get("LIPSYNC_BPY42_PYTHON")


@pytest.mark.skipif(not PY42, reason="set LIPSYNC_BPY42_PYTHON to a Python with bpy 4.2 to run the 4.2 check")
def test_extension_on_blender_42(tmp_path):
    subprocess.run([sys.executable, "-m", "tools.build_extension", "--output-dir", str(tmp_path)], cwd=ROOT,
                   check=True, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
    zip_path = next(tmp_path.glob("lipsync-*.zip"))
    clip = media.face_noface_face_clip(tmp_path / "clip.mp4", 30, 20, 30)
    script = textwrap.dedent(f"""
        import os
        os.environ["BLENDER_USER_RESOURCES"] = {str(tmp_path / "user")!r}
        import bpy
        assert bpy.app.version[:2] == (4, 2), bpy.app.version
        bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo="user_default",
                                                 enable_on_install=True)
        mod = "bl_ext.user_default.lipsync"
        bpy.context.preferences.addons[mod].preferences.python_path = {sys.executable!r}
        scene = bpy.context.scene
        scene.render.fps = 25
        m = scene.sequence_editor_create().sequences.new_movie("clip", {str(clip)!r}, 1, 1)
        assert bpy.ops.lipsync.detect_segments() == {{"FINISHED"}}
        print("MARKERS", sorted((mk.frame, mk.name) for mk in scene.timeline_markers))
        try:
            bpy.ops.lipsync.sync()
        except RuntimeError as exc:
            print("SYNC", exc)
        assert len(scene.sequence_editor.sequences_all) == 1
        # the operators added since 4.2 was first checked: their checks and refusals on 4.2's API
        assert bpy.ops.lipsync.check_python() == {{"FINISHED"}}
        import importlib
        face_choice = importlib.import_module(mod + ".face_choice")
        m.lipsync_face.mode = "POINT"
        m.lipsync_face.point = (12.0, 34.0)
        print("FACE", face_choice.face_option_for(m))
        for op, kw in ((bpy.ops.lipsync.export_batch, dict(directory={str(tmp_path / "export")!r})),
                       (bpy.ops.lipsync.import_batch, dict(directory={str(tmp_path)!r})),
                       (bpy.ops.lipsync.restore_original, {{}})):
            try:
                op(**kw)
            except RuntimeError as exc:
                print("REFUSED", str(exc).splitlines()[0])
        assert not os.path.exists({str(tmp_path / "export" / "JOBS.json")!r})
        assert len(scene.sequence_editor.sequences_all) == 1
        bpy.ops.preferences.addon_disable(module=mod)
        print("OK")
    """)
    r = subprocess.run([PY42, "-c", script], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, LIPSYNC_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "MARKERS [(1, 'LS face'), (31, 'LS no face'), (51, 'LS face'), (81, 'LS end')]" in r.stdout
    assert "SYNC Error: No audio strip chosen" in r.stdout and "OK" in r.stdout
    assert "FACE {'point': [12.0, 34.0]}" in r.stdout
    refused = [ln for ln in r.stdout.splitlines() if ln.startswith("REFUSED")]
    assert len(refused) == 3, r.stdout[-3000:]
    assert "No audio strip chosen" in refused[0]  # Export Batch: the press's own problem list, nothing written
    assert "holds no Lip Sync batch" in refused[1]
    assert "Select the strips that show a lip-synced result" in refused[2]

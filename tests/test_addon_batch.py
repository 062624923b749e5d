"""Export Batch and Import Batch Results (bpy 5.0.1, random weights): the edit the farm tests use, and what needs no
farm. The round trip through a real two-node Ray cluster (the timeline equals a local press's) is in
test_batch.py, which starts the cluster once for every Ray test."""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
import pytest

import blender_env as be
from blender_env import checkpoint, configured, lipsync_addon  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
AS_UI = ("EXEC_DEFAULT", True)  # pushes the operator's undo step, as a click does
CUTS = ("cut1", "cut2")
DUB1, DUB2 = (6, 30), (34, 56)  # dub1 under cut1 only, dub2 under cut2 only


@pytest.fixture(scope="module")
def farm_media(tmp_path_factory):
    from tools import sample_media as sm

    d = tmp_path_factory.mktemp("farm_media")
    tone = sm.tone_wav(d / "own.wav", 3.0, 440.0)
    sm.write_video(d / "a.mp4", sm.astronaut_frames(40, 160, 120), audio=tone)
    sm.write_video(d / "b.mp4", sm.astronaut_frames(30, 160, 120, motion=2.0), audio=tone)
    sm.speech_wav(d / "speech.wav", seconds=3.0)
    return d


def _build(name: str, media: Path):
    """cut1 = a.mp4 5-35 at 1-31, cut2 = b.mp4 2-28 at 31-57, each with its own sound; the dub as two selected
    strips (one at volume 0.7), Segments from markers (a face marker pair in cut1, a 'has a face?' pair in cut2)."""
    scene = be.new_scene(name)
    scene.render.resolution_x, scene.render.resolution_y = 160, 120
    coll = scene.sequence_editor.strips
    for cut, path, at, lo, hi in (("cut1", media / "a.mp4", -4, 1, 31), ("cut2", media / "b.mp4", 29, 31, 57)):
        be.place_strip(coll, "MOVIE", cut, path, 1, at, lo, hi)
        be.place_strip(coll, "SOUND", f"{cut}.sound", path, 2, at, lo, hi)
    be.place_strip(coll, "SOUND", "dub1", media / "speech.wav", 5, 6, *DUB1).volume = 0.7
    be.place_strip(coll, "SOUND", "dub2", media / "speech.wav", 6, 20, *DUB2)
    for frame, label in ((1, "LS face"), (20, "LS no face"), (31, "LS end"), (57, "mine")):
        scene.timeline_markers.new(label, frame=frame)
    scene.frame_start, scene.frame_end = 1, 56
    scene.lipsync.segment_source = "MARKERS"
    for s in coll:
        s.select = True
    return scene


def _state(scene) -> dict:
    """Every strip as the timeline holds it (place, mute, file, Lip Sync's custom properties) and the markers."""
    strips = {}
    for s in be.strips(scene):
        props = {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
                 for k, v in s.items() if k.startswith("lipsync_")}
        strips[s.name] = (s.type, s.channel, s.frame_start, s.frame_final_start, s.frame_final_end, s.mute,
                          getattr(s, "filepath", ""), props)
    return {"strips": strips, "markers": sorted((m.frame, m.name) for m in scene.timeline_markers)}


def _frames(path) -> np.ndarray:
    from lipsync_core.media import FrameReader

    with FrameReader(str(path)) as r:
        return np.stack(list(r)).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_missing_output_and_not_an_export_folder_are_named(configured, farm_media, tmp_path):
    scene = _build("Missing", farm_media)
    folder = tmp_path / "batch"
    assert bpy.ops.lipsync.export_batch(directory=str(folder)) == {"FINISHED"}
    before = _state(scene)
    with pytest.raises(RuntimeError, match=r"placed nothing:\n- job .* \(cut1\): no output yet"):
        bpy.ops.lipsync.import_batch(directory=str(folder))
    assert _state(scene) == before
    with pytest.raises(RuntimeError, match="holds no Lip Sync batch"):
        bpy.ops.lipsync.import_batch(directory=str(tmp_path))


def test_export_from_the_file_browser_runs_as_a_job(configured, farm_media, tmp_path):
    """After the file browser, the export runs on the job thread (progress in the panel, Esc cancels) as a press
    does; the editor sees the same message."""
    from types import SimpleNamespace

    ops, batch_ops = be.submodule("ops"), be.submodule("batch_ops")
    _build("Modal", farm_media)
    folder = tmp_path / "batch"
    op = SimpleNamespace(directory=str(folder), path_map=f"{farm_media}=/farm/media")
    steps = batch_ops.LIPSYNC_OT_export_batch.make_steps(op, bpy.context)
    job = ops.start_job(bpy.context, "export", steps)
    while not ops.pump(bpy.context, job):
        job.wait(0.1)
    result, level, msg = ops.conclude(bpy.context, job, job.outcome)
    assert (result, level) == ({"FINISHED"}, "WARNING"), msg  # the checkpoint is outside every mapped folder
    assert msg.startswith("Lip Sync: exported 2 job(s) for 2 cut(s)") and "no path map entry covers" in msg
    assert f"on the farm run: python -m lipsync_core batch {folder}/JOBS.json --ray auto --report" in msg
    doc = json.loads((folder / "JOBS.json").read_text())
    assert {Path(j["video"]).parent for j in doc["jobs"]} == {Path("/farm/media")}
    assert sorted(p.name for p in (folder / "dub").iterdir()) == sorted(f"{j['id']}.wav" for j in doc["jobs"])

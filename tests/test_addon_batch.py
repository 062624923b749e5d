"""Export Batch -> `batch` on a real two-node Ray cluster -> Import Batch Results (bpy 5.0.1, random weights): the
timeline equals the one a local press makes; a failed job, a missing output and a cut changed since the export
are named and left alone; paths go to the farm through a path map and come back."""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import BATCH_ENV

import blender_env as be
from blender_env import checkpoint, lipsync_addon  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
AS_UI = ("EXEC_DEFAULT", True)  # pushes the operator's undo step, as a click does
CUTS = ("cut1", "cut2")
DUB1, DUB2 = (6, 30), (34, 56)  # dub1 under cut1 only, dub2 under cut2 only


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tools import sample_media as sm

    d = tmp_path_factory.mktemp("farm_media")
    tone = sm.tone_wav(d / "own.wav", 3.0, 440.0)
    sm.write_video(d / "a.mp4", sm.astronaut_frames(40, 160, 120), audio=tone)
    sm.write_video(d / "b.mp4", sm.astronaut_frames(30, 160, 120, motion=2.0), audio=tone)
    sm.speech_wav(d / "speech.wav", seconds=3.0)
    return d


def _place(coll, kind: str, name: str, path: Path, channel: int, content_at: int, lo: int, hi: int):
    new = coll.new_movie if kind == "MOVIE" else coll.new_sound
    s = new(name, str(path), 20 + channel, content_at)
    s.frame_offset_start = lo - content_at
    s.frame_final_end = hi
    s.channel = channel
    return s


def _build(name: str, media: Path):
    """cut1 = a.mp4 5-35 at 1-31, cut2 = b.mp4 2-28 at 31-57, each with its own sound; the dub as two selected
    strips (one at volume 0.7), Segments from markers (a face marker pair in cut1, a 'has a face?' pair in cut2)."""
    scene = be.new_scene(name)
    scene.render.resolution_x, scene.render.resolution_y = 160, 120
    coll = scene.sequence_editor.strips
    for cut, path, at, lo, hi in (("cut1", media / "a.mp4", -4, 1, 31), ("cut2", media / "b.mp4", 29, 31, 57)):
        _place(coll, "MOVIE", cut, path, 1, at, lo, hi)
        _place(coll, "SOUND", f"{cut}.sound", path, 2, at, lo, hi)
    _place(coll, "SOUND", "dub1", media / "speech.wav", 5, 6, *DUB1).volume = 0.7
    _place(coll, "SOUND", "dub2", media / "speech.wav", 6, 20, *DUB2)
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


def _batch(jobs: Path, cluster, report: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=cluster.address, **BATCH_ENV)
    return subprocess.run([sys.executable, "-m", "lipsync_core", "batch", str(jobs), "--ray", "auto", "--report",
                           str(report)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def local(lipsync_addon, checkpoint, media, tmp_path_factory):
    """The edit pressed here (the reference), its results moved aside so the import makes its own."""
    be.configure(checkpoint)
    project = tmp_path_factory.mktemp("farm_project")
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "edit.blend"))
    scene = _build("Local", media)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in BATCH_ENV.items():  # the press's engine runs as the farm's (fp32)
            mp.setenv(k, v)
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
    state = _state(scene)
    shutil.move(project / "lipsync", project / "local_results")
    yield {"project": project, "state": state, "results": project / "local_results"}
    bpy.ops.wm.read_homefile(use_empty=True)  # a new, unsaved file again: later tests expect one


def test_export_run_on_ray_import_equals_the_local_press(local, media, checkpoint, ray_cluster, tmp_path):
    project = local["project"]
    scene = _build("Farm", media)
    before = _state(scene)
    # the farm sees the media, the checkpoint and the export folder under other roots (symlinks play the share)
    export, farm = project / "batch", tmp_path / "farm"
    farm.mkdir()
    for name, target in (("media", media), ("ckpt", Path(checkpoint).parent), ("batch", export)):
        (farm / name).symlink_to(target, target_is_directory=True)
    path_map = f"{media}={farm / 'media'}; {Path(checkpoint).parent}={farm / 'ckpt'}"

    # a problem a press would show: the same list, nothing is written
    scene.sequence_editor.strips["dub2"].select = False
    with pytest.raises(RuntimeError, match=r"nothing was run:\n- 'cut2': no dub plays under it"):
        bpy.ops.lipsync.export_batch(directory=str(export), path_map=path_map)
    assert not export.exists()
    scene.sequence_editor.strips["dub2"].select = True
    assert _state(scene) == before

    assert bpy.ops.lipsync.export_batch(directory=str(export), path_map=path_map) == {"FINISHED"}
    doc = json.loads((export / "JOBS.json").read_text())
    assert len(doc["jobs"]) == 2 and doc["checkpoint"] == str(farm / "ckpt" / Path(checkpoint).name)
    assert {Path(j["video"]).parent for j in doc["jobs"]} == {farm / "media"}
    assert all(not os.path.isabs(j[k]) for j in doc["jobs"] for k in ("audio", "output"))
    assert doc["options"]["exact_size"] is True and doc["options"]["codec"] == "h264"
    by_cut = {e["cuts"][0]: e for e in json.loads((export / "lipsync_batch.json").read_text())["jobs"]}
    assert set(by_cut) == set(CUTS)

    # the farm runs it from its own path; cut2's dub is lost there: that job fails, the other is done
    wav2 = export / "dub" / f"{by_cut['cut2']['id']}.wav"
    wav2.rename(wav2.with_suffix(".kept"))
    r = _batch(farm / "batch" / "JOBS.json", ray_cluster, export / "REPORT.json")
    assert r.returncode == 1, r.stderr[-3000:]
    assert bpy.ops.lipsync.import_batch(directory=str(export)) == {"FINISHED"}
    after_first = _state(scene)
    cut1_local = local["state"]["strips"]["cut1"]
    assert after_first["strips"]["cut1"] == cut1_local
    assert after_first["strips"]["cut2"] == before["strips"]["cut2"]  # failed on the farm: unchanged
    assert not after_first["strips"]["cut2.sound"][5]  # its own sound still plays
    assert "1 of 1 cut(s)" in scene.lipsync.message and "not placed: cut2 (failed)" in scene.lipsync.message

    # the dub back, the batch again: cut1 is skipped, cut2 done
    wav2.with_suffix(".kept").rename(wav2)
    r = _batch(farm / "batch" / "JOBS.json", ray_cluster, export / "REPORT.json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = {j["id"]: j for j in json.loads((export / "REPORT.json").read_text())["jobs"]}
    assert rep[by_cut["cut1"]["id"]]["status"] == "skipped" and rep[by_cut["cut2"]["id"]]["status"] == "done"

    # cut2's dub changed since the export: named, nothing changed
    scene.sequence_editor.strips["dub2"].volume = 0.5
    assert bpy.ops.lipsync.import_batch(directory=str(export)) == {"FINISHED"}
    assert "not placed: cut2 (changed)" in scene.lipsync.message
    assert _state(scene) == after_first
    scene.sequence_editor.strips["dub2"].volume = 1.0

    bpy.ops.ed.undo_push(message="before the import")
    assert bpy.ops.lipsync.import_batch(*AS_UI, directory=str(export)) == {"FINISHED"}
    scene = bpy.data.scenes["Farm"]
    got = _state(scene)
    want = local["state"]
    assert got["strips"] == want["strips"]  # same strips, ranges, channels, mute, files, custom properties
    assert got["markers"] == want["markers"]
    for cut in CUTS:  # the farm's result is the press's, up to the dub's resampling before the mel
        name = Path(bpy.path.abspath(scene.sequence_editor.strips[cut].filepath)).name
        farm_out, press_out = _frames(project / "lipsync" / name), _frames(local["results"] / name)
        assert farm_out.shape == press_out.shape
        source = _frames(media / ("a.mp4" if cut == "cut1" else "b.mp4"))
        start = scene.sequence_editor.strips[cut]["lipsync_src_start"]
        source = source[start : start + len(farm_out)]
        assert farm_out.shape == source.shape
        made, off = _psnr(farm_out, press_out), _psnr(press_out, source)
        assert made > 30 and made > off + 3, (cut, made, off)  # much nearer the press's than the source
    # one undo: back to after the first import
    bpy.ops.ed.undo()
    assert _state(bpy.data.scenes["Farm"]) == after_first
    # redone, a press finds every result in place: it starts no engine and changes nothing
    bpy.ops.ed.redo()
    assert _state(bpy.data.scenes["Farm"]) == got
    wc = be.submodule("worker_client")
    started, run = [], wc.WorkerProcess.run
    wc.WorkerProcess.run = lambda self: (started.append(self.job), run(self))[1]
    try:
        assert bpy.ops.lipsync.sync() == {"FINISHED"}
    finally:
        wc.WorkerProcess.run = run
    assert started == [] and _state(bpy.data.scenes["Farm"]) == got


def test_missing_output_and_not_an_export_folder_are_named(local, media, tmp_path):
    scene = _build("Missing", media)
    folder = tmp_path / "batch"
    assert bpy.ops.lipsync.export_batch(directory=str(folder)) == {"FINISHED"}
    before = _state(scene)
    with pytest.raises(RuntimeError, match=r"placed nothing:\n- job .* \(cut1\): no output yet"):
        bpy.ops.lipsync.import_batch(directory=str(folder))
    assert _state(scene) == before
    with pytest.raises(RuntimeError, match="holds no Lip Sync batch"):
        bpy.ops.lipsync.import_batch(directory=str(tmp_path))


def test_export_from_the_file_browser_runs_as_a_job(local, media, tmp_path):
    """After the file browser, the export runs on the job thread (progress in the panel, Esc cancels) as a press
    does; the editor sees the same message."""
    from types import SimpleNamespace

    ops, batch_ops = be.submodule("ops"), be.submodule("batch_ops")
    _build("Modal", media)
    folder = tmp_path / "batch"
    op = SimpleNamespace(directory=str(folder), path_map=f"{media}=/farm/media")
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

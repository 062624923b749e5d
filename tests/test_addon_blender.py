"""The installed extension in bpy 5.0.1, headless, without the engine doing any work.

Frame maths checked against Blender's own playback (render, mixdown), refusals of bad input, the apply step
(result strips, channel, muting, re-runs, undo) fed with made result files.
"""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import subprocess
import sys
import venv
import wave
from pathlib import Path

import bpy
import numpy as np
import pytest

import blender_env as be
from blender_env import checkpoint, configured, lipsync_addon, made_media  # noqa: F401  (fixtures)


def _strip_coll(scene):
    se = scene.sequence_editor
    return se.strips if hasattr(se, "strips") else se.sequences


# ---------------------------------------------------------------------------- frame maths vs Blender itself


def test_sound_mapping_matches_blender_mixdown(lipsync_addon, tmp_path):
    tl, snapshot = be.submodule("timeline"), be.submodule("snapshot")
    click = tmp_path / "click.wav"
    sr = 16000
    pcm = np.zeros(sr * 4, np.int16)
    pcm[sr:sr + 80] = 20000  # a click 1.0 s into the file
    with wave.open(str(click), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr), w.writeframes(pcm.tobytes())
    scene = be.new_scene("Mix")
    scene.frame_start, scene.frame_end = 1, 150
    s = _strip_coll(scene).new_sound("click", str(click), 1, 26)
    s.animation_offset_start = 5  # hold offset: content starts 5 frames into the file
    s.frame_offset_start = 3  # a trim: hides, does not shift
    s.sound_offset = 0.12
    t = snapshot.timing(s)
    # timeline frame where the file's 1.0 s plays, by our formula
    expect_frame = t.frame_start - t.animation_offset_start + (1.0 + t.sound_offset) * 25
    assert tl.sound_seconds(t, expect_frame, 25.0) == pytest.approx(1.0)
    out = tmp_path / "mix.wav"
    with bpy.context.temp_override(scene=scene):
        assert bpy.ops.sound.mixdown(filepath=str(out), container="WAV", codec="PCM", format="S16",
                                     mixrate=sr, accuracy=64) == {"FINISHED"}
    with wave.open(str(out)) as w:
        a = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())[:, 0]
    got_s = np.argmax(np.abs(a) > 1000) / sr  # the mixdown starts at scene frame 1
    assert got_s == pytest.approx((expect_frame - 1) / 25, abs=0.01)


def test_movie_mapping_matches_blender_render(lipsync_addon, tmp_path):
    import cv2

    from tools import sample_media as media

    tl, snapshot = be.submodule("timeline"), be.submodule("snapshot")
    frames = np.repeat(np.repeat(np.repeat((np.arange(60) * 4).astype(np.uint8)[:, None, None, None], 48, 1),
                                 64, 2), 3, 3)  # frame i is grey 4*i
    clip = media.write_video(tmp_path / "ramp.mp4", frames)
    scene = be.new_scene("Ramp")
    m = _strip_coll(scene).new_movie("ramp", str(clip), 1, 10)
    m.animation_offset_start = 7
    m.frame_offset_start = 5
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 64, 48, 100
    r.image_settings.file_format = "PNG"
    t = snapshot.timing(m)
    for f in (t.final_start, t.final_start + 20):
        scene.frame_set(f)
        r.filepath = str(tmp_path / f"f{f}.png")
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
        grey = cv2.imread(r.filepath).mean()
        assert round(grey / 4) == tl.source_frame(t, f), (f, grey)


# ---------------------------------------------------------------------------- defaults and output folder


def test_default_strips_skip_the_movies_own_sound(lipsync_addon, made_media):
    snapshot = be.submodule("snapshot")
    scene = be.new_scene("Defaults")
    movie, own, speech = be.add_edit(scene, made_media)
    assert snapshot.is_own_sound(own, movie) and not snapshot.is_own_sound(speech, movie)
    assert snapshot.default_video(scene) == movie
    assert snapshot.default_audio(scene, movie) == speech


def test_output_folder_beside_saved_blend_else_extension_cache(lipsync_addon, tmp_path):
    snapshot, prefs = be.submodule("snapshot"), be.submodule("prefs")
    if not bpy.data.filepath:
        folder, relative = snapshot.output_dir()
        assert not relative and Path(folder).parent == Path(prefs.user_dir())
        assert Path(prefs.user_dir()).is_relative_to(be.USER)


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def no_torch_python(tmp_path_factory):
    d = tmp_path_factory.mktemp("notorch")
    venv.EnvBuilder(with_pip=False).create(d / "venv")
    py = d / "venv" / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True, check=False).returncode != 0
    return py


def _refused(op, match: str, scene):
    before = be.fingerprint(scene)
    with pytest.raises(RuntimeError, match=match):
        op()
    assert be.fingerprint(scene) == before, "a refused run changed the timeline"


def test_refuses_missing_strips(configured, made_media):
    scene = be.new_scene("Empty")
    _refused(bpy.ops.lipsync.sync, "No video strip chosen", scene)
    coll = _strip_coll(scene)
    coll.new_sound("speech", str(made_media / "speech.wav"), 3, 1)
    _refused(bpy.ops.lipsync.detect_segments, "No video strip chosen", scene)
    movie = coll.new_movie("clip", str(made_media / "clip.mp4"), 1, 1)
    scene.sequence_editor.active_strip = movie
    scene.lipsync.audio_strip = "nope"
    _refused(bpy.ops.lipsync.sync, "'nope' is not in scene", scene)
    scene.lipsync.audio_strip = ""
    coll.remove(coll["speech"])
    _refused(bpy.ops.lipsync.sync, "No audio strip chosen", scene)
    scene.lipsync.video_strip = "clip"
    scene.lipsync.audio_strip = "clip"
    _refused(bpy.ops.lipsync.sync, "Audio needs a sound strip", scene)


def test_refuses_the_movies_own_sound_as_audio(configured, made_media):
    scene = be.new_scene("Own")
    _, own, _ = be.add_edit(scene, made_media)
    scene.lipsync.audio_strip = own.name
    _refused(bpy.ops.lipsync.sync, "video's own sound", scene)


def test_refuses_missing_file(configured, made_media, tmp_path):
    import shutil

    scene = be.new_scene("Missing")
    copy = tmp_path / "gone.mp4"
    shutil.copy(made_media / "clip.mp4", copy)
    movie = _strip_coll(scene).new_movie("gone", str(copy), 1, 1)
    _strip_coll(scene).new_sound("speech", str(made_media / "speech.wav"), 3, 1)
    scene.sequence_editor.active_strip = movie
    copy.unlink()
    _refused(bpy.ops.lipsync.sync, "'gone': its file is missing", scene)


def test_refuses_without_checkpoint(configured, made_media):
    scene = be.new_scene("NoCkpt")
    be.add_edit(scene, made_media)
    configured.checkpoint_path = ""
    _refused(bpy.ops.lipsync.sync, "No checkpoint", scene)
    configured.checkpoint_path = "/nowhere/wav2lip.pth"
    _refused(bpy.ops.lipsync.sync, "checkpoint file is missing", scene)


def test_refuses_python_without_torch(configured, made_media, no_torch_python):
    scene = be.new_scene("NoTorch")
    be.add_edit(scene, made_media)
    scene.lipsync.segment_source = "STRIP"
    configured.python_path = str(no_torch_python)
    _refused(bpy.ops.lipsync.sync, "cannot import torch", scene)
    configured.python_path = "/nowhere/bin/python"
    _refused(bpy.ops.lipsync.sync, "does not exist", scene)


def test_refuses_other_frame_rate(configured, made_media):
    scene = be.new_scene("Fps24", fps=24)
    be.add_edit(scene, made_media)
    _refused(bpy.ops.lipsync.sync, r"Properties > Output > Frame Rate", scene)
    _refused(bpy.ops.lipsync.detect_segments, "25.000 fps", scene)


def test_refuses_marker_pair_outside_the_strip(configured, made_media):
    scene = be.new_scene("Markers")
    be.add_edit(scene, made_media)
    scene.lipsync.segment_source = "MARKERS"
    scene.timeline_markers.new("a", frame=200)
    scene.timeline_markers.new("b", frame=260)
    _refused(bpy.ops.lipsync.sync, "a segment needs a pair of markers inside it", scene)
    scene.timeline_markers.new("c", frame=50)  # one inside is still not a pair
    _refused(bpy.ops.lipsync.sync, "1 marker", scene)


def test_refuses_when_markers_say_no_face(configured, made_media):
    scene = be.new_scene("NoFaceMarkers")
    be.add_edit(scene, made_media)
    scene.timeline_markers.new("LS no face", frame=1)
    scene.timeline_markers.new("LS end", frame=111)
    _refused(bpy.ops.lipsync.sync, "No face anywhere", scene)


def test_check_button(configured, no_torch_python):
    assert bpy.ops.lipsync.check_python() == {"FINISHED"}
    configured.python_path = str(no_torch_python)
    with pytest.raises(RuntimeError, match="cannot import torch"):
        bpy.ops.lipsync.check_python()


# ---------------------------------------------------------------------------- applying results


def _fake_outcome(scene, made_media, extra: int = 0):
    """What a finished press hands to apply: every cut's plan and its result file (red frames, no worker)."""
    from tools import sample_media as media

    ops, job_steps, edit_plan = be.submodule("ops"), be.submodule("job_steps"), be.submodule("edit_plan")
    snap = ops.prepare(bpy.context, "sync")
    cuts = edit_plan.plan_cuts(snap)
    for c in cuts:
        frames = np.zeros((c.end_frame - c.start_frame + extra, 240, 320, 3), np.uint8)
        frames[..., 2] = 200  # red: easy to tell from the source
        Path(c.output).parent.mkdir(parents=True, exist_ok=True)
        media.write_video(Path(c.output), frames)
    made = {c.cut: {"face_frames": c.end_frame - c.start_frame, "segments": []} for c in cuts}
    return snap, job_steps.Outcome("done", cuts=cuts, made=made)


@pytest.fixture
def fake_results():
    """Remove the fake results again: their keys are real, a later real press must not find them."""
    made: list = []
    yield made
    for out in made:
        for cut in out.cuts:
            Path(cut.output).unlink(missing_ok=True)


def _own_pieces(scene, movie):
    snapshot = be.submodule("snapshot")
    return sorted((s.frame_final_start, s.frame_final_end, s.mute) for s in snapshot.own_sound_strips(scene, movie))


def test_apply_shows_results_mutes_own_sound_and_follows_the_dub(configured, made_media, fake_results):
    apply = be.submodule("apply")
    scene = be.new_scene("Apply")
    movie, _, speech = be.add_edit(scene, made_media, audio_at=11, audio_trim_start=0)
    speech.frame_final_end = 101  # new audio under 11-101 only
    scene.lipsync.segment_source = "STRIP"
    scene.timeline_markers.new("my note", frame=60)
    snap, out = _fake_outcome(scene, made_media)
    fake_results.append(out)
    apply.apply_edit(scene, snap, out)
    assert movie.filepath == out.cuts[0].output and (movie.frame_final_start, movie.frame_final_end) == (1, 111)
    assert movie.frame_duration == 110 and movie["lipsync_src_start"] == 0
    assert _own_pieces(scene, movie) == [(1, 11, False), (11, 101, True), (101, 111, False)]
    assert not speech.mute and not movie.mute

    # a second press follows a changed dub: the strip keeps its original as the source, the sound its pieces
    speech.frame_final_end = 111
    snap, out = _fake_outcome(scene, made_media)
    fake_results.append(out)
    assert out.cuts[0].video == str(made_media / "clip.mp4")
    apply.apply_edit(scene, snap, out)
    assert movie.filepath == out.cuts[0].output
    assert _own_pieces(scene, movie) == [(1, 11, False), (11, 101, True), (101, 111, True)]
    assert "my note" in [m.name for m in scene.timeline_markers]


def test_apply_refuses_when_video_moved_meanwhile(configured, made_media, fake_results):
    apply, plan = be.submodule("apply"), be.submodule("plan")
    scene = be.new_scene("Moved")
    movie, _, _ = be.add_edit(scene, made_media)
    scene.lipsync.segment_source = "STRIP"
    snap, out = _fake_outcome(scene, made_media)
    fake_results.append(out)
    movie.frame_start = 5
    before = be.fingerprint(scene)
    with pytest.raises(plan.PlanError, match="moved or trimmed"):
        apply.apply_edit(scene, snap, out)
    assert be.fingerprint(scene) == before


def test_a_moved_result_strip_is_still_current_and_restores_in_place(configured, made_media, fake_results):
    apply, ops, edit_plan = be.submodule("apply"), be.submodule("ops"), be.submodule("edit_plan")
    scene = be.new_scene("MoveLater")
    movie, own, speech = be.add_edit(scene, made_media)
    movie.frame_offset_start = 10  # trimmed: shows source frames 10-110 at 11-111
    scene.lipsync.segment_source = "STRIP"
    snap, out = _fake_outcome(scene, made_media)
    fake_results.append(out)
    apply.apply_edit(scene, snap, out)
    for s in sorted(be.strips(scene), key=lambda s: -s.frame_start):  # the editor moves it all 20 frames later
        s.frame_start += 20
    (cut,) = edit_plan.plan_cuts(ops.prepare(bpy.context, "sync"))
    assert (cut.start_frame, cut.end_frame, cut.key) == (10, 110, out.cuts[0].key)  # nothing to redo
    apply.restore_original(movie)
    assert Path(movie.filepath).name == "clip.mp4" and (movie.frame_final_start, movie.frame_final_end) == (31, 131)
    snapshot = be.submodule("snapshot")
    assert snapshot.timing(movie).frame_start == 21 and snapshot.is_own_sound(own, movie)


def test_undo_restores_the_timeline_after_apply(configured, made_media, fake_results):
    apply = be.submodule("apply")
    scene = be.new_scene("Undo")
    be.add_edit(scene, made_media)
    scene.lipsync.segment_source = "STRIP"
    snap, out = _fake_outcome(scene, made_media)
    fake_results.append(out)
    bpy.ops.ed.undo_push(message="before lip sync")
    before = be.fingerprint(scene)
    apply.apply_edit(bpy.data.scenes["Undo"], snap, out)
    bpy.ops.ed.undo_push(message="Lip Sync")
    assert be.fingerprint(bpy.data.scenes["Undo"]) != before
    bpy.ops.ed.undo()
    assert be.fingerprint(bpy.data.scenes["Undo"]) == before


def test_result_paths_are_decided_when_the_job_starts(configured, made_media, tmp_path, fake_results):
    """Relative or absolute is decided with the snapshot: saving the .blend while a job runs changes nothing."""
    ops = be.submodule("ops")

    def run(name: str, save_during_job: Path) -> tuple[str, str]:
        scene = be.new_scene(name)
        be.add_edit(scene, made_media)
        scene.lipsync.segment_source = "STRIP"
        snap, outcome = _fake_outcome(scene, made_media)  # the job starts
        fake_results.append(outcome)
        save_during_job.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(save_during_job))  # the editor saves while it runs
        result, _, msg = ops.conclude(bpy.context, be.submodule("job_steps").JobSteps(snap, "sync"), outcome)
        assert result == {"FINISHED"}, msg
        return bpy.data.scenes[name].sequence_editor.strips["clip"].filepath, outcome.cuts[0].output

    bpy.ops.wm.read_homefile(use_empty=True)  # a new, unsaved file: results go to the extension's cache
    path, out = run("Unsaved", tmp_path / "project" / "edit.blend")
    assert Path(out).is_relative_to(be.submodule("prefs").user_dir())
    # absolute: a path relative to the .blend saved meanwhile would tie the project to the cache's location
    assert not path.startswith("//") and path == out, path
    # saved at the start, saved elsewhere during the job: relative, and it still finds the file
    path, out = run("Saved", tmp_path / "elsewhere" / "moved.blend")
    assert Path(out).parent == tmp_path / "project" / "lipsync"
    assert path.startswith("//") and Path(bpy.path.abspath(path)).resolve() == Path(out).resolve(), path


class _Layout:
    """Stands in for UILayout (nothing draws headless) and checks every property and operator it is given."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):  # use_property_split, enabled, ... are plain attributes
        raise AttributeError(name)

    def _child(self, *a, **k):
        return _Layout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **k):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **k):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties, search_name
        self.log.append(("prop_search", name, search_name))

    def operator(self, idname, **k):
        mod, op = idname.split(".")
        getattr(getattr(bpy.ops, mod), op).get_rna_type()  # raises KeyError when not registered
        self.log.append(("operator", idname))
        from types import SimpleNamespace

        return SimpleNamespace()  # Blender returns the operator's properties, which a panel may set

    def label(self, text="", **k):
        self.log.append(("label", text))

    def separator(self, **k):
        pass

    def progress(self, **k):
        self.log.append(("progress", k.get("text")))


def _draw(cls, instance_data=None):
    from types import SimpleNamespace

    log = []
    self = instance_data if instance_data is not None else SimpleNamespace()
    object.__setattr__(self, "layout", _Layout(log)) if instance_data is not None else setattr(self, "layout",
                                                                                               _Layout(log))
    cls.draw(self, bpy.context)
    return log


def test_panel_draws_pickers_settings_and_buttons(lipsync_addon, made_media):
    scene = be.new_scene("Panel")
    be.add_edit(scene, made_media)
    log = _draw(bpy.types.LIPSYNC_PT_panel)
    assert ("prop_search", "video_strip", "strips") in log and ("prop_search", "audio_strip", "strips") in log
    # new strips are selected: the selection is what a press uses (the movie's own sound is no dub)
    assert ("label", "Using: 1 selected movie strip(s)") in log and ("label", "Dub: 1 selected sound strip(s)") in log
    for s in be.strips(scene):
        s.select = False
    log = _draw(bpy.types.LIPSYNC_PT_panel)
    assert ("label", "Using: clip") in log and ("label", "Dub: speech") in log  # the defaults it will use
    assert ("operator", "lipsync.restore_original") in log
    for name in ("segment_source", "blend_mode", "pads"):
        assert ("prop", name) in log
    assert ("operator", "lipsync.detect_segments") in log and ("operator", "lipsync.sync") in log


def test_preferences_draw_and_automatic_python(lipsync_addon, monkeypatch, tmp_path):
    prefs_mod = be.submodule("prefs")
    p = be.prefs()
    p.python_path = ""
    monkeypatch.setenv("LIPSYNC_PYTHON", sys.executable)
    assert prefs_mod.engine_python(p) == sys.executable
    from types import SimpleNamespace

    fake = SimpleNamespace(python_path="", checkpoint_path="", device="AUTO", bl_rna=p.bl_rna)
    log = _draw(type(p), fake)
    assert ("operator", "lipsync.check_python") in log
    assert any(e[0] == "label" and e[1].startswith("Automatic: " + sys.executable) for e in log), log
    monkeypatch.delenv("LIPSYNC_PYTHON")
    monkeypatch.setattr(prefs_mod, "found_python", lambda: None)
    log = _draw(type(p), fake)
    assert any(e[0] == "label" and "No Python with torch found" in e[1] for e in log), log


def test_operators_edit_the_sequencer_scene(configured, made_media):
    """5.0: the Sequencer may show another scene than the window's (context.sequencer_scene)."""
    edit = be.new_scene("Shown")
    be.add_edit(edit, made_media)
    other = be.new_scene("Window")
    assert bpy.context.window.scene == other
    with bpy.context.temp_override(sequencer_scene=edit):
        # reaches the checkpoint check: the strips were found in the sequencer scene, not the empty window one
        configured.checkpoint_path = ""
        with pytest.raises(RuntimeError, match="No checkpoint"):
            bpy.ops.lipsync.sync()
    with pytest.raises(RuntimeError, match="No video strip chosen"):
        bpy.ops.lipsync.sync()


# ---------------------------------------------------------------------------- odd-sized movies


def test_odd_width_is_a_problem_only_for_prores(configured, made_media, tmp_path):
    """ProRes 422 holds only even widths: a 321x241 result could not line up with its strip exactly, so the
    press refuses it and names the encodings that can (H.264 / FFV1 write odd sizes 4:4:4: test_addon_e2e)."""
    from lipsync_core.media import ffmpeg_exe
    from tools import sample_media as media

    w, h, n = 321, 241, 12
    src = tmp_path / "odd.mp4"  # yuv444p: H.264 can hold odd sizes there (yuv420p cannot)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                    "-r", "25", "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-crf", "12", str(src)],
                   input=media.astronaut_frames(n, w, h).tobytes(), check=True)
    scene = be.new_scene("Odd")
    coll = scene.sequence_editor.strips
    scene.sequence_editor.active_strip = coll.new_movie("odd", str(src), 1, 1)
    coll.new_sound("speech", str(made_media / "speech.wav"), 2, 1)
    snapshot = be.submodule("snapshot")
    assert snapshot.strip_problems(scene, coll["odd"], 25.0, "sync", "h264") == []
    assert snapshot.strip_problems(scene, coll["odd"], 25.0, "sync", "ffv1") == []
    configured.result_encoding = "PRORES"
    try:
        _refused(bpy.ops.lipsync.sync, "'odd': its picture is 321x241; a ProRes 422 result needs an even width",
                 scene)
    finally:
        configured.result_encoding = "H264"


def test_keyframed_dub_volume_is_sampled_per_frame(lipsync_addon, made_media):
    snapshot = be.submodule("snapshot")
    scene = be.new_scene("Fade")
    _, _, speech = be.add_edit(scene, made_media)
    assert snapshot.volume_per_frame(scene, speech) == ()
    speech.volume = 0.0
    speech.keyframe_insert("volume", frame=1)
    speech.volume = 1.0
    speech.keyframe_insert("volume", frame=11)
    vols = snapshot.volume_per_frame(scene, speech)
    assert len(vols) == speech.frame_final_duration and vols[0] == 0.0 and vols[10] == 1.0 and 0 < vols[5] < 1


def test_progress_counts_the_whole_press(lipsync_addon):
    jobs = be.submodule("jobs")
    job = jobs.Job.__new__(jobs.Job)  # only the progress fields: no thread, no steps
    job.stage, job.done, job.total = "cut 3 of 4: sync", 50, 100
    assert job.fraction == 0.625 and job.status_line == "cut 3 of 4: sync 50/100"
    job.stage = "checking the edit"
    assert job.fraction == 0.5

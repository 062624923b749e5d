"""The face a cut lip-syncs, stored on its movie strip (bpy 5.0.1, headless): save/load, the job's per-clip
face_choice, the preview -> source pixel conversion of the pick operator, and Detect Segments' marker names."""

# ruff: noqa: F811  (pytest fixtures imported from blender_env come back as test arguments)
from __future__ import annotations

import bpy
import pytest

import blender_env as be
from blender_env import checkpoint, configured, lipsync_addon, made_media  # noqa: F401  (fixtures)


def test_the_choice_is_on_the_strip_and_survives_save_and_load(lipsync_addon, made_media, tmp_path):
    fc = be.submodule("face_choice")
    scene = be.new_scene("Keep")
    movie, _, _ = be.add_edit(scene, made_media)
    assert movie.lipsync_face.mode == "SPEAKER" and fc.face_option_for(movie) == "speaker"
    movie.lipsync_face.mode = "POINT"
    movie.lipsync_face.point = (123.0, 45.5)
    path = tmp_path / "keep.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    strip = bpy.data.scenes["Keep"].sequence_editor.strips_all["clip"]
    assert strip.lipsync_face.mode == "POINT" and tuple(strip.lipsync_face.point) == (123.0, 45.5)
    assert fc.face_option_for(strip) == {"point": [123.0, 45.5]}


def test_the_sync_job_carries_the_cut_choice(configured, made_media):
    snapshot, edit_plan = be.submodule("snapshot"), be.submodule("edit_plan")
    scene = be.new_scene("Job")
    movie, _, _ = be.add_edit(scene, made_media)
    movie.lipsync_face.mode = "LEFT"
    scene.lipsync.segment_source = "STRIP"

    def jobs():
        snap = snapshot.take_edit(bpy.context, "sync")
        cuts = edit_plan.plan_cuts(snap)
        return edit_plan.edit_job(snap, cuts, [c.output for c in cuts]), edit_plan.detect_job(snap), cuts

    job, detect, cuts = jobs()
    assert [c["face_choice"] for c in job["clips"]] == ["left"]
    assert [c["face_choice"] for c in detect["clips"]] == ["left"]
    key = cuts[0].key
    movie.lipsync_face.mode = "POINT"
    movie.lipsync_face.point = (10, 20)
    job, detect, cuts = jobs()
    assert job["clips"][0]["face_choice"] == {"point": [10.0, 20.0]}
    assert detect["clips"][0]["face_choice"] == {"point": [10.0, 20.0]}
    assert cuts[0].key != key  # another face: the cut is made again on the next press


def test_preview_point_to_source_pixels():
    fc = be.submodule("face_choice")
    size = (640, 360)
    # untransformed: the frame's middle is the movie's middle, y flips (preview y up, pixels y down)
    assert fc.preview_to_source((0, 0), size) == (320, 180)
    assert fc.preview_to_source((-310, 170), size) == (10, 10)
    assert fc.preview_to_source((400, 0), size) is None  # right of the picture
    # moved right by 100 and up by 50: the same movie pixel is 100 right and 50 up in the preview
    assert fc.preview_to_source((-210, 220), size, offset=(100, 50)) == (10, 10)
    # half size about the middle: a preview point 10 px from the middle is 20 movie pixels from it
    assert fc.preview_to_source((10, -10), size, scale=(0.5, 0.5)) == (340, 200)
    # a quarter turn counter-clockwise: the movie's right (+x) points up in the preview
    x, y = fc.preview_to_source((0, 50), size, rotation=3.141592653589793 / 2)
    assert x == pytest.approx(370) and y == pytest.approx(180)
    # flipped left-right; cropped pixels are not part of the picture
    assert fc.preview_to_source((-310, 170), size, flip=(True, False)) == (630, 10)
    assert fc.preview_to_source((-310, 170), size, crop=(20, 0, 0, 0)) is None
    assert fc.preview_to_source((-290, 170), size, crop=(20, 0, 0, 0)) == (30, 10)


def test_preview_point_of_a_real_strip_uses_its_size_and_transform(lipsync_addon, made_media):
    fc = be.submodule("face_choice")
    scene = be.new_scene("Pick")
    movie, _, _ = be.add_edit(scene, made_media)  # 320x240
    movie.transform.offset_x, movie.transform.offset_y = 40, -20
    assert fc.strip_source_point(movie, (40, -20)) == (160, 120)
    movie.crop.max_y = 30  # 30 rows off the top
    assert fc.strip_source_point(movie, (40, 100 - 20 + 10)) is None
    assert fc.strip_source_point(movie, (40, 80 - 20)) == (160, 40)


def test_panel_shows_the_face_choice_and_the_pick_button(lipsync_addon, made_media):
    from test_addon_blender import _draw

    scene = be.new_scene("PanelFace")
    movie, _, _ = be.add_edit(scene, made_media)
    log = _draw(bpy.types.LIPSYNC_PT_panel)
    assert ("prop", "mode") in log and ("operator", "lipsync.pick_face") in log and ("prop", "point") not in log
    movie.lipsync_face.mode = "POINT"
    assert ("prop", "point") in _draw(bpy.types.LIPSYNC_PT_panel)


def test_pick_operator_is_registered_for_the_sequencer(lipsync_addon):
    """The modal click itself needs a window (not headless): its conversion is tested above."""
    be.new_scene("PickPoll")
    assert bpy.ops.lipsync.pick_face.poll()
    assert "strip_name" in bpy.ops.lipsync.pick_face.get_rna_type().properties


def test_detected_face_labels_become_parseable_marker_names():
    tl, plan = be.submodule("timeline"), be.submodule("plan")
    row = {"start_frame": 0, "end_frame": 50, "face": True, "choice": "speaker", "chosen": 1, "fallback": None,
           "faces": [{"box": [300, 10, 400, 110]}, {"box": [10, 10, 110, 110]}]}
    assert plan.face_label(row) == "speaker, left of 2"
    assert plan.face_label({**row, "fallback": "no sound"}) == "largest: no sound, left of 2"
    assert plan.face_label({**row, "faces": row["faces"][:1], "chosen": 0}) == ""  # one face: nothing chosen
    assert plan.face_label({"start_frame": 0, "end_frame": 5, "face": False}) == ""
    # a speaker change: two face segments side by side stay two segments, each with its own marker
    segs = tl.cover([(10, 40, True, "speaker, left of 2"), (40, 70, True, "speaker, right of 2")], 0, 80)
    names = tl.markers_for_segments(segs)
    assert names == [(0, "LS no face"), (10, "LS face (speaker, left of 2)"), (40, "LS face (speaker, right of 2)"),
                     (70, "LS no face"), (80, "LS end")]
    assert all(tl.is_own_marker(n) for _, n in names)
    back = tl.segments_from_markers(names, 0, 80)
    assert [(s.start, s.end, s.face) for s in back] == [(0, 10, False), (10, 40, True), (40, 70, True),
                                                        (70, 80, False)]

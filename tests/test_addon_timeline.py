"""The add-on's pure helpers (frame maths, channels, marker segments, job plans): no bpy, no worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon import edit_plan, plan, worker_client
from addon import timeline as tl
from addon.edit_plan import CutRef, DubRef, EditSnapshot
from addon.plan import PlanError
from addon.timeline import TimelineSegment, Timing


def test_movie_source_frames_follow_offsets_not_trims():
    t = Timing(frame_start=10, final_start=15, final_end=50, animation_offset_start=3)
    assert tl.source_frame(t, 10) == 3  # content start = file frame 3 (hold offset)
    assert tl.source_frame(t, 15) == 8  # trim hides frames but does not shift them
    assert tl.source_range(t, *t.visible) == (8, 43)
    assert tl.timeline_frame(t, 8) == 15


def test_sound_seconds_honour_offset_and_sound_offset():
    t = Timing(frame_start=26, final_start=30, final_end=100, animation_offset_start=10, sound_offset=0.2)
    assert tl.sound_seconds(t, 26, 25.0) == pytest.approx(10 / 25 - 0.2)
    assert tl.sound_seconds(t, 51, 25.0) == pytest.approx(35 / 25 - 0.2)
    early = Timing(frame_start=20, final_start=20, final_end=60)
    assert tl.sound_seconds(early, 10, 25.0) == pytest.approx(-0.4)  # before the file: negative, silence


def test_fps_match():
    assert tl.fps_matches(30000 / 1001, 29.97)
    assert tl.fps_matches(25.0, tl.scene_fps(25, 1.0))
    assert not tl.fps_matches(25.0, 24.0)
    assert not tl.fps_matches(30.0, 29.97)


def test_occupied_ranges_and_first_free_channel():
    strips = [(1, 1, 100), (2, 1, 100), (3, 50, 60), (3, 55, 70), (4, 200, 300)]
    assert tl.occupied_ranges(strips, 3) == [(50, 70)]
    assert tl.first_free_channel(strips, 1, [(1, 40)]) == 3  # channel 3 is free before 50
    assert tl.first_free_channel(strips, 1, [(1, 40), (60, 80)]) == 4
    assert tl.first_free_channel(strips, 1, [(250, 260)]) == 2  # channel 2 ends at 100
    assert tl.first_free_channel([(c, 0, 10) for c in range(2, 129)], 1, [(0, 5)]) is None
    assert tl.first_free_channel(strips, 2, [(100, 120)]) == 3  # touching ends do not overlap


def test_segments_from_markers_inside_strip_only():
    markers = [(1, "LS face"), (41, "LS no face"), (71, "LS face"), (111, "LS end"), (300, "intro")]
    segs = tl.segments_from_markers(markers, 1, 111)
    assert segs == [TimelineSegment(1, 41, True), TimelineSegment(41, 71, False), TimelineSegment(71, 111, True)]
    assert tl.segments_from_markers([(5, "a"), (20, "b")], 10, 100) == []
    assert tl.segments_from_markers([(20, "a"), (30, "b")], 10, 100) == [TimelineSegment(20, 30, None)]


def test_markers_for_segments_round_trip():
    segs = [TimelineSegment(1, 41, True), TimelineSegment(41, 71, False), TimelineSegment(71, 111, True)]
    markers = tl.markers_for_segments(segs)
    assert markers == [(1, "LS face"), (41, "LS no face"), (71, "LS face"), (111, "LS end")]
    assert tl.segments_from_markers(markers, 1, 111) == segs
    assert all(tl.is_own_marker(n) for _, n in markers)


def test_cover_fills_gaps_and_merges():
    assert tl.cover([(10, 20, True), (30, 40, True)], 0, 50) == [
        TimelineSegment(0, 10, False), TimelineSegment(10, 20, True), TimelineSegment(20, 30, False),
        TimelineSegment(30, 40, True), TimelineSegment(40, 50, False)]
    assert tl.cover([(0, 20, True), (20, 40, True)], 5, 30) == [TimelineSegment(5, 30, True)]
    assert tl.cover([], 0, 10) == [TimelineSegment(0, 10, False)]


def test_label_segments_by_face_coverage():
    segs = [TimelineSegment(0, 40, None), TimelineSegment(40, 70, None), TimelineSegment(70, 110, True)]
    out = tl.label_segments(segs, [(0, 38), (72, 110)])
    assert [s.face for s in out] == [True, False, True]


def _edit(tmp_path: Path, dubs=None, **kw) -> EditSnapshot:
    for name in ("clip.mp4", "speech.wav", "ck.pth"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"x" * 10)
    cut = CutRef("clip", str(tmp_path / "clip.mp4"), Timing(frame_start=1, final_start=6, final_end=111), 25.0,
                 str(tmp_path / "clip.mp4"), ((6, "LS face"), (41, "LS no face"), (71, "LS face"), (111, "LS end")))
    speech = DubRef("speech", str(tmp_path / "speech.wav"),
                    Timing(frame_start=11, final_start=11, final_end=200, animation_offset_start=5), 1.0)
    base = {"scene": "Edit", "fps": 25.0, "cuts": (cut,), "dubs": {"clip": (speech,) if dubs is None else dubs},
            "python": "/py", "checkpoint": str(tmp_path / "ck.pth"), "out_dir": str(tmp_path / "out")}
    base.update(kw)
    return EditSnapshot(**base)


def test_edit_plan_maps_cut_dub_and_segments(tmp_path):
    (cut,) = edit_plan.plan_cuts(_edit(tmp_path))
    assert (cut.start_frame, cut.end_frame, cut.timeline) == (5, 110, (6, 111))  # the visible range
    # the dub starts at 11 with a hold offset of 5 frames: 0.2 s into its file, 0.2 s into the cut
    assert cut.dub == ({"file": str(tmp_path / "speech.wav"), "from": 0.2, "at": 0.2, "seconds": 4.0,
                        "volume": 1.0},)
    assert cut.source_dub_ranges == [(10, 110)]
    assert cut.segments == [{"start_frame": 5, "end_frame": 40, "face": True},
                            {"start_frame": 40, "end_frame": 70, "face": False},
                            {"start_frame": 70, "end_frame": 110, "face": True}]
    job = edit_plan.edit_job(_edit(tmp_path), [cut], ["/o.mp4"])
    assert job["command"] == "sync" and "video" not in job and job["clips"][0]["sync_ranges"] == [[10, 110]]
    assert job["options"]["pads"] == [0, 10, 0, 0] and job["options"]["blend"] == "feather"
    assert Path(cut.output).parent == tmp_path / "out" and cut.key[:12] in cut.output


@pytest.mark.parametrize("codec", ["h264", "prores", "ffv1"])
def test_result_encoding_goes_to_the_job_and_names_the_files(tmp_path, codec):
    from lipsync_core.media import CODECS

    snap = _edit(tmp_path, options={"codec": codec})
    cuts = edit_plan.plan_cuts(snap)
    job = edit_plan.edit_job(snap, cuts, [c.output for c in cuts])
    assert job["options"]["codec"] == codec
    assert job["options"]["exact_size"] is True  # a result replaces its movie: the same size, odd ones too
    # the add-on's table (it cannot import the engine) names each file as the engine writes it
    assert all(Path(c.output).suffix == CODECS[codec].extensions[0] for c in cuts)
    assert set(edit_plan.RESULT_EXTENSIONS) == set(CODECS)


def test_edit_plan_mixes_several_dub_strips(tmp_path):
    a = DubRef("a", str(tmp_path / "speech.wav"), Timing(frame_start=1, final_start=20, final_end=50), 0.5)
    b = DubRef("b", str(tmp_path / "speech.wav"), Timing(frame_start=40, final_start=40, final_end=300,
                                                          sound_offset=0.1), 1.0)
    (cut,) = edit_plan.plan_cuts(_edit(tmp_path, dubs=(a, b)))
    assert [(d["from"], d["at"], d["seconds"], d["volume"]) for d in cut.dub] == [
        (19 / 25, 14 / 25, 30 / 25, 0.5), (-0.1, 34 / 25, 71 / 25, 1.0)]
    assert cut.dub_ranges == ((20, 111),)  # overlapping strips: one range to mute and sync
    # a keyframed volume: one value per frame of the part; a strip faded out over the whole cut is no dub
    fade = DubRef("a", a.path, a.timing, 0.5, tuple(k / 100 for k in range(20, 50)))  # frames 20-49
    silent = DubRef("b", b.path, b.timing, 1.0, (0.0,) * 260)
    (cut,) = edit_plan.plan_cuts(_edit(tmp_path, dubs=(fade, silent)))
    assert len(cut.dub) == 1 and cut.dub[0]["volume"] == [k / 100 for k in range(20, 50)]


def test_edit_keys_follow_every_input(tmp_path):
    key = edit_plan.plan_cuts(_edit(tmp_path))[0].key
    assert edit_plan.plan_cuts(_edit(tmp_path))[0].key == key
    assert edit_plan.plan_cuts(_edit(tmp_path, pads=(0, 12, 0, 0)))[0].key != key
    assert edit_plan.plan_cuts(_edit(tmp_path, device="cpu"))[0].key == key  # same picture on any device
    louder = DubRef("speech", str(tmp_path / "speech.wav"),
                    Timing(frame_start=11, final_start=11, final_end=200, animation_offset_start=5), 0.9)
    assert edit_plan.plan_cuts(_edit(tmp_path, dubs=(louder,)))[0].key != key
    (tmp_path / "speech.wav").write_bytes(b"y" * 11)  # the dub file re-exported
    assert edit_plan.plan_cuts(_edit(tmp_path))[0].key != key


def test_edit_problems_are_listed_together(tmp_path):
    snap = _edit(tmp_path, dubs=())
    other = CutRef("other", snap.cuts[0].path, Timing(frame_start=1, final_start=200, final_end=260), 25.0, "", ())
    snap = _edit(tmp_path, dubs=(), cuts=(snap.cuts[0], other))
    with pytest.raises(PlanError) as err:
        edit_plan.plan_cuts(snap)
    msg = str(err.value)
    assert msg.startswith("Lip Sync found 2 problem(s); nothing was run:")
    assert "'clip': no dub plays under it" in msg and "'other': no dub plays under it" in msg
    nodub = _edit(tmp_path)
    with pytest.raises(PlanError, match="'clip': Segments come from markers, but 0 marker"):
        edit_plan.plan_cuts(_edit(tmp_path, cuts=(CutRef(**{**nodub.cuts[0].__dict__, "markers": ()}),)))
    noface = CutRef(**{**nodub.cuts[0].__dict__, "markers": ((6, "LS no face"), (111, "LS end"))})
    with pytest.raises(PlanError, match="No face anywhere"):
        edit_plan.plan_cuts(_edit(tmp_path, cuts=(noface,)))


def test_detect_job_uses_visible_source_range_and_maps_back(tmp_path):
    snap = _edit(tmp_path)
    job = edit_plan.detect_job(snap)
    assert job["command"] == "segments" and [(c["start_frame"], c["end_frame"]) for c in job["clips"]] == [(5, 110)]
    answer = {"segments": [{"start_frame": 5, "end_frame": 40, "face": True},
                           {"start_frame": 40, "end_frame": 70, "face": False},
                           {"start_frame": 70, "end_frame": 110, "face": True}]}
    assert edit_plan.detected_segments(snap.cuts[0], answer) == [
        TimelineSegment(6, 41, True), TimelineSegment(41, 71, False), TimelineSegment(71, 111, True)]


def test_died_message_names_exit_and_stderr():
    msg = worker_client.died_message(-9, ["Traceback", "MemoryError"])
    assert "signal 9" in msg and "MemoryError" in msg and "not changed" in msg
    assert "code 3" in worker_client.died_message(3, [])


def test_worker_env_points_at_bundled_core(monkeypatch):
    monkeypatch.delenv("LIPSYNC_CACHE_DIR", raising=False)
    env = worker_client.subprocess_env("/ext/cache")
    assert Path(env["PYTHONPATH"]) == worker_client.core_dir()
    assert env["LIPSYNC_CACHE_DIR"] == "/ext/cache"
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", "/mine")
    assert worker_client.subprocess_env("/ext/cache")["LIPSYNC_CACHE_DIR"] == "/mine"  # the user's choice wins
    assert (worker_client.core_dir() / "lipsync_core" / "worker.py").is_file()


def test_detected_ranges_read_exactly_the_contracts_keys(tmp_path):
    """start_frame / end_frame / face only: `start`/`end` are seconds in the engine's JSON, `has_face` is not sent."""
    rows = [{"start_frame": 5, "end_frame": 40, "start": 0.2, "end": 1.6, "face": True},
            {"start_frame": 40, "end_frame": 110, "start": 1.6, "end": 4.4, "face": False}]
    assert plan.detected_ranges({"fps": 25.0, "segments": rows}) == [(5, 40, True), (40, 110, False)]
    for bad in ({"start": 0.2, "end": 1.6, "face": True},  # seconds, no frames
                {"start_frame": 5, "end_frame": 40, "has_face": True},  # not the contract's name
                {"start_frame": 5, "end_frame": 40, "face": "yes"},
                {"start_frame": 5, "face": True}):
        with pytest.raises(PlanError, match="engine and add-on do not match"):
            plan.detected_ranges({"segments": [bad]})
    with pytest.raises(PlanError, match="no segments"):
        plan.detected_ranges({"fps": 25.0})


def test_detected_ranges_match_the_engines_own_output(tmp_path):
    """What `lipsync_core.segments.segments_to_dict` (the worker's and `segments --json`'s answer) produces."""
    from lipsync_core.segments import Segment as EngineSegment
    from lipsync_core.segments import segments_to_dict

    out = segments_to_dict([EngineSegment(0, 30, True), EngineSegment(30, 50, False)], 25.0, 50)
    assert plan.detected_ranges(out) == [(0, 30, True), (30, 50, False)]


# -- the farm batch folder (batch_io): path maps and the export's jobs


def test_path_map_rewrites_by_the_longest_folder_and_back():
    from addon import batch_io as bio

    rules = bio.parse_path_map(" /mnt/projects=/shared/projects ; /mnt/projects/film=/film\n/Volumes/m/=/mnt/m ")
    assert rules == [("/mnt/projects", "/shared/projects"), ("/mnt/projects/film", "/film"), ("/Volumes/m", "/mnt/m")]
    assert bio.map_path("/mnt/projects/a/b.mp4", rules) == "/shared/projects/a/b.mp4"
    assert bio.map_path("/mnt/projects/film/r1.mov", rules) == "/film/r1.mov"  # the longest folder wins
    assert bio.map_path("/mnt/projects2/x.mp4", rules) == "/mnt/projects2/x.mp4"  # folders, not text prefixes
    assert bio.map_path("/film/r1.mov", rules, inverse=True) == "/mnt/projects/film/r1.mov"
    assert bio.farm_path("/mnt/projects/dub/dub/c.wav", "/mnt/projects/dub", rules) == ("dub/c.wav", True)
    assert bio.farm_path("/home/me/x.mp4", "/mnt/projects/dub", rules) == ("/home/me/x.mp4", False)
    for bad in ("/mnt/projects", "=/farm", "/here="):
        with pytest.raises(PlanError, match="is not HERE=FARM"):
            bio.parse_path_map(bad)


def test_export_is_one_job_per_distinct_cut_in_the_batch_format(tmp_path):
    from addon import batch_io as bio
    from lipsync_core.batch import check_batch

    src, dub, ckpt = tmp_path / "src.mp4", tmp_path / "dub.wav", tmp_path / "w.pth"
    for f in (src, dub, ckpt):
        f.write_bytes(b"x")
    t = Timing(frame_start=1, final_start=1, final_end=26)
    cuts = tuple(CutRef(n, str(src), t, 25.0, str(src), ((1, "LS face"), (11, "LS no face"), (26, "LS end")), fc)
                 for n, fc in (("c1", "speaker"), ("c2", {"point": [10, 20]})))
    d = DubRef("d", str(dub), Timing(frame_start=5, final_start=5, final_end=20), 0.5)
    snap = EditSnapshot("S", 25.0, cuts, {"c1": (d,), "c2": (d,)}, checkpoint=str(ckpt), out_dir=str(tmp_path / "r"),
                        options={"codec": "ffv1"})
    plans = edit_plan.plan_cuts(snap)
    exp = bio.build_export(snap, plans, str(tmp_path / "batch"), [(str(tmp_path), "/farm")], {"c1": ["d"]})
    assert [j["options"] for j in exp.jobs["jobs"]] == [{"face": "speaker"}, {"face_at": [10.0, 20.0]}]
    j = exp.jobs["jobs"][0]
    assert (j["video"], j["audio"], j["output"]) == ("/farm/src.mp4", f"dub/{j['id']}.wav", f"out/{j['id']}.mkv")
    assert (j["start"] * 25, j["end"] * 25, j["dub_ranges"]) == (0, 25, [[4 / 25, 19 / 25]])
    assert j["face_ranges"] == [{"start": 0.0, "end": 0.4, "face": True}, {"start": 0.4, "end": 1.0, "face": False}]
    assert exp.jobs["options"] == {"pads": [0, 10, 0, 0], "blend": "feather", "detector": "auto",
                                   "no_smooth": False, "exact_size": True, "codec": "ffv1"}
    assert exp.mixes[0]["dub"] == list(plans[0].dub) and exp.mixes[0]["seconds"] == 1.0
    assert exp.manifest["jobs"][0]["key"] == plans[0].key and exp.manifest["jobs"][0]["cuts"] == ["c1"]
    batch = check_batch(exp.jobs, tmp_path / "batch" / "JOBS.json")  # the engine reads it as written
    assert batch.jobs[0].dub_ranges == [(0.16, 0.76)] and batch.jobs[1].options.face_at == (10.0, 20.0)
    # two cuts with the same inputs share one job, as a press shares one result
    c3 = CutRef("c3", str(src), t, 25.0, str(src), cuts[0].markers, "speaker")
    same = EditSnapshot("S", 25.0, (cuts[0], c3), {"c1": (d,), "c3": (d,)}, checkpoint=str(ckpt),
                        out_dir=str(tmp_path / "r"))
    exp = bio.build_export(same, edit_plan.plan_cuts(same), str(tmp_path / "batch"), [], {})
    assert len(exp.jobs["jobs"]) == 1 and exp.manifest["jobs"][0]["cuts"] == ["c1", "c3"]


def test_reading_a_batch_folder_finished_failed_missing(tmp_path):
    import json

    from addon import batch_io as bio

    jobs = [{"id": i, "output": f"out/{i}.mp4", "key": "k" + i, "cuts": ["c" + i], "dubs": {}} for i in "abcd"]
    (tmp_path / bio.MANIFEST).write_text(json.dumps({"version": 1, "jobs": jobs}))
    (tmp_path / "out").mkdir()
    for i in "ab":  # finished: output and its record (b's job failed in an older run: the output wins)
        (tmp_path / "out" / f"{i}.mp4").write_bytes(b"12345")
        (tmp_path / "out" / f"{i}.mp4.lipsync.json").write_text(json.dumps(
            {"job": i, "output": {"size": 5}, "clip": {"face_frames": 3}}))
    (tmp_path / "out" / "d.mp4").write_bytes(b"partial")  # no record yet
    (tmp_path / bio.REPORT).write_text(json.dumps({"jobs": [{"id": "b", "status": "failed"},
                                                            {"id": "c", "status": "failed", "message": "no face"}]}))
    st = bio.read_folder(str(tmp_path))
    assert [(f.id, f.key, f.clip) for f in st.finished] == [("a", "ka", {"face_frames": 3}),
                                                             ("b", "kb", {"face_frames": 3})]
    assert st.failed == [("c", ["cc"], "no face")]
    assert st.missing == [("d", ["cd"], "its output has no record (still being written?)")]
    with pytest.raises(PlanError, match="holds no Lip Sync batch"):
        bio.read_folder(str(tmp_path / "out"))

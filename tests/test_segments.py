"""Face / no-face segments: from a real made clip, from presence flags, and from ranges an editor typed."""

from __future__ import annotations

import itertools
import json
import subprocess

import numpy as np
import pytest

from lipsync_core.errors import LipsyncError
from lipsync_core.faces.detectors import OpenCVDetector
from lipsync_core.faces.track import track_faces
from lipsync_core.media import ffmpeg_exe
from lipsync_core.segments import Segment, all_face, parse_ranges, segments_from_presence, segments_to_dict
from tools import sample_media


def S(a, b, face):
    return Segment(a, b, face)


def decode(path, w=sample_media.W, h=sample_media.H):
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def test_segments_of_a_face_noface_face_clip(media_dir):
    clip = sample_media.face_noface_face_clip(media_dir / "fnf.mp4", 40, 30, 40)
    frames = decode(clip)
    assert len(frames) == 110
    track = track_faces(iter(frames), OpenCVDetector(), detect_every=5, total=len(frames))
    segs = segments_from_presence(track.has_face, min_frames=12, max_gap=8, fps=25.0)
    assert [s.face for s in segs] == [True, False, True]
    assert abs(segs[0].end_frame - 40) <= 2 and abs(segs[2].start_frame - 70) <= 2
    assert segs[0].start_frame == 0 and segs[-1].end_frame == 110
    assert segs[1].start == pytest.approx(segs[1].start_frame / 25)


def test_gaps_bridged_then_short_runs_merged():
    has = np.r_[np.ones(20), np.zeros(3), np.ones(20), np.zeros(30), np.ones(2), np.zeros(25)].astype(bool)
    segs = segments_from_presence(has, min_frames=5, max_gap=4)
    # the 3-frame gap is bridged; the 2-frame face blip joins the no-face around it
    assert segs == [S(0, 43, True), S(43, 100, False)]
    # without bridging the 3-frame gap is a short run too and is merged away
    assert segments_from_presence(has, min_frames=5, max_gap=0) == segs
    # edges are not "inside faces": a leading gap stays when min_frames allows it
    lead = np.r_[np.zeros(3), np.ones(10)].astype(bool)
    assert segments_from_presence(lead, min_frames=1, max_gap=5) == [S(0, 3, False), S(3, 13, True)]
    assert segments_from_presence(lead, min_frames=5, max_gap=5) == [S(0, 13, True)]


def test_merging_keeps_cover_and_alternation():
    rng = np.random.default_rng(0)
    has = rng.random(5000) < 0.5  # flicker: thousands of runs
    segs = segments_from_presence(has, min_frames=25, max_gap=3)
    assert segs[0].start_frame == 0 and segs[-1].end_frame == 5000
    assert all(a.end_frame == b.start_frame and a.face != b.face for a, b in itertools.pairwise(segs))
    assert all(s.frames >= 25 for s in segs) or len(segs) == 1


def test_presence_edge_cases():
    assert segments_from_presence(np.zeros(0, bool), 5, 3) == []
    assert segments_from_presence(np.ones(4, bool), 25, 8) == [S(0, 4, True)]  # shorter than min: kept whole
    assert segments_from_presence(np.zeros(7, bool), 1, 8) == [S(0, 7, False)]
    assert all_face(240) == [S(0, 240, True)] and all_face(0) == []


def test_parse_ranges_seconds():
    assert parse_ranges("1.5-3.25", 25, 240) == [S(0, 38, False), S(38, 81, True), S(81, 240, False)]
    segs = parse_ranges("31-60,69-84", 25, 2500)
    assert segs == [S(0, 775, False), S(775, 1500, True), S(1500, 1725, False), S(1725, 2100, True),
                    S(2100, 2500, False)]
    assert segs[1].start == 31.0 and segs[1].end == 60.0
    # minutes:seconds, spaces, en dash, any order; ranges at the clip's edges leave no empty segment
    assert parse_ranges(" 0:06 \u2013 0:09.6 ; 0-2 ", 25, 240) == [S(0, 50, True), S(50, 150, False),
                                                                   S(150, 240, True)]
    # touching ranges are one face segment; 29.97 fps rounds to the nearest frame
    assert parse_ranges("0-1,1-2", 25, 100) == [S(0, 50, True), S(50, 100, False)]
    assert parse_ranges("1-2", 30000 / 1001, 300) == [S(0, 30, False), S(30, 60, True), S(60, 300, False)]


@pytest.mark.parametrize("text, message", [
    ("abc", "Cannot read"),
    ("1.5", "Cannot read"),
    ("1-2-3", "Cannot read"),
    ("", "No face ranges"),
    ("3-1", "ends before it starts"),
    ("1-3, 2-4", "overlap"),
    ("5-12", r"9\.6 s long"),
    ("1-1.01", "shorter than one frame"),
])
def test_parse_ranges_bad(text, message):
    with pytest.raises(LipsyncError, match=message):
        parse_ranges(text, 25, 240)


def test_segments_to_dict_shape():
    segs = [Segment(0, 90, True), Segment(90, 240, False)]
    d = segments_to_dict(segs, 25, 240)
    assert d == {"fps": 25.0, "frames": 240, "segments": [
        {"start_frame": 0, "end_frame": 90, "start": 0.0, "end": 3.6, "face": True},
        {"start_frame": 90, "end_frame": 240, "start": 3.6, "end": 9.6, "face": False}]}
    assert json.loads(json.dumps(d)) == d
    assert isinstance(d["segments"][0]["start"], float)


def test_segment_seconds_need_fps():
    s = Segment(50, 75, True, 25.0)
    assert (s.start, s.end, s.frames) == (2.0, 3.0, 25)
    assert s == Segment(50, 75, True)  # fps is not part of equality
    with pytest.raises(ValueError):
        _ = Segment(0, 1, True).start

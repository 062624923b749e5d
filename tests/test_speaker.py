"""Which face speaks: --face speaker (the face whose mouth follows the clip's own sound), --face-at X Y, and
the per-clip face_choice of worker jobs. Real footage (two talking heads side by side, one's sound as the
clip's own) where ../shared/media is present, made media otherwise."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lipsync_core.errors import LipsyncError
from lipsync_core.faces import speaker
from lipsync_core.faces.track import FaceSet, FollowedFace
from lipsync_core.media import ffmpeg_exe
from lipsync_core.progress import Progress
from lipsync_core.segments import Segment
from lipsync_core.sync import SyncOptions, find_segments
from tools import sample_media
from tools.random_weights import write_random_checkpoint

SIDE = 240  # each talking head is scaled to SIDE x SIDE: the pair is 480x240, the analysis width


class Logged(Progress):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def side_by_side(out, left, right, sound, shared, extra_audio_filter="anull"):
    """talking_head_<left> | talking_head_<right>, with talking_head_<sound>'s sound (None: no sound)."""
    inputs = ["-i", str(shared / f"talking_head_{left}.mp4"), "-i", str(shared / f"talking_head_{right}.mp4")]
    graph = f"[0:v]scale={SIDE}:{SIDE}[l];[1:v]scale={SIDE}:{SIDE}[r];[l][r]hstack=shortest=1[v]"
    maps = ["-map", "[v]"]
    if sound is not None:
        inputs += ["-i", str(shared / f"talking_head_{sound}.mp4")]
        graph += f";[2:a]{extra_audio_filter}[a]"
        maps += ["-map", "[a]", "-c:a", "aac"]
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *inputs, "-filter_complex", graph, *maps, "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "16", "-t", "5", str(out)], check=True)
    return out


def chosen_side(result, seg=0):
    s = [x for x in result["segments"] if x["face"]][seg]
    box = s["faces"][s["chosen"]]["box"]
    return "left" if (box[0] + box[2]) / 2 < SIDE else "right"


def options(**kw):
    return SyncOptions(detector="opencv", cache=False, **kw)


@pytest.fixture(scope="module")
def pairs(shared_media, tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    return {name: side_by_side(d / f"{name}.mp4", *name.split("_")[:2], name.split("_")[2].removeprefix("s"),
                               shared_media)
            for name in ("a_b_sa", "a_b_sb", "b_a_sa")}


# ----------------------------------------------------------------------------------------------- real footage


@pytest.mark.parametrize("name,expected", [("a_b_sa", "left"), ("a_b_sb", "right"), ("b_a_sa", "right")])
def test_the_speaker_is_the_face_whose_sound_the_clip_carries(pairs, name, expected):
    """Swap the sound or the sides and the choice follows the person who speaks."""
    r = find_segments(str(pairs[name]), options(face="speaker"))
    seg = [s for s in r["segments"] if s["face"]]
    assert len(seg) == 1 and seg[0]["fallback"] is None
    assert chosen_side(r) == expected
    scores = sorted(f["score"] for f in seg[0]["faces"])
    assert len(scores) == 2 and scores[1] - scores[0] >= speaker.MIN_MARGIN


def test_a_point_selects_the_other_face(pairs):
    """a|b with a's sound: the speaker is left; a point on the right face picks the right one."""
    r = find_segments(str(pairs["a_b_sa"]), options(face="speaker", face_at=(SIDE * 1.5, SIDE / 2)))
    assert chosen_side(r) == "right" and r["segments"][0]["choice"] == f"point {SIDE * 1.5:g} {SIDE / 2:g}"


def test_a_speaker_change_splits_the_face_segment(shared_media, tmp_path):
    """First half a's sound, second half b's: two face segments, the left face then the right one."""
    mixed = tmp_path / "mixed.wav"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(shared_media / "talking_head_a.mp4"), "-i",
                    str(shared_media / "talking_head_b.mp4"), "-filter_complex",
                    "[0:a]atrim=0:2.5[x];[1:a]atrim=2.5:5,asetpts=PTS-STARTPTS[y];[x][y]concat=n=2:v=0:a=1[s]",
                    "-map", "[s]", str(mixed)], check=True)
    clip = side_by_side(tmp_path / "ab.mp4", "a", "b", None, shared_media)
    both = tmp_path / "ab_switch.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-i", str(mixed), "-map", "0:v", "-map",
                    "1:a", "-c:v", "copy", "-c:a", "aac", str(both)], check=True)
    r = find_segments(str(both), options(face="speaker"))
    faces = [s for s in r["segments"] if s["face"]]
    assert [chosen_side(r, i) for i in range(len(faces))] == ["left", "right"]
    assert 50 <= faces[1]["start_frame"] <= 85  # the sound changes at frame 62 (2.5 s)
    assert faces[0]["end_frame"] == faces[1]["start_frame"]


def test_no_sound_falls_back_to_the_largest_face_with_one_warning(shared_media, tmp_path):
    one = tmp_path / "one.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(shared_media / "talking_head_b.mp4"), "-an",
                    "-vf", "scale=240:240", "-c:v", "libx264", "-preset", "veryfast", str(one)], check=True)
    log = Logged()
    r = find_segments(str(one), options(face="speaker"), progress=log)
    seg = r["segments"][0]
    assert seg["fallback"] == "no sound" and seg["chosen"] == 0 and len(seg["faces"]) == 1
    warnings = [m for m in log.lines if m.startswith("warning: --face speaker")]
    assert len(warnings) == 1 and "no sound of its own" in warnings[0]


def test_sync_regenerates_only_the_speakers_mouth(pairs, tmp_path):
    """The whole run: the output differs from the source around the speaking (left) face's mouth only."""
    from lipsync_core.media import FrameReader
    from lipsync_core.sync import sync

    ckpt = write_random_checkpoint(tmp_path / "w.pth")
    out = tmp_path / "out.mp4"
    src = pairs["a_b_sa"]
    r = sync(str(src), str(src), str(out), str(ckpt), options(face="speaker", segments="all"))
    assert r["face_choices"][0]["fallback"] is None
    with FrameReader(str(src), end_frame=20) as a, FrameReader(str(out), end_frame=20) as b:
        diff = np.mean([np.abs(x.astype(np.int16) - y).mean(axis=2) for x, y in zip(a, b)], axis=0)
    left, right = diff[SIDE // 2:, :SIDE], diff[SIDE // 2:, SIDE:]  # lower halves: the mouths
    assert left.mean() > 4 * right.mean() and left.max() > 30, (left.mean(), right.mean())


# ----------------------------------------------------------------------------------------------- made media


@pytest.mark.parametrize("side", ["left", "right"])
def test_made_two_faces_the_one_that_talks_with_the_sound_wins(tmp_path, side):
    clip = sample_media.two_faces_one_speaking(tmp_path / "two.mp4", speaker=side)
    r = find_segments(str(clip), options(face="speaker"))
    assert r["segments"][0]["fallback"] is None and len(r["segments"][0]["faces"]) == 2
    assert chosen_side(r) == side


def test_made_one_face_without_sound_falls_back_with_the_warning(tmp_path):
    clip = sample_media.write_video(tmp_path / "mute.mp4", sample_media.astronaut_frames(40))
    log = Logged()
    r = find_segments(str(clip), options(face="speaker"), progress=log)
    assert r["segments"][0]["fallback"] == "no sound"
    assert sum("no sound of its own" in m for m in log.lines) == 1


def test_worker_clip_face_choice_point_and_bad_choice(tmp_path):
    """A worker job's per-clip face_choice: a point picks the right face and is reported; a bad one is an
    error event before anything is written."""
    clip = sample_media.two_faces_one_speaking(tmp_path / "two.mp4", speaker="left", seconds=2.0)
    ckpt = write_random_checkpoint(tmp_path / "w.pth")
    out = tmp_path / "o.mp4"

    def run(choice):
        job = {"command": "sync", "video": str(clip), "audio": str(clip), "checkpoint": str(ckpt),
               "options": {"detector": "opencv", "cache": False},
               "clips": [{"start_frame": 0, "end_frame": 50, "audio_start": 0.0, "output": str(out), "face": True,
                          "face_choice": choice}]}
        p = subprocess.run([sys.executable, "-m", "lipsync_core.worker"], input=json.dumps(job) + "\n",
                           capture_output=True, text=True, timeout=300)
        return [json.loads(x) for x in p.stdout.splitlines()][-1]

    ev = run({"point": [400, 100]})
    assert ev["event"] == "result", ev
    fc = ev["clips"][0]["face_choices"][0]
    assert fc["choice"] == "point 400 100" and fc["faces"][fc["chosen"]]["box"][0] > 240
    out.unlink()
    ev = run("loudest")
    assert ev["event"] == "error" and "unknown face choice 'loudest'" in ev["message"] and not out.exists()


# ----------------------------------------------------------------------------------------------- the parts


def test_sync_score_finds_the_lagged_match():
    rng = np.random.default_rng(1)
    sound = rng.random(200)
    mouth = np.roll(sound, 2) + 0.2 * rng.random(200)  # the mouth trails the sound by 2 frames
    score, lag = speaker.sync_score(mouth, sound)
    assert score > 0.8 and lag == 2
    assert speaker.sync_score(np.ones(200), sound) is None  # a mouth that never moves says nothing
    assert speaker.sync_score(mouth[:10], sound[:10]) is None  # too short to tell


def test_parse_choice_forms_and_errors():
    assert speaker.parse_choice("Speaker") == speaker.FaceChoice("speaker")
    assert speaker.parse_choice({"point": [3, 4]}) == speaker.FaceChoice("point", (3.0, 4.0))
    assert speaker.parse_choice("largest", point=(1, 2)).mode == "point"
    for bad in ("loudest", {"point": [1]}, {"pt": [1, 2]}, ["a", "b"], 7):
        with pytest.raises(LipsyncError, match="face"):
            speaker.parse_choice(bad)


def _face(start, n, x, motion=None):
    boxes = np.tile(np.array([x, 10, x + 40, 50], np.float32), (n, 1))
    return FollowedFace(start, boxes, np.zeros(n, np.float32) if motion is None else motion)


def test_the_chosen_face_is_followed_until_it_leaves_then_the_rest_is_a_new_choice():
    """Never a jump to another face inside a segment: where the chosen face leaves, its segment ends."""
    big = FollowedFace(0, np.tile(np.array([100, 10, 180, 90], np.float32), (30, 1)), np.zeros(30, np.float32))
    small = _face(0, 60, 10)
    faces = FaceSet([big, small], 60, 200, 100)
    base = np.full((60, 4), np.nan)
    segs, rows, reports = speaker.choose_faces([Segment(0, 60, True)], base, faces,
                                               speaker.FaceChoice("largest"), None)
    assert [(s.start_frame, s.end_frame) for s in segs] == [(0, 30), (30, 60)]
    assert (rows[:30, 0] == 100).all() and (rows[30:, 0] == 10).all()
    assert [r.chosen for r in reports] == [0, 0] and len(reports[1].faces) == 1


def test_the_one_face_track_is_used_where_it_is_on_the_chosen_face():
    face = _face(0, 20, 10)
    base = np.tile(np.array([11, 11, 51, 51], np.float64), (20, 1))  # the same face, more exactly placed
    base[15:] = [150, 10, 190, 50]  # ... until it moved to another face: the followed face's boxes then
    _, rows, _ = speaker.choose_faces([Segment(0, 20, True)], base, FaceSet([face], 20, 200, 100),
                                      speaker.FaceChoice("speaker"), None)
    assert (rows[:15, 0] == 11).all() and (rows[15:, 0] == 10).all()


def test_no_clear_speaker_falls_back_to_the_largest():
    rng = np.random.default_rng(2)
    loud = rng.random(60)
    a = _face(0, 60, 10, motion=rng.random(60).astype(np.float32))
    b = FollowedFace(0, np.tile(np.array([100, 10, 180, 90], np.float32), (60, 1)),
                     rng.random(60).astype(np.float32))
    _, _, reports = speaker.choose_faces([Segment(0, 60, True)], np.full((60, 4), np.nan),
                                         FaceSet([a, b], 60, 200, 100), speaker.FaceChoice("speaker"),
                                         lambda s, e: loud[s:e])
    assert reports[0].fallback == "no clear speaker" and reports[0].chosen == 1
    assert "no face's mouth follows" in speaker.fallback_warning(reports)


def test_the_one_face_track_carries_the_chosen_face_to_its_exact_end():
    """The every-face follower sees a face only every few frames; where the one-face track follows the same
    face on, the face segment ends where that track says, not at the last detection."""
    face = _face(0, 21, 10)  # last detected at frame 20
    base = np.full((40, 4), np.nan)
    base[:27] = [11, 11, 51, 51]  # the face really leaves after frame 26
    segs, rows, _ = speaker.choose_faces([Segment(0, 27, True), Segment(27, 40, False)], base,
                                         FaceSet([face], 40, 200, 100), speaker.FaceChoice("speaker"), None)
    assert [(s.start_frame, s.end_frame, s.face) for s in segs] == [(0, 27, True), (27, 40, False)]
    assert not np.isnan(rows[:27]).any() and np.isnan(rows[27:]).all()


def test_a_face_segment_of_one_or_two_frames_is_scored_without_failing():
    """A hand-placed marker pair two frames apart made the 3-frame smoothing return 3 values for 2 frames."""
    x = np.array([0.0, 1.0, np.nan, 3.0, 4.0, 2.0])
    assert np.allclose(speaker._smooth3(x), [0.5, 0.5, np.nan, 3.5, 3.0, 3.0], equal_nan=True)  # NaN ignored
    for n in (0, 1, 2):
        assert len(speaker._smooth3(np.arange(n, dtype=float))) == n
        assert speaker.sync_score(np.arange(n, dtype=float), np.arange(n, dtype=float)) is None  # too short

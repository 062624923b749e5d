"""Face detection, tracking, crop boxes and the detection cache, on real pictures and real detectors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync_core import weights
from lipsync_core.errors import Cancelled, LipsyncError
from lipsync_core.faces import cache, detectors
from lipsync_core.faces.detectors import OpenCVDetector, SFDDetector, get_detector
from lipsync_core.faces.track import (
    FaceTrack,
    face_boxes,
    fixed_boxes,
    iou,
    iou_rows,
    smooth_boxes,
    track_faces,
)
from lipsync_core.progress import CancelToken, Progress
from tools import sample_media

ROOT = Path(__file__).resolve().parents[1]
# the astronaut's face in skimage's 512x512 photo, drawn by hand: forehead to chin, cheek to cheek
ASTRONAUT_FACE = np.array([175, 70, 275, 178], np.float64)


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def haar():
    return OpenCVDetector()


class Precomputed:
    """Wraps a detector: runs it once per frame object and counts the frames it was asked about.

    Whole-frame calls are `calls`; `detect_near` (passed through when the detector has it) counts `near_calls`.
    """

    def __init__(self, detector):
        self.detector, self.memo, self.calls, self.near_calls = detector, {}, 0, 0
        if hasattr(detector, "detect_near"):
            self.detect_near = self._near

    def detect(self, frames):
        self.calls += len(frames)
        todo = [f for f in frames if id(f) not in self.memo]
        for f, d in zip(todo, self.detector.detect(todo) if todo else []):
            self.memo[id(f)] = (f, d)  # holding f keeps its id from being reused by another array
        return [self.memo[id(f)][1] for f in frames]

    def _near(self, frames, boxes):
        self.near_calls += len(frames)
        return self.detector.detect_near(frames, boxes)


class Scripted:
    """A detector that answers from a list of per-frame detections (frames carry their index in pixel 0)."""

    def __init__(self, dets):
        self.dets, self.calls, self.seen = dets, 0, set()  # seen: the frames detected whole

    def detect(self, frames):
        self.calls += len(frames)
        self.seen.update(int(f[0, 0, 0]) for f in frames)
        return [np.asarray(self.dets[int(f[0, 0, 0])], np.float32).reshape(-1, 5) for f in frames]


class ScriptedNear(Scripted):
    """... that can also search near a box, like a cropping detector: faces of about its size and place."""

    near_calls = 0

    def detect_near(self, frames, boxes):
        self.near_calls += len(frames)
        out = []
        for f, b in zip(frames, boxes):
            d = np.asarray(self.dets[int(f[0, 0, 0])], np.float32).reshape(-1, 5)
            side = np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
            ds = np.sqrt((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]))
            dc = np.hypot((d[:, 0] + d[:, 2] - b[0] - b[2]) / 2, (d[:, 1] + d[:, 3] - b[1] - b[3]) / 2)
            out.append(d[(dc <= side) & (ds >= 0.6 * side) & (ds <= 1.6 * side)])
        return out


class ScanCount:
    """Stands in for OpenCV's cascade: counts the pixels detectMultiScale scans, i.e. its image pyramid.

    OpenCV's loop: window 24 * 1.1^i px; scales below minSize are skipped, it stops past maxSize (default: the
    image); each scale scans the image shrunk by that factor."""

    def __init__(self, cascade):
        self.cascade, self.per_call = cascade, []

    @property
    def pixels(self):
        return sum(self.per_call)

    def detectMultiScale2(self, img, scaleFactor, minNeighbors, minSize, maxSize=None):
        h, w = img.shape[:2]
        top = min(maxSize[0] if maxSize else w, w, h)
        f, px = 1.0, 0
        while round(24 * f) <= top:
            if round(24 * f) >= minSize[0]:
                px += round(w / f) * round(h / f)
            f *= scaleFactor
        self.per_call.append(px)
        return self.cascade.detectMultiScale2(img, scaleFactor=scaleFactor, minNeighbors=minNeighbors,
                                              minSize=minSize, maxSize=maxSize)


def indexed_frames(n, w=64, h=48, texture=False):
    """Frames that carry their index in pixel 0; `texture`: one still picture (optical flow sees no motion)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    if texture:
        frames[:] = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8), (5, 5), 0)
    frames[:, 0, 0, 0] = np.arange(n)
    return list(frames)


def two_faces(n: int, big_right: bool = True) -> list[np.ndarray]:
    """Two astronaut faces of different sizes side by side, drifting a little in opposite directions."""
    crop = astronaut_bgr()[20:250, 110:340]
    big = cv2.resize(crop, (200, 200), interpolation=cv2.INTER_AREA)
    small = cv2.resize(crop, (140, 140), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        f = np.full((240, 480, 3), 180, np.uint8)
        dx = round(3 * np.sin(i / 4))
        bx, sx = (260 + dx, 40 - dx) if big_right else (20 + dx, 300 - dx)
        f[20:220, bx:bx + 200] = big
        f[50:190, sx:sx + 140] = small
        frames.append(f)
    return frames


def reference_smooth(boxes: np.ndarray, T: int = 5) -> np.ndarray:
    """Wav2Lip's get_smoothened_boxes as its inference.py runs it: in place, on an int array."""
    boxes = np.array(boxes, np.int64)
    n = len(boxes)
    for i in range(n):
        window = boxes[n - T:] if i + T > n else boxes[i:i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes


# ----------------------------------------------------------------------------------------------- detectors


def test_opencv_finds_the_astronaut(haar):
    dets = haar.detect([astronaut_bgr()])
    assert len(dets) == 1 and dets[0].dtype == np.float32 and dets[0].shape == (1, 5)
    box = dets[0][0, :4].astype(np.float64)
    assert iou(ASTRONAUT_FACE, box[None])[0] > 0.7, box
    assert 0 < dets[0][0, 4] <= 1


def test_opencv_no_face(haar):
    from skimage import data

    pictures = [cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), *sample_media.noface_frames(3)]
    for d in haar.detect(pictures):
        assert d.shape == (0, 5) and d.dtype == np.float32


def test_opencv_adjustment_moves_box_down_only(haar):
    raw = OpenCVDetector(adjust=False).detect([astronaut_bgr()])[0][0]
    adj = haar.detect([astronaut_bgr()])[0][0]
    h = raw[3] - raw[1]
    np.testing.assert_allclose(adj[[0, 2]], raw[[0, 2]])
    np.testing.assert_allclose(adj[1] - raw[1], OpenCVDetector.ADJUST_TOP * h, atol=1e-3)
    np.testing.assert_allclose(adj[3] - raw[3], OpenCVDetector.ADJUST_BOTTOM * h, atol=1e-3)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Every place S3FD weights are looked for points into an empty folder; downloads not allowed."""
    monkeypatch.setenv("LIPSYNC_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LIPSYNC_S3FD", raising=False)
    monkeypatch.delenv("LIPSYNC_ALLOW_DOWNLOAD", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Two cores shared by several test runs: one torch thread is several times faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def random_s3fd(tmp_path_factory, one_thread):
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "s3fd_random.pth"
    torch.save(s3fd().state_dict(), path)
    return path


def test_auto_falls_back_to_opencv_with_one_warning(no_weights):
    logs = []
    t = time.monotonic()
    det = get_detector("auto", log=logs.append)
    assert time.monotonic() - t < 5
    assert isinstance(det, OpenCVDetector)
    assert len(logs) == 1 and "S3FD" in logs[0] and "\n" not in logs[0]
    # an explicit path that is not there: same fallback
    logs.clear()
    assert isinstance(get_detector("auto", weights_path=no_weights / "nope.pth", log=logs.append), OpenCVDetector)
    assert len(logs) == 1


def test_allowed_download_that_fails_falls_back_quickly(no_weights, monkeypatch):
    s3fd = weights.KNOWN["s3fd"]
    monkeypatch.setitem(weights.KNOWN, "s3fd", dataclasses.replace(s3fd, urls=("http://127.0.0.1:9/s3fd.pth",)))
    logs = []
    t = time.monotonic()
    assert isinstance(get_detector("auto", log=logs.append, allow_download=True), OpenCVDetector)
    assert time.monotonic() - t < detectors.DOWNLOAD_TIMEOUT_S + 2 and len(logs) == 1
    assert not weights.hub_path("s3fd").exists()


def test_sfd_without_weights_says_what_to_do(no_weights):
    with pytest.raises(LipsyncError, match="LIPSYNC_S3FD"):
        get_detector("sfd")
    with pytest.raises(LipsyncError, match="Unknown face detector"):
        get_detector("dlib")


def test_sfd_loads_local_state_dict(random_s3fd, no_weights, monkeypatch):
    det = get_detector("sfd", weights_path=random_s3fd)
    assert isinstance(det, SFDDetector)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (64, 80, 3), np.uint8) for _ in range(2)] + [np.zeros((48, 48, 3), np.uint8)]
    out = det.detect(frames)
    assert len(out) == 3
    for d, f in zip(out, frames):
        assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 5
        assert (d[:, 4] > 0.5).all() and (np.diff(d[:, 4]) <= 0).all()
        assert (d[:, 0] >= 0).all() and (d[:, 2] <= f.shape[1]).all() and (d[:, 3] <= f.shape[0]).all()
        assert (d[:, 2] > d[:, 0]).all() and (d[:, 3] > d[:, 1]).all()
    # found through $LIPSYNC_S3FD and through torch hub's cache, with no warning from auto
    monkeypatch.setenv("LIPSYNC_S3FD", str(random_s3fd))
    logs = []
    assert isinstance(get_detector("auto", log=logs.append), SFDDetector) and not logs
    monkeypatch.delenv("LIPSYNC_S3FD")
    hub = weights.hub_path("s3fd")
    hub.parent.mkdir(parents=True)
    hub.write_bytes(random_s3fd.read_bytes())
    assert get_detector("auto", log=logs.append).weights_path == hub and not logs
    # a training-style checkpoint: {"state_dict": {"module.<name>": ...}}
    wrapped = no_weights / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in torch.load(random_s3fd).items()}}, wrapped)
    assert isinstance(get_detector("sfd", weights_path=wrapped), SFDDetector)


def test_weights_download_s3fd_is_what_the_detector_finds(random_s3fd, no_weights, tmp_path):
    """README's advice, followed: `weights download s3fd` saves the registry's file name in the checkpoints
    folder, and `--detector auto` uses it (it looked only for checkpoints/s3fd.pth before)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "s3fd-619a316812.pth").write_bytes(random_s3fd.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}/s3fd-619a316812.pth"
        r = subprocess.run([sys.executable, "-m", "lipsync_core", "weights", "download", "s3fd", "--url", url,
                            "--no-hash-check"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr
    saved = weights.find("s3fd")
    assert saved is not None and saved.parent == no_weights / "checkpoints"
    logs = []
    det = get_detector("auto", log=logs.append)
    assert isinstance(det, SFDDetector) and det.weights_path == saved and not logs
    # the reference repository's name for the same file is found too
    reference_name = no_weights / "checkpoints" / "s3fd.pth"
    saved.rename(reference_name)
    assert get_detector("auto", log=logs.append).weights_path == reference_name and not logs


def test_detector_device_is_resolved_by_pick_device(monkeypatch):
    """"auto" means CUDA, then Apple MPS, then CPU for the detector as for the generator."""
    from lipsync_core import device as device_mod
    from lipsync_core import sync

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert detectors._resolve_device("auto") == "mps"
    asked = []

    class Stop(Exception):
        pass

    def recording_get_detector(name, device="cpu", **kw):
        asked.append(device)
        raise Stop

    monkeypatch.setattr(detectors, "get_detector", recording_get_detector)
    with pytest.raises(Stop):
        sync.analyze_faces(str(ROOT / "assets" / "x.mp4"), sync.SyncOptions(cache=False),
                           info=_FakeInfo())
    assert detectors._resolve_device(asked[0]) == "mps"


class _FakeInfo:
    width, height, frames = 64, 48, 1


def test_sfd_bad_file(no_weights):
    bad = no_weights / "s3fd.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LipsyncError, match="could not be loaded"):
        get_detector("sfd", weights_path=bad)
    logs = []
    assert isinstance(get_detector("auto", weights_path=bad, log=logs.append), OpenCVDetector)
    assert len(logs) == 1 and "\n" not in logs[0]


def test_sfd_decoding_matches_face_alignment(random_s3fd):
    """The vectorised decode + NMS gives what face-alignment's own post-processing gives (Wav2Lip's input)."""
    from face_alignment.detection.sfd.bbox import nms as fa_nms
    from face_alignment.detection.sfd.detect import batch_detect

    det = get_detector("sfd", weights_path=random_s3fd)
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 255, (2, 56, 72, 3), np.uint8)
    ours = det.detect(list(batch))
    # face-alignment flips its input RGB->BGR; handing it our BGR frames makes it feed RGB, as Wav2Lip did
    theirs = batch_detect(det.net, torch.from_numpy(batch).permute(0, 3, 1, 2), device="cpu")
    for i in range(len(batch)):
        # face-alignment's SFDDetector filter: NMS at 0.3 over every candidate, then scores > 0.5
        ref = theirs[i][fa_nms(theirs[i], 0.3)].astype(np.float64)
        ref = ref[ref[:, 4] > 0.5]
        ref[:, [0, 2]] = ref[:, [0, 2]].clip(0, 72)
        ref[:, [1, 3]] = ref[:, [1, 3]].clip(0, 56)
        ref = ref[(ref[:, 2] > ref[:, 0]) & (ref[:, 3] > ref[:, 1])]
        assert len(ours[i]) == len(ref) > 0
        np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------------------------- tracking


def test_follows_the_largest_of_two_faces(haar):
    for big_right in (True, False):
        frames, det = two_faces(12, big_right), Precomputed(haar)
        for k in (1, 5):  # every frame, and keyframes searched near the followed face
            track = track_faces(frames, det, detect_every=k)
            assert track.has_face.all()
            cx = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
            assert ((cx > 240) if big_right else (cx < 240)).all(), cx  # never the small face, not even once
            left = track_faces(frames, det, select="left", detect_every=k)
            assert ((left.boxes[:, 0] + left.boxes[:, 2]) / 2 < 240).all()
        assert det.near_calls > 0


def test_missed_detection_does_not_switch_faces():
    a, b = [100, 10, 140, 50, 0.9], [10, 10, 30, 30, 0.99]  # our (largest) face, the other person
    dets = [[a, b]] * 5 + [[b]] + [[a, b]] * 4 + [[]] * 3 + [[[200, 10, 240, 50, 0.9]]] * 2
    frames = indexed_frames(len(dets))
    track = track_faces(frames, Scripted(dets))
    assert np.isnan(track.boxes[5]).all()  # our face missed: no face, not the other one
    np.testing.assert_array_equal(track.boxes[[0, 4, 6, 9], 0], 100)
    assert not track.has_face[10:13].any()
    np.testing.assert_array_equal(track.boxes[13:, 0], 200)  # a face after a gap is taken
    for k in (2, 3, 5):  # sparse keyframes may not see the miss at all, but never take the other face
        sparse = track_faces(frames, ScriptedNear(dets), detect_every=k)
        assert set(sparse.boxes[sparse.has_face, 0]) <= {100, 200}
        np.testing.assert_array_equal(sparse.has_face[10:], track.has_face[10:])
    # Keyframes searched only near our face (never seeing the other person): when our face is missed on a
    # keyframe, the whole frame and the one before are looked at, so the other person is known and ignored.
    dets = [[a, b]] * 5 + [[b]] + [[a, b]] * 9 + [[]] * 3 + [[[200, 10, 240, 50, 0.9]]] * 2
    frames = indexed_frames(len(dets))
    track = track_faces(frames, Scripted(dets))
    assert np.isnan(track.boxes[5]).all() and (track.boxes[:15][track.has_face[:15], 0] == 100).all()
    for k, top in ((5, 5), (5, 25)):
        sparse = track_faces(frames, ScriptedNear(dets), detect_every=k, max_every=top)
        np.testing.assert_array_equal(sparse.boxes, track.boxes)


def test_sparse_boundaries_exact_with_wide_gaps():
    """Gaps widen to 25 frames while the face stays put; appearances and cuts are still found to the frame."""
    a, b = [20, 10, 40, 34, 0.9], [30, 12, 52, 38, 0.8]
    truth = [[a]] * 37 + [[]] * 24 + [[b]] * 31 + [[a]] * 40 + [[]] * 30 + [[a]] * 20  # a cut at 92
    frames = indexed_frames(len(truth), texture=True)
    every = track_faces(frames, Scripted(truth))
    for k in (1, 5):
        det = ScriptedNear(truth)
        sparse = track_faces(iter(frames), det, detect_every=max(k, 2), max_every=25)
        np.testing.assert_array_equal(sparse.boxes, every.boxes)
        has = np.array([len(t) > 0 for t in truth])
        np.testing.assert_array_equal(sparse.has_face, has)
        # each frame without a face is confirmed by the detector; faces are detected on keyframes only
        assert det.seen >= set(np.flatnonzero(~has).tolist())
        assert det.calls + det.near_calls - (~has).sum() < has.sum() / 3, (det.calls, det.near_calls)


def test_scale_maps_back_and_progress_and_cancel():
    dets = [[[10, 20, 30, 44, 0.9]]] * 7
    calls = []

    class Rec(Progress):
        def start(self, stage, total):
            calls.append(("start", stage, total))

        def advance(self, stage, n=1):
            calls.append(("advance", stage, n))

        def finish(self, stage):
            calls.append(("finish", stage))

    for k in (1, 3):
        calls.clear()
        track = track_faces(iter(indexed_frames(7, 64, 36)), Scripted(dets), scale=0.25, batch_size=2, total=7,
                            progress=Rec(), detect_every=k)
        assert (track.width, track.height) == (256, 144)
        np.testing.assert_allclose(track.boxes, [[40, 80, 120, 176]] * 7)
        assert calls[0] == ("start", "detect", 7) and calls[-1] == ("finish", "detect")
        assert sum(c[2] for c in calls if c[0] == "advance") == 7
        token = CancelToken()
        token.cancel()
        with pytest.raises(Cancelled):
            track_faces(indexed_frames(7), Scripted(dets), cancel=token, detect_every=k)


def test_detect_every_5_matches_every_frame(haar):
    frames = list(sample_media.astronaut_frames(41))
    det = Precomputed(haar)
    every = track_faces(frames, det)
    det.calls = 0
    sparse = track_faces(frames, det, detect_every=5)
    assert det.calls <= 2 and det.near_calls <= 10  # the first frame whole, then near the face
    assert every.has_face.all() and sparse.has_face.all()
    assert iou_rows(every.boxes, sparse.boxes).min() >= 0.9
    assert iou_rows(face_boxes(every).astype(float), face_boxes(sparse).astype(float)).min() >= 0.9


def test_opencv_near_search_gives_the_whole_frame_box(haar):
    """Scanning only window sizes near the face's size finds the same box a whole-frame scan finds."""
    frames = list(sample_media.astronaut_frames(12, 480, 360)) + [astronaut_bgr()]
    for f in frames:
        whole = haar.detect([f])[0]
        assert len(whole) >= 1
        box = whole[0, :4] + np.array([6, -4, 6, -4], np.float32)  # a prediction a little off
        near = haar.detect_near([f], [box])[0]
        np.testing.assert_array_equal(near[0], whole[0])
    # nothing of that size there: nothing found (the tracker then looks at the whole frame)
    assert len(haar.detect_near([sample_media.noface_frames(1)[0]], [np.array([100, 60, 200, 160])])[0]) == 0


def test_fast_path_scans_far_fewer_pixels(monkeypatch):
    """Counts the pixels the Haar cascade scans (its image pyramid) instead of timing anything."""
    frames = list(sample_media.astronaut_frames(50, 480, 270))  # 480 px: the analysis pass's default width
    scans, tracks = {}, {}
    for name, kw in {"every": {}, "every 5th, whole frames": {"detect_every": 5}, "fast": {"detect_every": 5}}.items():
        det = OpenCVDetector()
        det._cascade = scans[name] = ScanCount(det._cascade)
        if name != "fast":  # the earlier tracker: whole frames only (a detector without detect_near)
            det = Precomputed(det)
            del det.detect_near
        tracks[name] = track_faces(frames, det, **kw)
    whole = scans["every"].per_call[0]
    fast = scans["fast"].per_call
    assert fast[0] == whole and len(fast) == 11  # the first frame whole, then 10 keyframes near the face
    assert max(fast[1:]) * 10 <= whole, (max(fast[1:]), whole)
    assert scans["fast"].pixels * 5 <= scans["every 5th, whole frames"].pixels
    assert scans["fast"].pixels * 25 <= scans["every"].pixels
    assert iou_rows(tracks["fast"].boxes, tracks["every"].boxes).min() >= 0.9


def textured_square_frames(n: int, w: int = 480, h: int = 270) -> tuple[list[np.ndarray], np.ndarray]:
    """A bright textured 'face' square drifting on a dark noisy background; its true boxes."""
    rng = np.random.default_rng(5)
    tex = cv2.GaussianBlur(rng.integers(140, 256, (90, 90), np.uint8), (3, 3), 0)
    frames, boxes = [], []
    for i in range(n):
        f = rng.integers(0, 40, (h, w), np.uint8)
        x, y = int(180 + 40 * np.sin(i / 9)), int(80 + 15 * np.cos(i / 7))
        f[y:y + 90, x:x + 90] = tex
        frames.append(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
        boxes.append([x, y, x + 90, y + 90])
    return frames, np.array(boxes, np.float64)


def test_sfd_searches_small_crops_near_the_face(random_s3fd):
    """S3FD's fast path: the net sees small crops (counted in pixels), and boxes map back to the frame.

    Random weights find no faces, so the net's output is replaced by a stand-in that finds the bright square
    in whatever image it is given (a whole frame or a shrunk crop)."""
    det = get_detector("sfd", weights_path=random_s3fd)
    assert det.max_every == SFDDetector.CPU_MAX_EVERY  # on the CPU the keyframes may spread
    seen = []

    def stand_in(batch):
        seen.extend(b.shape[:2] for b in batch)
        out = []
        for b in batch:
            ys, xs = np.nonzero(b[..., 0] > 130)  # the square, not the padding (S3FD's mean, 104)
            out.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.99]], np.float32))
        return out

    det._run = stand_in
    frames, truth = textured_square_frames(100)
    track = track_faces(frames, det, detect_every=5)
    assert iou_rows(track.boxes, truth).min() >= 0.9
    whole = [s for s in seen if s == (270, 480)]
    crops = [s for s in seen if s != (270, 480)]
    assert len(whole) == 1 and 0 < len(crops) <= 15, (len(whole), len(crops))
    # a crop is 2x the face, shrunk so the face is ~64 px: 128 px a side, an eighth of the frame's pixels
    assert max(h * w for h, w in crops) <= 130 * 130
    assert sum(h * w for h, w in seen) * 8 <= 100 / 5 * 270 * 480  # vs the whole frame every 5th frame
    # a small face is searched at its own size in a crop padded to the net's smallest input, boxes in place
    f = np.zeros((270, 480, 3), np.uint8)
    f[100:120, 300:320] = 200
    seen.clear()
    near = det.detect_near([f], [np.array([302, 98, 322, 118], np.float32)])[0]
    assert seen == [(64, 64)]
    np.testing.assert_allclose(near[0, :4], [300, 100, 320, 120])


def test_detect_every_keeps_face_boundaries_exact(haar):
    # 23 face, 17 no face, 21 face: both cuts fall between keyframes
    frames = list(np.concatenate([sample_media.astronaut_frames(23), sample_media.noface_frames(17),
                                  sample_media.astronaut_frames(21)[::-1]]))
    det = Precomputed(haar)
    every = track_faces(frames, det)
    truth = np.r_[np.ones(23, bool), np.zeros(17, bool), np.ones(21, bool)]
    np.testing.assert_array_equal(every.has_face, truth)
    for k, top in ((3, None), (5, None), (7, None), (5, 25)):
        det.calls = det.near_calls = 0
        sparse = track_faces(frames, det, detect_every=k, max_every=top, batch_size=3)
        np.testing.assert_array_equal(sparse.has_face, truth)
        # the 17 faceless frames each confirmed by the detector, the 44 face frames on keyframes only
        assert det.calls + det.near_calls - 17 < 44 / 2
        assert iou_rows(every.boxes[truth], sparse.boxes[truth]).min() >= 0.9


def analysis_frames(path, width: int = 480):
    """The clip decoded as the analysis pass decodes it (sync.analyze_faces), and the scale."""
    from lipsync_core.media import FrameReader, probe

    info = probe(path)
    w = min(width, info.width)
    w -= w % 2
    h = max(2, int(round(info.height * w / info.width / 2)) * 2)
    with FrameReader(path, size=(w, h), info=info) as reader:
        return list(reader), w / info.width, (info.width, info.height)


@pytest.mark.parametrize("clip", ["talking_head_a.mp4", "talking_head_b.mp4"])
def test_talking_head_sparse_matches_every_frame(shared_media, haar, clip):
    """Real footage, whole 5 s, decoded at 480 px like the analysis pass: keyframes every 5th frame searched
    near the face, optical flow between; vs the detector on every whole frame: IoU >= 0.9 on every frame,
    for the raw boxes and for the smoothed, padded crop boxes the pipeline uses."""
    frames, scale, size = analysis_frames(shared_media / clip)
    det = Precomputed(haar)
    every = track_faces(frames, det, scale=scale, original_size=size)
    det.calls = 0
    sparse = track_faces(frames, det, scale=scale, original_size=size, detect_every=5)
    assert every.has_face.all() and sparse.has_face.all()
    assert (every.width, every.height) == size
    assert det.calls <= 2 and det.near_calls <= len(frames) // 5 + 5
    raw = iou_rows(every.boxes, sparse.boxes)
    smoothed = iou_rows(face_boxes(every).astype(float), face_boxes(sparse).astype(float))
    assert raw.min() >= 0.9 and raw.mean() >= 0.96, (raw.min(), raw.mean())
    assert smoothed.min() >= 0.9 and smoothed.mean() >= 0.97, (smoothed.min(), smoothed.mean())


def test_face_kept_where_the_optical_flow_drifts_off_it():
    """The flow follows the background (a pan behind a speaker who stands still), so at each keyframe the face
    is not where the flow put it. It is still where it was last seen: the same face, not a stranger."""
    n, face = 60, [20, 12, 44, 36, 0.9]
    rng = np.random.default_rng(1)
    wide = cv2.GaussianBlur(rng.integers(0, 255, (48, 64 + 4 * n, 3), np.uint8), (5, 5), 0)
    frames = [np.ascontiguousarray(wide[:, 4 * i:4 * i + 64]) for i in range(n)]  # 4 px a frame to the left
    for i, f in enumerate(frames):
        f[0, 0, 0] = i
    every = track_faces(frames, Scripted([[face]] * n))
    assert every.has_face.all()
    for k in (3, 5):
        sparse = track_faces(frames, ScriptedNear([[face]] * n), detect_every=k)
        assert sparse.has_face.all(), np.flatnonzero(~sparse.has_face)
        np.testing.assert_array_equal(sparse.boxes, every.boxes)


def test_faceless_frames_next_to_a_face_are_confirmed_one_by_one():
    """A face the detector misses on frames 5 and 10 (keyframes when every 5th is one) but finds in the frames
    between: those frames have a face. Far from any face, no-face keyframes stay apart; where a face appears
    (frame 81), each frame before it is looked at (the detector finds it at 79 too)."""
    a = [20, 10, 44, 34, 0.9]
    truth = [[a]] * 5 + [[]] + [[a]] * 4 + [[]] + [[a]] * 9 + [[]] * 60 + [[a]] + [[]] + [[a]] * 20
    frames = indexed_frames(len(truth), texture=True)
    every = track_faces(frames, Scripted(truth))
    has = np.array([len(t) > 0 for t in truth])
    np.testing.assert_array_equal(every.has_face, has)
    for k in (3, 5):
        det = ScriptedNear(truth)
        sparse = track_faces(frames, det, detect_every=k)
        # every face found (a one-frame miss between two keyframes with the face may be followed through)
        assert sparse.has_face[has].all(), np.flatnonzero(has & ~sparse.has_face)
        np.testing.assert_array_equal(sparse.boxes[has], every.boxes[has])
        assert not sparse.has_face[20:80].any()
        # the deep no-face stretch (more than CONFIRM_WINDOW frames from a face) is not detected frame by frame
        assert len(det.seen & set(range(46, 55))) < 9


def recall_clips(media_dir, shared):
    """Real talking heads moved as speakers move (tilting up to +-23 degrees, glasses; sliding and zooming),
    each cut to a test pattern: (name, path, first no-face frame)."""
    a = shared / "talking_head_a.mp4"
    specs = {"glasses_tilt": (sample_media.glasses(0.375, 0.085, 0.31, 0.49, 0.63) + "," + sample_media.TILT, 60),
             "pan_zoom": (sample_media.PAN.format(w=844, h=844), 50)}
    return [(name, sample_media.moved_face_then_noface(media_dir / f"head_{name}.mp4", a, "844x844", vf, n), n)
            for name, (vf, n) in specs.items()]


@pytest.fixture(scope="module")
def moving_heads(media_dir, shared_media):
    return recall_clips(media_dir, shared_media)


@pytest.mark.parametrize("which", [0, 1])
def test_no_face_lost_that_the_detector_sees(moving_heads, haar, which):
    """Issue 14: with the default settings (keyframes, optical flow between), every frame in which the
    detector run on every frame finds the face has a face, and lies inside a face segment; the test pattern
    after the cut has none."""
    from lipsync_core.segments import segments_from_presence

    name, path, cut = moving_heads[which]
    frames, scale, size = analysis_frames(path)
    det = Precomputed(haar)
    every = track_faces(frames, det, scale=scale, original_size=size)
    assert 10 <= every.has_face[:cut].sum() < cut  # the detector misses the moved face now and then
    sparse = track_faces(frames, det, scale=scale, original_size=size, detect_every=5)
    missed = np.flatnonzero(every.has_face & ~sparse.has_face)
    assert len(missed) == 0, f"{name}: frames {missed.tolist()} have a face the detector finds"
    assert not sparse.has_face[cut:].any() and not every.has_face[cut:].any()

    def face_frames(has):
        segs = segments_from_presence(has, min_frames=13, max_gap=10)  # SyncOptions' defaults at 25 fps
        return set().union(*(range(s.start_frame, s.end_frame) for s in segs if s.face))

    assert face_frames(every.has_face) <= face_frames(sparse.has_face)


def test_no_face_lost_on_a_tilting_moving_astronaut(haar):
    """The same on made footage (no shared media needed): a real face tilting +-20 degrees, sliding across the
    frame, coming closer and going back, then a cut to a frame with no face."""
    frames = list(sample_media.astronaut_moving_frames(100, 480, 270)) + list(sample_media.noface_frames(20, 480, 270))
    det = Precomputed(haar)
    every = track_faces(frames, det)
    assert 50 <= every.has_face[:100].sum() and not every.has_face[100:].any()
    sparse = track_faces(frames, det, detect_every=5)
    assert not (every.has_face & ~sparse.has_face).any(), np.flatnonzero(every.has_face & ~sparse.has_face)
    assert not sparse.has_face[100:].any()


# ----------------------------------------------------------------------------------------------- crop boxes


def test_smoothing_equals_reference():
    rng = np.random.default_rng(3)
    for n in (5, 6, 9, 50):
        boxes = rng.integers(0, 500, (n, 4))
        np.testing.assert_array_equal(smooth_boxes(boxes), reference_smooth(boxes))
    # a known array: 1..7 in every column
    col = np.arange(1, 8)[:, None].repeat(4, 1)
    np.testing.assert_array_equal(smooth_boxes(col)[:, 0], [3, 4, 5, 5, 5, 5, 5])
    # face_boxes with no padding: exactly the reference on a whole-face track
    boxes = rng.uniform(50, 400, (30, 4)).astype(np.float32)
    boxes[:, 2:] += 100
    track = FaceTrack(boxes, np.ones(30), 1000, 1000)
    np.testing.assert_array_equal(face_boxes(track, pads=(0, 0, 0, 0)), reference_smooth(np.trunc(boxes)))


def test_smoothing_stays_within_face_runs():
    boxes = np.array([[10, 10, 50, 50]] * 6 + [[np.nan] * 4] * 20 + [[300, 300, 360, 360]] * 6, np.float32)
    out = face_boxes(FaceTrack(boxes, np.ones(32), 640, 480), pads=(0, 0, 0, 0), max_gap=8)
    np.testing.assert_array_equal(out[:6], [[10, 10, 50, 50]] * 6)
    np.testing.assert_array_equal(out[6:26], -1)
    np.testing.assert_array_equal(out[26:], [[300, 300, 360, 360]] * 6)
    assert out.dtype == np.int32


def test_pads_and_clipping():
    boxes = np.array([[-5, 2, 100, 90], [540, 400, 630, 470]], np.float32)
    out = face_boxes(FaceTrack(boxes, np.ones(2), 640, 480), pads=(4, 10, 3, 20), smooth=False)
    # top, bottom, left, right: y1-4, y2+10, x1-3, x2+20, then clipped to the 640x480 frame
    np.testing.assert_array_equal(out, [[0, 0, 120, 100], [537, 396, 640, 480]])


def test_short_gaps_bridged():
    n = 40
    boxes = np.tile(np.array([100, 100, 200, 200], np.float32), (n, 1))
    boxes[:, 0] += np.arange(n)
    boxes[10:13] = np.nan  # 3 frames: bridged
    boxes[20:30] = np.nan  # 10 frames: a real gap
    boxes[:2] = np.nan  # the start: nothing to bridge from
    out = face_boxes(FaceTrack(boxes, np.ones(n), 640, 480), pads=(0, 0, 0, 0), smooth=False, max_gap=8)
    np.testing.assert_array_equal(out[10:13, 0], [110, 111, 112])
    assert (out[20:30] == -1).all() and (out[:2] == -1).all()
    assert (out[30:] >= 0).all()


def test_fixed_boxes():
    out = fixed_boxes(3, (10, 20, 110, 140), 640, 480)
    assert out.dtype == np.int32 and out.tolist() == [[10, 20, 110, 140]] * 3
    for bad in [(10, 20, 5, 140), (10, 20, 110, 500), (-1, 0, 10, 10), (0, 30, 10, 30), ("a", 0, 1, 1)]:
        with pytest.raises(LipsyncError, match="--box"):
            fixed_boxes(3, bad, 640, 480)


def test_track_json_roundtrip():
    boxes = np.array([[1.5, 2.25, 30, 40], [np.nan] * 4], np.float32)
    track = FaceTrack(boxes, [0.9, np.nan], 640, 360)
    text = json.dumps(track.to_dict(), allow_nan=False)
    back = FaceTrack.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.boxes, track.boxes)
    np.testing.assert_array_equal(back.scores, track.scores)
    assert (back.width, back.height) == (640, 360)
    # a tracked result survives the round trip bit for bit, and stays short
    real = track_faces(indexed_frames(3), Scripted([[[10.123, 20.5, 30.77, 44.01, 0.987654]]] * 3), scale=0.3)
    text = json.dumps(real.to_dict())
    again = FaceTrack.from_dict(json.loads(text))
    np.testing.assert_array_equal(again.boxes, real.boxes)
    np.testing.assert_array_equal(again.scores, real.scores)
    assert len(text) < 300, text


# ----------------------------------------------------------------------------------------------- cache


def test_cache_hits_same_file_misses_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    video = sample_media.write_video(tmp_path / "v.mp4", sample_media.astronaut_frames(5))
    settings = {"detector": "opencv", "scale": 0.5, "detect_every": 5, "select": "largest", "range": [0, 5]}
    track = FaceTrack(np.array([[1, 2, 3, 4]] * 4 + [[np.nan] * 4], np.float32), [0.5] * 4 + [np.nan], 320, 240)
    assert cache.load_track(video, settings) is None
    path = cache.save_track(video, settings, track)
    assert path is not None and path.parent == tmp_path / "cache" / "faces"
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    hit = cache.load_track(video, dict(settings, range=(0, 5)))  # tuple or list: same key
    assert hit is not None
    np.testing.assert_array_equal(hit.boxes, track.boxes)
    assert cache.load_track(video, dict(settings, detect_every=1)) is None
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    assert cache.load_track(copy, settings) is not None  # same content, other name: same key
    with open(video, "ab") as f:
        f.write(b"\0")
    assert cache.load_track(video, settings) is None
    assert cache.load_track(tmp_path / "missing.mp4", settings) is None

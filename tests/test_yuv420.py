"""H.264 results of 8-bit 4:2:0 sources: frames cross both pipes as yuv420p and only the face crop and the mouth are
converted (yuv420.py). The conversions are checked against ffmpeg's own (the reader's bgr24 decode, the encoder's
bgr24 -> yuv420p) on BT.601 and BT.709 media, limited and full range, SD and HD; a sync leaves every sample
outside the mouth as decoded; sources the fast path does not fit go the BGR way."""

import subprocess
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lipsync_core.media import FrameReader, ffmpeg_exe, probe
from lipsync_core.media.encoder import codec_of
from lipsync_core.media.ffmpeg import SWS_FLAGS, SWS_MATRIX
from lipsync_core.sync import SyncOptions, frame_format_for, sync
from lipsync_core.yuv420 import Yuv420, planes
from tools import sample_media
from tools.random_weights import shared_checkpoint

TAGS = {"untagged": [], "bt601": ["-colorspace", "smpte170m", "-color_range", "tv"],
        "bt709": ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]}


def _frames(w: int, h: int, n: int = 2) -> np.ndarray:
    """The astronaut with saturated blocks pasted on: sharp colour edges, where chroma interpolation shows."""
    frames = sample_media.astronaut_frames(n, w, h).copy()
    rng = np.random.default_rng(0)
    for f in frames:
        for _ in range(30):
            x, y = rng.integers(0, w - 40), rng.integers(0, h - 40)
            f[y:y + rng.integers(3, 40), x:x + rng.integers(3, 40)] = rng.integers(0, 256, 3)
    return frames


def _encode(path, frames, tag: str) -> str:
    h, w = frames.shape[1:3]
    matrix = "bt709" if tag == "bt709" else "bt601"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                    "-r", "25", "-i", "-", "-vf", f"scale=out_color_matrix={matrix}", "-c:v", "libx264", "-crf", "8",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", *TAGS[tag], str(path)],
                   input=frames.tobytes(), check=True)
    return str(path)


def _bgr_to_yuv420(bgr: np.ndarray, matrix: str | None, full: bool = False) -> np.ndarray:
    """ffmpeg's conversion of a BGR frame as the encoder does it (SWS_FLAGS, the source's matrix)."""
    h, w = bgr.shape[:2]
    vf = (f"scale=flags={SWS_FLAGS}" + (f":out_color_matrix={matrix}" if matrix else "")
          + (":out_range=full" if full else "") + ",format=yuv420p")
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                          "-i", "-", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
                         input=bgr.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h * 3 // 2, w)


def _yuv420_to_bgr(frame: np.ndarray, matrix: str, full: bool) -> np.ndarray:
    """ffmpeg's conversion of a raw yuv420p frame read as `matrix` and range, with the reader's flags."""
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    vf = f"scale=flags={SWS_FLAGS}:in_color_matrix={matrix}:in_range={'full' if full else 'limited'},format=bgr24"
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}",
                          "-i", "-", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         input=frame.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def _within_one(a: np.ndarray, b: np.ndarray) -> int:
    d = np.abs(a.astype(int) - b)
    return int(d.max()) if d.size else 0


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("yuv420")
    sd, hd = _frames(320, 240, 10), _frames(1280, 720)
    return {"sd_untagged": _encode(d / "sd.mp4", sd, "untagged"), "sd_bt601": _encode(d / "sd601.mp4", sd, "bt601"),
            "hd_bt709": _encode(d / "hd709.mp4", hd, "bt709"),
            # untagged HD: ffmpeg (and so the BGR path) reads it as BT.601 too, whatever its size
            "hd_untagged": _encode(d / "hd.mp4", hd, "untagged"), "dir": d}


def _pair(path):
    info = probe(path)
    bgr = next(iter(FrameReader(path, prefetch=0)))
    yuv = next(iter(FrameReader(path, prefetch=0, pix_fmt="yuv420p")))
    return info, bgr, yuv, Yuv420(info.width, info.height, info.color_space, info.color_range)


@pytest.mark.parametrize("name", ["sd_untagged", "sd_bt601", "hd_bt709", "hd_untagged"])
def test_bgr_of_the_planes_matches_ffmpegs_bgr24_decode(made, name):
    info, bgr, yuv, conv = _pair(made[name])
    assert info.pix_fmt == "yuv420p"
    assert _within_one(conv.to_bgr(yuv), bgr) <= 1
    w, h = info.width, info.height
    # regions at odd offsets and at every edge (the chroma interpolation clamps there)
    for x0, y0, x1, y1 in [(1, 3, 101, 77), (0, 0, 64, 48), (w - 99, h - 37, w, h), (w // 2 + 1, 1, w, h - 1)]:
        assert _within_one(conv.region_bgr(yuv, y0, y1, x0, x1), bgr[y0:y1, x0:x1]) <= 1
    # the generator's crop: resized from the converted pixels as cv2.resize does from ffmpeg's BGR
    for box in [(w // 4, h // 5, w // 4 + 181, h // 5 + 211), (0, 0, 50, 61), (w - 97, h - 96, w, h),
                (3, 5, w - 1, h - 3)]:
        ref = cv2.resize(bgr[box[1]:box[3], box[0]:box[2]], (96, 96))
        assert _within_one(conv.resized_bgr(yuv, box, 96), ref) <= 1, box


@pytest.mark.parametrize("name", ["sd_untagged", "hd_bt709", "hd_untagged"])
def test_written_back_region_matches_ffmpegs_conversion_and_nothing_else_moves(made, name):
    info, bgr, yuv, conv = _pair(made[name])
    h, w = info.height, info.width
    rng = np.random.default_rng(1)
    for fy0, fy1, fx0, fx1 in [(h // 3 + 1, h // 3 + 90, w // 3 + 1, w // 3 + 121), (0, 31, 0, 47),
                               (h - 41, h, w - 57, w)]:
        face = rng.integers(0, 256, (fy1 - fy0, fx1 - fx0, 3), dtype=np.uint8)
        # partly see-through, like the feather mask
        alpha = np.repeat(np.linspace(0, 1, fx1 - fx0, dtype=np.float32)[None], fy1 - fy0, axis=0)
        mine = yuv.copy()
        conv.blend(mine, (fy0, fy1, fx0, fx1), face, alpha)
        painted = bgr.copy()  # the BGR path: decoded, blended, converted by the encoder
        roi = np.ascontiguousarray(painted[fy0:fy1, fx0:fx1])
        painted[fy0:fy1, fx0:fx1] = cv2.blendLinear(face, roi, alpha, 1 - alpha)
        ref = planes(_bgr_to_yuv420(painted, SWS_MATRIX.get(info.color_space or "")))
        got, src = planes(mine), planes(yuv)
        # Compared where the decoded picture is inside the RGB cube: where it is not, the BGR path clips it and
        # moves the samples, which are kept here as the source has them (alpha 0 shows it).
        inside = ((bgr > 0) & (bgr < 255)).all(axis=2)
        keep = inside[fy0:fy1, fx0:fx1]
        assert keep.mean() > 0.8
        assert _within_one(got[0][fy0:fy1, fx0:fx1][keep], ref[0][fy0:fy1, fx0:fx1][keep]) <= 1
        assert np.array_equal(got[0][fy0:fy1, fx0], src[0][fy0:fy1, fx0])  # alpha 0: the source's own luma
        # a chroma sample filters rows 2k-1 .. 2k+2 of its column pair
        pair = inside.reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
        support = pair & np.roll(pair, 1, axis=0) & np.roll(pair, -1, axis=0)
        for c in (1, 2):  # chroma rows the written rows' filter reaches, the columns they pair into
            cut = (slice(max(0, (fy0 - 1) // 2), fy1 // 2 + 1), slice(fx0 // 2, (fx1 + 1) // 2))
            assert _within_one(got[c][cut][support[cut]], ref[c][cut][support[cut]]) <= 1
            outside = np.ones(got[c].shape, bool)
            outside[cut] = False
            assert np.array_equal(got[c][outside], src[c][outside])
        outside = np.ones((h, w), bool)
        outside[fy0:fy1, fx0:fx1] = False
        assert np.array_equal(got[0][outside], src[0][outside])


@pytest.mark.parametrize("matrix,space", [("bt601", None), ("bt709", "bt709")])
def test_full_range_conversion_matches_ffmpeg(made, matrix, space):
    _, _, yuv, _ = _pair(made["hd_bt709"])
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    conv = Yuv420(w, h, space, "pc")
    ref = _yuv420_to_bgr(yuv, matrix, full=True)
    assert _within_one(conv.to_bgr(yuv), ref) <= 1
    region = (h // 2, h // 2 + 60, w // 2 + 1, w // 2 + 81)
    face = np.random.default_rng(2).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mine = yuv.copy()
    conv.blend(mine, region, face)
    painted = ref.copy()
    painted[region[0]:region[1], region[2]:region[3]] = face
    back = planes(_bgr_to_yuv420(painted, matrix, full=True))
    assert _within_one(planes(mine)[0][region[0]:region[1], region[2]:region[3]],
                       back[0][region[0]:region[1], region[2]:region[3]]) <= 1
    cut = (slice(region[0] // 2, region[1] // 2), slice(region[2] // 2 + 1, region[3] // 2))
    assert _within_one(planes(mine)[1][cut], back[1][cut]) <= 1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory, "official", 0)


def test_sync_passes_the_planes_through_outside_the_mouth(made, ckpt):
    """Lossless H.264 (crf 0) shows it exactly: outside the region the blend writes (and the chroma samples
    filtered from it) the result's planes are the source's; the mouth itself changed."""
    from lipsync_core.composite import Compositor

    src = made["sd_untagged"]
    speech = sample_media.speech_wav(made["dir"] / "s.wav", seconds=1.0)
    out = made["dir"] / "synced.mp4"
    box = (100, 60, 220, 200)
    r = sync(src, str(speech), str(out), str(ckpt), SyncOptions(segments="all", box=box, crf=0, cache=False))
    assert r["frames"] == 10
    (fy0, fy1, fx0, fx1), _, _ = Compositor("feather").region((240, 320), box)
    a = np.stack(list(FrameReader(src, pix_fmt="yuv420p")))
    b = np.stack(list(FrameReader(out, pix_fmt="yuv420p")))
    for fa, fb in zip(a, b):
        pa, pb = planes(fa), planes(fb)
        keep = np.ones((240, 320), bool)
        keep[fy0:fy1, fx0:fx1] = False
        assert np.array_equal(pa[0][keep], pb[0][keep])
        assert not np.array_equal(pa[0][~keep], pb[0][~keep])
        keep = np.ones((120, 160), bool)
        keep[max(0, (fy0 - 1) // 2):fy1 // 2 + 1, fx0 // 2:(fx1 + 1) // 2] = False
        for c in (1, 2):
            assert np.array_equal(pa[c][keep], pb[c][keep])


def _info(w, h, pix_fmt="yuv420p"):
    return SimpleNamespace(width=w, height=h, pix_fmt=pix_fmt, color_space="bt709", color_range="tv")


@pytest.mark.parametrize("info,codec,exact,expect", [
    (_info(1920, 1080), "h264", False, "yuv420p"),
    (_info(1920, 1080), "h264", True, "yuv420p"),
    (_info(321, 240), "h264", False, "bgr24"),  # odd: padded through BGR as before
    (_info(321, 241), "h264", True, "bgr24"),  # odd, exact size: 4:4:4 result
    (_info(1920, 1080, "yuv420p10le"), "h264", False, "bgr24"),
    (_info(1920, 1080, "yuv422p"), "h264", False, "bgr24"),
    (_info(1920, 1080, "yuvj420p"), "h264", False, "bgr24"),  # full range by pix_fmt: ffmpeg would convert it
    (_info(1920, 1080), "prores", False, "yuv444p16le"),
    (_info(1920, 1080), "ffv1", False, "yuv444p16le"),
])
def test_which_frames_cross_the_pipes(info, codec, exact, expect):
    fmt, colour = frame_format_for(codec_of(codec), info, exact)
    assert fmt == expect
    assert (colour is None) == (expect == "bgr24")

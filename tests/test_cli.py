"""End to end through the real CLI: made clip, random-weight checkpoint, real ffmpeg and torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_core import audio as A
from lipsync_core.media import FrameReader, probe
from tools import sample_media
from tools.random_weights import write_random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N0, N2 = 40, 30, 40  # face, no face, face frames


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, LIPSYNC_CACHE_DIR=os.environ.get("LIPSYNC_TEST_CACHE", ""))
    if not env["LIPSYNC_CACHE_DIR"]:
        env.pop("LIPSYNC_CACHE_DIR")
    return subprocess.run([sys.executable, "-m", "lipsync_core", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    os.environ["LIPSYNC_TEST_CACHE"] = str(d / "cache")
    tone = sample_media.tone_wav(d / "own.wav", 5.0, freq=300)
    clip = sample_media.face_noface_face_clip(d / "clip.mp4", N1, N0, N2, audio=tone)
    speech = sample_media.speech_wav(d / "speech.wav", seconds=4.0)
    ckpt = write_random_checkpoint(d / "wav2lip_random.pth")
    return {"dir": d, "clip": clip, "speech": speech, "ckpt": ckpt, "tone": tone}


def frames_of(path):
    with FrameReader(str(path)) as r:
        return np.stack(list(r)).astype(np.int16)


def test_segments_json_finds_the_cuts(work):
    r = run_cli("segments", work["clip"], "--json", "--detector", "opencv")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["fps"] == 25.0 and out["frames"] == N1 + N0 + N2
    segs = out["segments"]
    assert [s["face"] for s in segs] == [True, False, True]
    assert abs(segs[0]["end_frame"] - N1) <= 2 and abs(segs[1]["end_frame"] - (N1 + N0)) <= 2
    assert segs[0]["start_frame"] == 0 and segs[-1]["end_frame"] == N1 + N0 + N2
    assert segs[1]["start"] == pytest.approx(segs[1]["start_frame"] / 25.0)


def test_sync_end_to_end(work):
    out = work["dir"] / "synced.mp4"
    r = run_cli("sync", work["clip"], work["speech"], "-o", out, "--checkpoint", work["ckpt"],
                "--detector", "opencv", "--json-progress")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert any(e["event"] == "progress" and e["stage"] == "sync" for e in events)
    result = events[-1]
    assert result["event"] == "result" and [s["face"] for s in result["segments"]] == [True, False, True]

    src, dst = probe(str(work["clip"])), probe(str(out))
    assert (dst.width, dst.height, dst.frames) == (src.width, src.height, src.frames)
    assert dst.fps_rational in ("25/1", "25") and dst.has_audio

    # the sound is the new audio, not the clip's own tone
    got = A.load_audio(str(out))
    new = A.load_audio(str(work["speech"]))[: len(got)]
    own = A.load_audio(str(work["tone"]))[: len(got)]
    assert abs(len(got) - src.frames / 25 * 16000) < 1600
    corr_new = np.corrcoef(got[: len(new)], new[: len(got)])[0, 1]
    corr_own = abs(np.corrcoef(got[: len(own)], own[: len(got)])[0, 1])
    assert corr_new > 0.9 and corr_own < 0.2

    a, b = frames_of(work["clip"]), frames_of(out)
    diff = np.abs(a - b).mean(axis=3)  # (N, H, W)
    seg = result["segments"]
    noface = diff[seg[1]["start_frame"] + 1 : seg[1]["end_frame"] - 1]
    assert noface.mean() < 1.0  # only re-encoding noise
    # face frames: changed around the mouth, not elsewhere
    face = diff[2 : seg[0]["end_frame"] - 2]
    per_row = face.mean(axis=(0, 2))
    h = per_row.shape[0]
    top = per_row[: h // 5].mean()  # hair/forehead rows, far from the mouth
    peak = per_row.max()
    assert peak > 5 * max(top, 0.5), (peak, top)
    assert face.mean() > noface.mean() + 0.5


def test_match_audio_cuts_video_to_audio(work):
    short = sample_media.speech_wav(work["dir"] / "short.wav", text="Short line.", seconds=2.0)
    out = work["dir"] / "short.mp4"
    r = run_cli("sync", work["clip"], short, "-o", out, "--checkpoint", work["ckpt"], "--segments", "all",
                "--box", 100, 60, 220, 200, "--match", "audio")
    assert r.returncode == 0, r.stderr
    n_chunks = len(A.chunk_starts(A.melspectrogram(A.load_audio(str(short))).shape[1], 25.0))
    assert probe(str(out)).frames == n_chunks
    assert f": {n_chunks} frames, {n_chunks} lip-synced" in r.stderr  # the report counts the output's frames


def test_encoding_options_reach_the_engine(work):
    from lipsync_core.cli import build_parser
    from lipsync_core.errors import LipsyncError
    from lipsync_core.options import options_from_args
    from lipsync_core.sync import SyncOptions, sync_clips

    args = build_parser().parse_args(["sync", "v", "a", "-o", "o.mp4", "--checkpoint", "c",
                                      "--crf", "23", "--x264-preset", "veryfast", "--exact-size"])
    o = options_from_args(args)
    assert (o.crf, o.preset, o.exact_size) == (23, "veryfast", True)
    d = options_from_args(build_parser().parse_args(["sync", "v", "a", "-o", "o.mp4", "--checkpoint", "c"]))
    assert (d.crf, d.preset) == (SyncOptions.crf, SyncOptions.preset) == (18, "auto")
    assert d.exact_size is False
    # the worker's path (options straight from a job): refused before anything runs
    out = work["dir"] / "never.mp4"
    clips = [{"start_frame": 0, "end_frame": 10, "audio_start": 0.0, "output": str(out), "face": True}]
    with pytest.raises(LipsyncError, match="unknown x264 preset 'turbo'"):
        sync_clips(str(work["clip"]), str(work["speech"]), str(work["ckpt"]), clips, SyncOptions(preset="turbo"))
    with pytest.raises(LipsyncError, match="crf 99 is out of range"):
        sync_clips(str(work["clip"]), str(work["speech"]), str(work["ckpt"]), clips, SyncOptions(crf=99))
    assert not out.exists()


def bad(work, *args, expect):
    out = work["dir"] / "bad_out.mp4"
    r = run_cli(*[out if a == "OUT" else a for a in args])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert expect in r.stderr.lower(), r.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(work["dir"]) if "bad_out" in p]  # no temp leftovers either
    return r


def test_a_checkpoint_that_carries_code_is_refused_as_such(work, code_carrying_checkpoint):
    path, marker = code_carrying_checkpoint
    r = bad(work, "sync", work["clip"], work["speech"], "-o", "OUT", "--checkpoint", path, expect="carries code")
    assert "not loaded" in r.stderr and "corrupt" not in r.stderr
    assert not marker.exists()


def test_bad_inputs(work, tmp_path):
    c, s, k = work["clip"], work["speech"], work["ckpt"]
    bad(work, "sync", tmp_path / "nope.mp4", s, "-o", "OUT", "--checkpoint", k, expect="not found")
    bad(work, "sync", s, s, "-o", "OUT", "--checkpoint", k, expect="no video stream")
    silent = sample_media.write_video(tmp_path / "silent.mp4", sample_media.noface_frames(10))
    bad(work, "sync", c, silent, "-o", "OUT", "--checkpoint", k, expect="no audio stream")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(open(k, "rb").read()[:100000])
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", trunc, expect="checkpoint")
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", tmp_path / "none.pth", expect="checkpoint not found")
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--segments", "1-9", expect="past the end")
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--segments", "3-1", expect="")
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--segments", "0-2,1-3", expect="overlap")
    r = run_cli("sync", c, s, "-o", tmp_path / "missing" / "o.mp4", "--checkpoint", k)
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--crf", "52", expect="from 0 (lossless) to 51")
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--x264-preset", "turbo", expect="invalid choice")
    # the no-face middle part (1.6-2.8 s) given as a face range: no face is ever found there
    bad(work, "sync", c, s, "-o", "OUT", "--checkpoint", k, "--segments", "1.7-2.7", "--detector", "opencv",
        expect="no face was found in 1.7")


def test_a_clip_without_any_face_warns_and_still_gets_the_new_audio(work, tmp_path):
    clip = sample_media.write_video(tmp_path / "noface.mp4", sample_media.noface_frames(20))
    out = tmp_path / "out.mp4"
    r = run_cli("sync", clip, work["speech"], "-o", out, "--checkpoint", work["ckpt"], "--detector", "opencv")
    assert r.returncode == 0, r.stderr
    assert "warning: no face was found in any frame" in r.stderr and "--box" in r.stderr
    assert "0 lip-synced in 0 face segment(s)" in r.stderr and probe(str(out)).has_audio


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _odd_source(tmp_path, w: int, h: int, n: int):
    from lipsync_core.media import ffmpeg_exe

    source = tmp_path / "odd.mkv"  # FFV1 keeps odd sizes; 4:2:0 like the camera files editors cut
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                    "-s", f"{w}x{h}", "-r", "25", "-i", "-", "-c:v", "ffv1", "-pix_fmt", "yuv420p", str(source)],
                   input=sample_media.astronaut_frames(n, w, h).tobytes(), check=True)
    return source


@pytest.mark.parametrize("codec,suffix,pix_fmt", [("h264", ".mp4", "yuv444p"), ("ffv1", ".mkv", "yuv444p")])
def test_exact_size_keeps_an_odd_size_in_full_chroma(work, tmp_path, codec, suffix, pix_fmt):
    """exact_size (the add-on's results, which replace their movies): 321x241 stays 321x241, written 4:4:4."""
    from lipsync_core.sync import SyncOptions, sync

    w, h, n = 321, 241, 12
    source = _odd_source(tmp_path, w, h, n)
    frames = np.stack(list(FrameReader(str(source))))
    box = (110, 70, 210, 170)
    out = tmp_path / f"odd_exact{suffix}"
    report = sync(str(source), str(work["speech"]), str(out), str(work["ckpt"]),
                  SyncOptions(segments="all", box=box, cache=False, crf=10, codec=codec, exact_size=True))
    assert report["size"] == [w, h] and report["pad"] == [0, 0]
    info = probe(out)
    assert (info.width, info.height, info.pix_fmt, info.frames) == (w, h, pix_fmt, n)
    result = np.stack(list(FrameReader(str(out))))
    outside = np.ones((h, w), bool)
    x1, y1, x2, y2 = box
    outside[max(y1 - 4, 0):y2 + 14, max(x1 - 4, 0):x2 + 4] = False
    psnr = _psnr(result[:, outside], frames[:, outside])
    print(f"exact_size {codec}: outside the face {psnr:.1f} dB")
    assert psnr > 40, psnr
    if codec == "ffv1":  # lossless: the luma and every 4:2:0 chroma sample (at its own position) kept exactly
        from lipsync_core.media import ffmpeg_exe

        def planes(path, fmt):
            raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", fmt,
                                  "-"], capture_output=True, check=True).stdout
            return np.frombuffer(raw, np.uint8).reshape(n, -1)

        src, got = planes(source, "yuv420p"), planes(out, "yuv444p").reshape(n, 3, h, w)
        cw, ch = (w + 1) // 2, (h + 1) // 2
        assert np.array_equal(src[:, :w * h].reshape(n, h, w)[:, outside], got[:, 0][:, outside])
        src_u = src[:, w * h:w * h + cw * ch].reshape(n, ch, cw)
        assert np.array_equal(src_u[:, outside[::2, ::2]], got[:, 1, ::2, ::2][:, outside[::2, ::2]])
    # the mouth was redone (the result is not the source copied)
    assert np.abs(result[:, y2 - 30:y2 - 10, x1 + 20:x2 - 20].astype(int)
                  - frames[:, y2 - 30:y2 - 10, x1 + 20:x2 - 20]).mean() > 3


def test_odd_sized_movie_lines_up_with_its_source(work, tmp_path):
    """321x241 cannot be H.264 yuv420p: the result is 322x242 with the extra column and row at the right and
    bottom only, and the report says so, so an editor can crop it back onto its source to the pixel."""
    from lipsync_core.sync import SyncOptions, sync

    w, h, n = 321, 241, 12
    source = _odd_source(tmp_path, w, h, n)
    frames = np.stack(list(FrameReader(str(source))))
    box = (110, 70, 210, 170)
    out = tmp_path / "odd_synced.mp4"
    report = sync(str(source), str(work["speech"]), str(out), str(work["ckpt"]),
                  SyncOptions(segments="all", box=box, cache=False, crf=10))  # crf 10: alignment, not x264, shows
    assert report["size"] == [w, h] and report["pad"] == [1, 1]
    info = probe(out)
    assert (info.width, info.height) == (w + 1, h + 1) and info.frames == n
    result = np.stack(list(FrameReader(str(out))))
    cropped = result[:, :h, :w]
    outside = np.ones((h, w), bool)
    x1, y1, x2, y2 = box
    outside[max(y1 - 4, 0):y2 + 14, max(x1 - 4, 0):x2 + 4] = False  # the face box, its pads and the blend's edge
    assert _psnr(cropped[:, outside], frames[:, outside]) > 42  # 44 dB here, as for 320x240
    # one pixel off (the picture placed centred on the padded frame) is far from the source
    assert _psnr(result[:, 1:h + 1, 1:w + 1][:, outside], frames[:, outside]) < 30
    # the padding repeats the edge pixels: no black line if an editor shows the padded frame
    assert _psnr(result[:, :h, w], frames[:, :, w - 1]) > 35 and _psnr(result[:, h, :w], frames[:, h - 1]) > 35

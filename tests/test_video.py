"""probe / FrameReader / VideoEncoder against small made clips, with and without ffprobe."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from lipsync_core.errors import LipsyncError
from lipsync_core.media import FrameReader, VideoEncoder, probe, probe_audio
from lipsync_core.media import ffmpeg as ffbin
from lipsync_core.media.ffmpeg import SWS_FLAGS, passthrough_args
from tools.sample_media import astronaut_frames, tone_wav, write_video

AAC_FRAME = 1024 / 48000


def stamped_frames(n: int) -> np.ndarray:
    """Astronaut frames with the frame number drawn big, so an off-by-one can never match."""
    frames = astronaut_frames(n)
    for i, f in enumerate(frames):
        cv2.putText(f, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 5)
    return frames


def ff(*args: str) -> None:
    subprocess.run([ffbin.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def decode_all(path) -> np.ndarray:
    """Reference: every frame of a full decode, independent of FrameReader."""
    out = subprocess.run([ffbin.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:V:0",
                          *passthrough_args(ffbin.ffmpeg_exe()), "-sws_flags", SWS_FLAGS,
                          "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], capture_output=True, check=True)
    info = probe(path)
    return np.frombuffer(out.stdout, np.uint8).reshape(-1, info.height, info.width, 3)


def audio_samples(path) -> np.ndarray:
    out = subprocess.run([ffbin.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
                          "-ac", "1", "-ar", "48000", "-"], capture_output=True, check=True)
    return np.frombuffer(out.stdout, np.float32)


def onset(samples: np.ndarray) -> float | None:
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    return loud[0] / 48000 if len(loud) else None


@pytest.fixture(params=["ffprobe", "no-ffprobe"])
def probe_mode(request, monkeypatch):
    if request.param == "no-ffprobe":
        monkeypatch.setattr(ffbin, "ffprobe_exe", lambda: None)
    elif ffbin.ffprobe_exe() is None:
        pytest.skip("no ffprobe on this machine")
    return request.param


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    frames = stamped_frames(60)
    tone = tone_wav(d / "tone.wav", 3.0)
    c = {
        "dir": d,
        "frames": frames,
        "tone": tone,
        "c25": write_video(d / "c25.mp4", frames[:50], fps="25", audio=tone),
        "ntsc": write_video(d / "ntsc.mp4", frames, fps="30000/1001"),
    }
    # same clip in Matroska (B-frame delay shows as a non-zero video start) and MPEG-TS (no index)
    ff("-i", str(c["ntsc"]), "-c", "copy", str(d / "ntsc.mkv"))
    ff("-i", str(c["ntsc"]), "-c", "copy", "-f", "mpegts", str(d / "ntsc.ts"))
    # a stream-copy cut between keyframes: an edit list hides frames the container still counts
    ff("-ss", "0.9", "-i", str(c["ntsc"]), "-c", "copy", str(d / "cut.mp4"))
    # variable frame rate: 25 fps, then 50 fps (readers must not seek by time)
    ff("-i", str(c["ntsc"]), "-vf", "setpts='if(lt(N,30),N/25,30/25+(N-30)/50)/TB'",
       *passthrough_args(ffbin.ffmpeg_exe()), "-enc_time_base", "1:1000", "-c:v", "libx264",
       "-preset", "ultrafast", str(d / "vfr.mp4"))
    c["mkv"], c["ts"], c["cut"], c["vfr"] = d / "ntsc.mkv", d / "ntsc.ts", d / "cut.mp4", d / "vfr.mp4"
    return c


# -------------------------------------------------------------------------------------------------- probe


def test_probe_made_clips(clips, probe_mode):
    a = probe(clips["c25"])
    assert (a.width, a.height, a.frames, a.fps_rational, a.has_audio) == (320, 240, 50, "25/1", True)
    assert a.fps == 25.0 and a.duration == pytest.approx(2.0, abs=0.02)
    b = probe(str(clips["ntsc"]))
    assert (b.frames, b.fps_rational, b.has_audio) == (60, "30000/1001", False)
    assert b.fps == pytest.approx(29.97, abs=0.001) and b.seekable
    assert b.duration == pytest.approx(60 * 1001 / 30000, abs=0.01)
    # counts that must come from decoding: no frame count in the container / an edit list that trims
    assert probe(clips["mkv"]).frames == 60
    assert probe(clips["ts"]).frames == 60 and not probe(clips["ts"]).seekable
    assert probe(clips["cut"]).frames == len(decode_all(clips["cut"])) < 60
    # 25 fps, then 50 fps: Blender plays it on a 50 fps grid over the stream's duration, repeating each of the
    # first 30 frames (tests/test_vfr_blender.py renders such clips in Blender)
    vfr = probe(clips["vfr"])
    assert (vfr.fps_rational, vfr.decoded_frames, vfr.variable_rate, vfr.seekable) == ("50/1", 60, True, True)
    # ffmpeg -i shows no stream duration: the length is estimated from the frames' timestamps
    assert vfr.frames == 91 if probe_mode == "ffprobe" else abs(vfr.frames - 91) <= 1
    assert [vfr.source_frame(n) for n in (0, 1, 2, 59, 60, 61, 89)] == [0, 0, 1, 29, 30, 31, 59]


def test_probe_rotated(clips, probe_mode):
    src, out = clips["c25"], clips["dir"] / f"rot-{probe_mode}.mp4"
    ff("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    if probe(out).rotation == 0:  # ffmpeg >= 6 ignores that tag: use the display matrix option
        try:
            ff("-display_rotation", "90", "-i", str(src), "-c", "copy", str(out))
        except subprocess.CalledProcessError:
            pytest.skip("this ffmpeg cannot write rotation metadata")
    info = probe(out)
    assert (info.width, info.height, info.rotation % 180) == (240, 320, 90)
    first = next(iter(FrameReader(out, end_frame=1, info=info)))
    assert first.shape == (320, 240, 3)


def test_probe_errors(clips, probe_mode, tmp_path):
    with pytest.raises(LipsyncError, match="not found"):
        probe(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(LipsyncError, match="cannot read"):
        probe(text)
    with pytest.raises(LipsyncError, match="has no video stream: give a video file"):
        probe(clips["tone"])
    with pytest.raises(LipsyncError, match="no audio stream"):
        probe_audio(clips["ntsc"])
    with pytest.raises(LipsyncError, match="not found"):
        probe_audio(tmp_path / "missing.wav")


def test_probe_audio(clips, probe_mode):
    a = probe_audio(clips["tone"])
    assert (a.sample_rate, a.channels) == (44100, 1) and a.duration == pytest.approx(3.0, abs=0.011)
    v = probe_audio(clips["c25"])  # the audio of a video
    assert v.channels == 1 and v.duration == pytest.approx(2.0, abs=0.05)


# ------------------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("key", ["c25", "ntsc", "mkv", "cut", "ts", "vfr"])
def test_reader_frame_exact(clips, key):
    path = clips[key]
    info = probe(path)
    decoded = decode_all(path)
    assert len(decoded) == info.decoded_frames
    full = decoded[[info.source_frame(k) for k in range(info.frames)]]  # the frame grid (identity for CFR)
    n = len(full)
    starts = (1, 2, 13, 29, 31, n // 2) if key in ("c25", "ntsc") else (1, 31)
    for start in sorted({s for s in starts if s < n - 3} | {n - 3}):
        with FrameReader(path, start_frame=start, end_frame=start + 3, info=info) as r:
            got = list(r)
        assert len(got) == 3 and r.frames_read == 3
        for k, frame in enumerate(got):
            assert np.array_equal(frame, full[start + k]), f"{key}: start {start} frame {k}"
    assert np.array_equal(np.stack(list(FrameReader(path, info=info))), full)


def test_reader_without_ffprobe(clips, monkeypatch):
    monkeypatch.setattr(ffbin, "ffprobe_exe", lambda: None)
    full = decode_all(clips["mkv"])
    with FrameReader(clips["mkv"], start_frame=31, end_frame=40) as r:
        assert len(r) == 9
        assert np.array_equal(np.stack(list(r)), full[31:40])


def test_reader_range_batches_and_inline(clips):
    path = clips["ntsc"]
    full = decode_all(path)
    with FrameReader(path, start_frame=50, end_frame=1000) as r:  # clamped to the end
        assert len(r) == 10
        batches = list(r.read_batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate(batches), full[50:])
    with FrameReader(path, start_frame=5, end_frame=9, prefetch=0) as r:
        assert np.array_equal(np.stack(list(r)), full[5:9])
    assert list(FrameReader(path, start_frame=7, end_frame=7)) == []
    with pytest.raises(LipsyncError, match="outside the video"):
        FrameReader(path, start_frame=61)


def test_reader_downscaled(clips):
    path = clips["c25"]
    full = decode_all(path)
    with FrameReader(path, start_frame=10, end_frame=14, size=(160, 120)) as r:
        small = np.stack(list(r))
    assert small.shape == (4, 120, 160, 3)
    ref = np.stack([cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in full[10:14]])
    assert np.abs(small.astype(int) - ref).mean() < 4


def test_reader_close_early_stops_ffmpeg(clips):
    r = FrameReader(clips["ntsc"])
    proc = r._dec.proc
    next(r)
    r.close()
    assert proc.poll() is not None
    assert list(r) == []


def test_reader_ffmpeg_error(clips, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 5000)
    with pytest.raises(LipsyncError, match="ffmpeg failed while decoding"):
        list(FrameReader(bad, info=probe(clips["ntsc"])))


# ------------------------------------------------------------------------------------------------ encoder


def test_encoder_round_trip_ntsc(clips, tmp_path):
    frames = clips["frames"][:45]
    out = tmp_path / "out.mp4"
    with VideoEncoder(out, 320, 240, "30000/1001", n_frames=45) as enc:
        enc.write_many(frames[:20])
        for f in frames[20:]:
            enc.write(f)
    info = probe(out)
    assert (info.width, info.height, info.frames, info.fps_rational) == (320, 240, 45, "30000/1001")
    assert info.has_audio
    back = decode_all(out)
    assert np.abs(back.astype(int) - frames).mean() < 3
    # no audio given: a silent track exactly as long as the video
    s = audio_samples(out)
    assert np.abs(s).max() < 1e-3
    assert abs(len(s) / 48000 - 45 * 1001 / 30000) <= AAC_FRAME
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("n_frames, audio_start, tone_at", [
    (50, 0.0, 1.0),  # audio (3 s) longer than the video (2 s): cut
    (50, 0.5, 0.5),  # audio_start moves the tone earlier
    (None, -0.5, 1.5),  # leading silence; frame count unknown up front (second pass)
    (90, 0.0, 1.0),  # audio shorter than the video (3.6 s): padded with silence
    (40, 9.0, None),  # past the end of the audio: silence
])
def test_encoder_audio(clips, tmp_path, n_frames, audio_start, tone_at):
    step = clips["dir"] / "step.wav"  # 1 s silence then 2 s of tone
    if not step.exists():
        ff("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-f", "lavfi", "-i", "sine=f=440:r=44100",
           "-filter_complex", "[0]atrim=0:1[s];[1]atrim=0:2[t];[s][t]concat=n=2:v=0:a=1", str(step))
    n = n_frames or 50
    frames = np.repeat(clips["frames"][:1], n, axis=0)
    out = tmp_path / "a.mp4"
    with VideoEncoder(out, 320, 240, "25", audio_path=step, audio_start=audio_start,
                      n_frames=n_frames) as enc:
        enc.write_many(frames)
    info = probe(out)
    assert info.frames == n and info.has_audio
    s = audio_samples(out)
    assert abs(len(s) / 48000 - n / 25) <= AAC_FRAME
    assert not list(tmp_path.glob(".*"))  # no partial files left
    got = onset(s)
    if tone_at is None:
        assert got is None
    else:
        assert got == pytest.approx(tone_at, abs=0.005)


def test_encoder_frame_count_differs_from_n_frames(clips, tmp_path):
    out = tmp_path / "short.mp4"
    with VideoEncoder(out, 320, 240, "25", audio_path=clips["tone"], n_frames=40) as enc:
        enc.write_many(clips["frames"][:30])
    assert probe(out).frames == 30
    assert abs(len(audio_samples(out)) / 48000 - 30 / 25) <= AAC_FRAME


SUPERFAST, ULTRAFAST = b"subme=1 ", b"cabac=0 "  # how x264's settings string in the stream tells them apart


@pytest.mark.parametrize("preset,crf,size,mark", [
    (None, None, (64, 64), SUPERFAST),  # the default ("auto") up to 1280x720
    ("auto", None, (1280, 720), SUPERFAST),
    (None, None, (1920, 1080), ULTRAFAST),  # above 1280x720: x264 would cost as much as the generator
    ("superfast", None, (1920, 1080), SUPERFAST),  # a named preset is kept at any size
    ("ultrafast", 30, (64, 64), ULTRAFAST)])
def test_encoder_preset_and_crf_reach_x264(tmp_path, preset, crf, size, mark):
    """x264 writes its settings into the stream: the default (crf 18, the preset for the size) and a chosen pair
    both land."""
    w, h = size
    frame = np.zeros((h, w, 3), np.uint8)
    kwargs = {k: v for k, v in (("preset", preset), ("crf", crf)) if v is not None}
    with VideoEncoder(tmp_path / "p.mp4", w, h, "25", n_frames=3, **kwargs) as enc:
        enc.write_many(np.stack([frame] * 3))
    data = (tmp_path / "p.mp4").read_bytes()
    assert f"crf={crf or 18}.0".encode() in data and mark in data


def test_encoder_odd_size(tmp_path):
    yy, xx = np.mgrid[0:41, 0:61]
    frame = np.repeat((xx * 3 + yy * 2)[..., None], 3, axis=2).astype(np.uint8)  # grey: no chroma loss
    out = tmp_path / "odd.mp4"
    with VideoEncoder(out, 61, 41, "25", n_frames=3, crf=0) as enc:
        assert (enc.out_width, enc.out_height) == (62, 42)
        enc.write_many(np.stack([frame] * 3))
    back = decode_all(out)
    assert back.shape == (3, 42, 62, 3)
    err = np.abs(back[0, :41, :61].astype(int) - frame).mean()
    assert err < 1 and err < np.abs(back[0, :41, 1:61].astype(int) - frame[:, :60]).mean()  # not shifted
    assert np.abs(back[0, :41, 61].astype(int) - back[0, :41, 60]).max() <= 3  # edge replicated


def test_encoder_abort_and_exception_leave_nothing(clips, tmp_path):
    out = tmp_path / "x.mp4"
    enc = VideoEncoder(out, 320, 240, "25", n_frames=10)
    enc.write_many(clips["frames"][:5])
    enc.abort()
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")  # an existing output survives a failed run untouched
    with pytest.raises(RuntimeError, match="boom"):
        with VideoEncoder(out, 320, 240, "25", audio_path=clips["tone"]) as enc:
            enc.write_many(clips["frames"][:5])
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4"] and out.read_bytes() == b"old"


def test_encoder_errors(clips, tmp_path):
    with pytest.raises(LipsyncError, match="create it or choose another -o path"):
        VideoEncoder(tmp_path / "nope" / "x.mp4", 320, 240, "25")
    with pytest.raises(LipsyncError, match="no audio stream"):
        VideoEncoder(tmp_path / "x.mp4", 320, 240, "25", audio_path=clips["ntsc"])
    enc = VideoEncoder(tmp_path / "x.mp4", 320, 240, "25", preset="no-such-preset")
    with pytest.raises(LipsyncError, match="ffmpeg failed while writing"):
        for f in clips["frames"]:
            enc.write(f)
        enc.close()
    with pytest.raises(ValueError), VideoEncoder(tmp_path / "y.mp4", 320, 240, "25") as enc:
        enc.write(np.zeros((10, 10, 3), np.uint8))
    enc = VideoEncoder(tmp_path / "z.mp4", 320, 240, "25")
    with pytest.raises(LipsyncError, match="no frames"):
        enc.close()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("tag", [None, "bt709"])
def test_colour_round_trip_is_lossless_in_luma(clips, tmp_path, tag):
    """decode -> encode must not shift colours, or the untouched frame drifts from the source."""
    src = clips["c25"]
    if tag:
        src = tmp_path / "709.mp4"
        ff("-i", str(clips["c25"]), "-frames:v", "8", "-vf", "scale=out_color_matrix=bt709",
           "-colorspace", "bt709", "-c:v", "libx264", "-crf", "12", "-preset", "ultrafast", str(src))
    info = probe(src)
    assert info.color_space == tag
    with VideoEncoder(tmp_path / "rt.mp4", 320, 240, "25", n_frames=8, crf=0, preset="ultrafast",
                      color_space=info.color_space) as enc:
        enc.write_many(np.stack(list(FrameReader(src, end_frame=8, info=info))))
    assert probe(tmp_path / "rt.mp4").color_space == tag

    def luma(path):
        out = subprocess.run([ffbin.ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "8",
                              "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True)
        return np.frombuffer(out.stdout, np.uint8).astype(int)

    assert np.abs(luma(tmp_path / "rt.mp4") - luma(src)).mean() < 0.25  # default swscale flags: ~1.7


@pytest.mark.parametrize("var", ["LIPSYNC_FFPROBE", "LIPSYNC_FFMPEG"])
def test_a_binary_variable_pointing_at_nothing_says_so(var, tmp_path, monkeypatch):
    clip = write_video(tmp_path / "c.mp4", astronaut_frames(3))
    monkeypatch.setenv(var, str(tmp_path / "no-such-binary"))
    ffbin.ffmpeg_exe.cache_clear()
    ffbin.ffprobe_exe.cache_clear()
    try:
        with pytest.raises(LipsyncError, match=f"{var} is set to .*no-such-binary.*unset it"):
            probe(clip)
    finally:
        monkeypatch.delenv(var)
        ffbin.ffmpeg_exe.cache_clear()
        ffbin.ffprobe_exe.cache_clear()
    assert probe(clip).frames == 3

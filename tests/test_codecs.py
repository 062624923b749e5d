"""Result encodings (--codec / the `codec` option): H.264 in .mp4, ProRes 422 HQ in .mov, FFV1 in .mkv; ProRes and
FFV1 keep the source's samples outside the mouth (the faithful Y'CbCr path) and a 10-bit source's 10 bits."""

import json
import subprocess

import numpy as np
import pytest

from lipsync_core import cli
from lipsync_core.colour import YuvColour
from lipsync_core.errors import LipsyncError
from lipsync_core.media import FrameReader, encoded_size, ffmpeg_exe, ffprobe_exe, output_pix_fmt, probe
from lipsync_core.sync import SyncOptions, sync
from tools import sample_media
from tools.random_weights import shared_checkpoint

BOX = (100, 60, 220, 200)
N = 10


def _streams(path) -> dict:
    out = subprocess.run([ffprobe_exe(), "-v", "error", "-show_entries", "stream=codec_type,codec_name,pix_fmt",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def _samples(path, pix_fmt: str, n: int, w: int = 320, h: int = 240) -> list[np.ndarray]:
    """The file's own samples in `pix_fmt` (planar), per frame: [Y, U, V] arrays."""
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
                         capture_output=True, check=True).stdout
    dt = np.dtype("<u2") if "10" in pix_fmt else np.uint8
    cw = w // 2 if ("420" in pix_fmt or "422" in pix_fmt) else w
    ch = h // 2 if "420" in pix_fmt else h
    data = np.frombuffer(raw, dt).reshape(n, -1)
    y, c = w * h, cw * ch
    return [data[:, :y].reshape(n, h, w), data[:, y:y + c].reshape(n, ch, cw),
            data[:, y + c:y + 2 * c].reshape(n, ch, cw)]


def _outside(plane: np.ndarray, sx: int = 1, sy: int = 1) -> np.ndarray:
    """Samples well away from BOX (the box grown by 4 pixels), for a plane subsampled by (sx, sy)."""
    keep = np.ones(plane.shape[1:], bool)
    x1, y1, x2, y2 = BOX
    keep[(y1 - 4) // sy:(y2 + 4) // sy + 1, (x1 - 4) // sx:(x2 + 4) // sx + 1] = False
    return plane[:, keep]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("codecs")
    deep = sample_media.deep_frames(N)
    return {"dir": d, "src10": sample_media.write_deep_video(d / "src10.mov", deep, "yuv422p10le", "prores_ks"),
            "src8": sample_media.write_deep_video(d / "src8.mkv", deep, "yuv420p", "ffv1"),
            "speech": sample_media.speech_wav(d / "s.wav", seconds=1.0),
            "ckpt": shared_checkpoint(tmp_path_factory, "official", 0)}


def _sync(media, src, out, codec):
    return sync(str(src), str(media["speech"]), str(out), str(media["ckpt"]),
                SyncOptions(segments="all", box=BOX, codec=codec, cache=False))


def test_pixel_formats_follow_the_codec_and_source():
    assert output_pix_fmt("h264", "yuv422p10le") == "yuv420p"
    assert output_pix_fmt("prores", "yuv420p") == "yuv422p10le"
    assert output_pix_fmt("ffv1", "yuv420p") == "yuv420p"
    assert output_pix_fmt("ffv1", "yuv422p10le") == "yuv422p10le"
    assert output_pix_fmt("ffv1", "p010le") == "yuv420p10le"
    assert output_pix_fmt("ffv1", "yuv444p12le") == "yuv444p12le"
    assert output_pix_fmt("ffv1", "gbrp") == "yuv444p"
    # 4:2:0 needs even sizes, 4:2:2 an even width, 4:4:4 nothing
    assert encoded_size(321, 241, "yuv420p") == (322, 242)
    assert encoded_size(321, 241, "yuv422p10le") == (322, 241)
    assert encoded_size(321, 241, "yuv444p") == (321, 241)
    # keep_size (exact_size): full chroma only where the usual format cannot hold the size; ProRes still pads
    assert output_pix_fmt("h264", "yuv420p", (321, 241)) == "yuv444p"
    assert output_pix_fmt("h264", "yuv420p", (320, 240)) == "yuv420p"
    assert output_pix_fmt("ffv1", "yuv420p10le", (320, 241)) == "yuv444p10le"
    assert output_pix_fmt("ffv1", "yuv422p", (320, 241)) == "yuv422p"  # 4:2:2 holds an odd height
    assert output_pix_fmt("ffv1", "yuv422p12le", (321, 240)) == "yuv444p12le"
    assert output_pix_fmt("prores", "yuv420p", (321, 241)) == "yuv422p10le"


def test_ten_bit_source_to_ffv1_keeps_every_sample_outside_the_mouth(media):
    out = media["dir"] / "out10.mkv"
    result = _sync(media, media["src10"], out, "ffv1")
    assert result["pad"] == [0, 0] and result["size"] == [320, 240]
    streams = _streams(out)
    assert streams["video"]["codec_name"] == "ffv1" and streams["video"]["pix_fmt"] == "yuv422p10le"
    assert streams["audio"]["codec_name"] == "flac"
    src, got = _samples(media["src10"], "yuv422p10le", N), _samples(out, "yuv422p10le", N)
    for plane, (a, b) in enumerate(zip(src, got)):
        sx = 1 if plane == 0 else 2
        assert np.array_equal(_outside(a, sx), _outside(b, sx)), f"plane {plane} changed outside the mouth"
    assert np.mean(got[0] % 4 != 0) > 0.5  # 10-bit samples, not 8-bit ones shifted
    x1, y1, x2, y2 = BOX
    assert np.abs(got[0][:, y2 - 30:y2 - 10, x1 + 30:x2 - 30].astype(int)
                  - src[0][:, y2 - 30:y2 - 10, x1 + 30:x2 - 30]).mean() > 8  # the mouth was redone
    # and as 16-bit RGB (what an editor's viewer shows) they agree to the conversion's rounding
    rgb = [np.stack(list(FrameReader(p, pix_fmt="yuv444p16le"))) for p in (media["src10"], out)]
    to_rgb = YuvColour(None, "tv")
    assert np.array_equal(_outside(rgb[0][0]), _outside(rgb[1][0]))  # same samples: same picture
    assert to_rgb.to_bgr8(rgb[1][0])[10:20, 10:20].std() > 0  # a picture, not a blank


def test_eight_bit_source_to_ffv1_stays_eight_bit_and_equal(media):
    out = media["dir"] / "out8.mkv"
    _sync(media, media["src8"], out, "ffv1")
    assert _streams(out)["video"]["pix_fmt"] == "yuv420p"
    src, got = _samples(media["src8"], "yuv420p", N), _samples(out, "yuv420p", N)
    for plane, (a, b) in enumerate(zip(src, got)):
        s = 1 if plane == 0 else 2
        assert np.array_equal(_outside(a, s, s), _outside(b, s, s)), f"plane {plane} changed outside the mouth"


def test_prores_is_ten_bit_422_hq_with_pcm(media):
    out = media["dir"] / "out.mov"
    _sync(media, media["src10"], out, "prores")
    streams = _streams(out)
    assert streams["video"]["codec_name"] == "prores" and streams["video"]["pix_fmt"] == "yuv422p10le"
    assert streams["audio"]["codec_name"] == "pcm_s16le"
    prof = subprocess.run([ffprobe_exe(), "-v", "error", "-show_entries", "stream=profile", "-of", "csv=p=0",
                           str(out)], capture_output=True, text=True, check=True).stdout
    assert "HQ" in prof
    src, got = _samples(media["src10"], "yuv422p10le", N)[0], _samples(out, "yuv422p10le", N)[0]
    diff = np.abs(_outside(src).astype(int) - _outside(got))
    psnr = 10 * np.log10(1023 ** 2 / max(np.mean(diff.astype(float) ** 2), 1e-9))
    assert psnr > 50, psnr  # ProRes HQ re-encodes, but barely moves the untouched picture
    assert np.mean(got % 4 != 0) > 0.5


def test_h264_is_the_default_and_reads_as_before(media):
    out = media["dir"] / "out.mp4"
    _sync(media, media["src8"], out, SyncOptions().codec)
    streams = _streams(out)
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    assert probe(out).frames == N


@pytest.mark.parametrize("codec,name", [("ffv1", "out.mp4"), ("prores", "out.mkv"), ("h264", "out.avi")])
def test_a_name_the_codec_is_not_written_as_is_refused(media, tmp_path, capsys, codec, name):
    out = tmp_path / name
    rc = cli.main(["sync", str(media["src8"]), str(media["speech"]), "-o", str(out), "--checkpoint",
                   str(media["ckpt"]), "--codec", codec, "--box", *map(str, BOX)])
    err = capsys.readouterr().err
    assert rc == 2 and "name it out." in err and "--codec" in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_unknown_codec_is_refused_in_a_job(media, tmp_path):
    import io

    from lipsync_core.progress import CancelToken, JsonProgress
    from lipsync_core.worker import run_job

    job = {"command": "sync", "video": str(media["src8"]), "audio": str(media["speech"]),
           "checkpoint": str(media["ckpt"]), "options": {"codec": "mpeg2"},
           "clips": [{"start_frame": 0, "end_frame": N, "output": str(tmp_path / "x.mkv")}]}
    with pytest.raises(LipsyncError, match="unknown codec 'mpeg2': use h264, prores, ffv1"):
        run_job(job, JsonProgress(stream=io.StringIO()), CancelToken())


def test_faithful_frames_repeat_chroma_exactly(media):
    """yuv444p16le from a 4:2:0 file: each chroma sample repeated 2x2 and the samples shifted to 16 bits."""
    planes = next(iter(FrameReader(media["src8"], pix_fmt="yuv444p16le")))
    assert planes.shape == (3, 240, 320) and planes.dtype == np.uint16
    assert not np.any(planes & 0xFF)  # 8-bit samples << 8
    u = planes[1]
    assert np.array_equal(u[0::2, 0::2], u[1::2, 1::2]) and np.array_equal(u[0::2, 0::2], u[0::2, 1::2])


def test_a_full_range_h264_source_keeps_its_levels(media, tmp_path):
    """A full-range source (yuvj420p, as phones write) crosses as BGR; its result is tagged full range and must
    hold full-range samples: black stays 0 and white 255, not the washed-out 16 / 235 of limited samples."""
    frames = sample_media.astronaut_frames(N).copy()
    frames[:, :40, :60] = 0
    frames[:, :40, 60:120] = 255
    h, w = frames.shape[1:3]
    src = tmp_path / "full.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", "25",
                    "-i", "-", "-vf", "scale=out_range=full", "-c:v", "libx264", "-crf", "0", "-pix_fmt", "yuvj420p",
                    "-color_range", "pc", str(src)], input=frames.tobytes(), check=True)
    assert probe(src).color_range == "pc"
    out = tmp_path / "synced.mp4"
    sync(str(src), str(media["speech"]), str(out), str(media["ckpt"]),
         SyncOptions(segments="all", box=BOX, crf=0, cache=False))
    assert probe(out).color_range == "pc"
    got = next(iter(FrameReader(out)))
    assert got[5:35, 5:55].max() <= 2 and got[5:35, 65:115].min() >= 253

"""The precision rule (precision.py): a faster precision is kept only when, in the mouth, it stays MARGIN_DB below
what the result's encoding already does to the same frames and moves no pixel past MAX_DIFF; lossless results run
exact fp32; LIPSYNC_PRECISION forces one. Judged on real runs with random checkpoints whose outputs behave
differently under bf16."""

import io
import json

import numpy as np
import pytest

from lipsync_core import precision
from lipsync_core.device import cpu_has_native_bf16
from lipsync_core.progress import JsonProgress
from lipsync_core.sync import SyncOptions, sync
from tools import sample_media
from tools.random_weights import shared_checkpoint, trained_like_model, write_random_checkpoint

BOX = (100, 60, 220, 200)
needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(),
                                reason="this CPU has no native bf16 (AVX512-BF16 / AMX): the engine never tries it")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    return {"dir": d, "clip": sample_media.write_video(d / "clip.mp4", sample_media.astronaut_frames(10)),
            "speech": sample_media.speech_wav(d / "s.wav", seconds=1.0),
            # output spread 0.044 (0.22..0.76), calm residual branches: bf16 stays close to fp32
            "calm": write_random_checkpoint(d / "calm.pth", model=trained_like_model(0, 0.05, (0.05, 0.1))),
            # output spread 0.15: bf16 throughout moves a few mouth pixels past the cap, bf16 in the decoder does not
            "spread": write_random_checkpoint(d / "spread.pth", model=trained_like_model(0, 0.15)),
            # the test checkpoint (output spread 0.33 over 0..1): bf16 moves some mouth pixels by tens of levels
            "wild": shared_checkpoint(tmp_path_factory, "official", 0)}


def _run(work, ckpt, name, monkeypatch=None, **opts):
    events = io.StringIO()
    result = sync(str(work["clip"]), str(work["speech"]), str(work["dir"] / name), str(work[ckpt]),
                  SyncOptions(segments="all", box=BOX, cache=False, **opts), progress=JsonProgress(stream=events))
    logs = [e["message"] for e in map(json.loads, events.getvalue().splitlines()) if e["event"] == "log"]
    return result, [m for m in logs if m.startswith("precision:")]


@pytest.fixture(autouse=True)
def _no_forced_precision(monkeypatch):
    monkeypatch.delenv("LIPSYNC_PRECISION", raising=False)


@needs_bf16
def test_bf16_is_kept_where_it_is_far_below_the_encoding(work):
    result, logs = _run(work, "calm", "calm.mp4")
    p = result["precision"]
    print(p)
    assert result["dtype"] == "bf16" and [t["precision"] for t in p["tried"]] == ["bf16"]
    t = p["tried"][0]
    assert t["kept"] and t["psnr_fast"] >= t["psnr_encode"] + precision.MARGIN_DB
    assert t["max_diff"] <= precision.MAX_DIFF
    assert len(logs) == 1 and logs[0].startswith("precision: using bf16 (bf16 vs fp32")
    assert "H.264 crf 18 superfast itself" in logs[0]  # 320x240: the "auto" preset is superfast


@needs_bf16
def test_the_check_encodes_with_the_results_preset_above_hd(work, monkeypatch):
    """Above 1280x720 the "auto" preset is ultrafast; the check's small windows around the mouth are encoded with
    it too (the preset follows the source's size, not the window's), and so is the result."""
    import cv2

    from lipsync_core import media

    presets, roundtrip = [], media.encode_roundtrip

    def spy(frames, fps, **options):
        presets.append((frames[0].shape, options["preset"]))
        return roundtrip(frames, fps, **options)

    monkeypatch.setattr(media, "encode_roundtrip", spy)

    big = np.stack([cv2.resize(f, (1920, 1080)) for f in sample_media.astronaut_frames(4)])
    clip = sample_media.write_video(work["dir"] / "hd.mp4", big)
    events = io.StringIO()
    out = work["dir"] / "hd_out.mp4"
    x1, y1, x2, y2 = BOX
    box = (x1 * 6, int(y1 * 4.5), x2 * 6, int(y2 * 4.5))  # 320x240 -> 1920x1080: the face's box
    result = sync(str(clip), str(work["speech"]), str(out), str(work["calm"]),
                  SyncOptions(segments="all", box=box, cache=False), progress=JsonProgress(stream=events))
    logs = [e["message"] for e in map(json.loads, events.getvalue().splitlines()) if e["event"] == "log"]
    verdicts = [m for m in logs if m.startswith("precision:")]
    assert result["frames"] == 4 and verdicts and all("H.264 crf 18 ultrafast itself" in m for m in verdicts)
    assert b"cabac=0 " in out.read_bytes()  # x264's settings in the stream: ultrafast has no CABAC
    assert presets and all(p == "ultrafast" and shape[0] * shape[1] < 1280 * 720 for shape, p in presets)


@needs_bf16
def test_bf16_in_the_decoder_only_is_kept_where_bf16_throughout_is_not(work):
    result, logs = _run(work, "spread", "spread.mp4")
    p = result["precision"]
    print(p)
    assert result["dtype"] == "bf16-decoder"
    whole, part = p["tried"]
    assert whole["precision"] == "bf16" and not whole["kept"] and whole["max_diff"] > precision.MAX_DIFF
    assert part["precision"] == "bf16-decoder" and part["kept"] and part["max_diff"] <= precision.MAX_DIFF
    assert part["psnr_encode"] == whole["psnr_encode"]  # the encoding measured once, on the same fp32 frames
    assert logs[0].startswith("precision: keeping fp32 (bf16 vs fp32") and "> cap 8" in logs[0]
    assert "<= cap 8" in logs[1] and logs[1].startswith("precision: using bf16-decoder (bf16-decoder vs fp32")


@needs_bf16
def test_fp32_is_kept_when_every_faster_precision_moves_pixels_past_the_cap(work):
    result, logs = _run(work, "wild", "wild.mp4")
    p = result["precision"]
    print(p)
    assert result["dtype"] == "fp32" and [t["precision"] for t in p["tried"]] == ["bf16", "bf16-decoder"]
    assert all(not t["kept"] and t["max_diff"] > precision.MAX_DIFF for t in p["tried"])
    assert len(logs) == 2 and all(m.startswith("precision: keeping fp32") for m in logs)


@pytest.mark.parametrize("opts,name", [({"codec": "ffv1"}, "lossless.mkv"), ({"crf": 0}, "crf0.mp4")])
def test_lossless_results_run_exact_fp32_without_trying(work, monkeypatch, opts, name):
    result, logs = _run(work, "calm", name, **opts)
    assert result["dtype"] == "fp32" and result["precision"] == {"chosen_by": "lossless output"}
    assert logs and "is lossless" in logs[0]
    if opts.get("codec") == "ffv1":  # exactly what a forced fp32 run writes
        from lipsync_core.media import FrameReader

        monkeypatch.setenv("LIPSYNC_PRECISION", "fp32")
        _run(work, "calm", "forced_" + name, **opts)
        a = np.stack(list(FrameReader(work["dir"] / name, pix_fmt="yuv444p16le")))
        b = np.stack(list(FrameReader(work["dir"] / ("forced_" + name), pix_fmt="yuv444p16le")))
        assert np.array_equal(a, b)


@needs_bf16
def test_lipsync_precision_forces_bf16_without_the_check(work, monkeypatch):
    monkeypatch.setenv("LIPSYNC_PRECISION", "bf16")
    result, logs = _run(work, "wild", "forced.mkv", codec="ffv1")  # even where the rule would say fp32
    assert result["dtype"] == "bf16" and result["precision"] == {"chosen_by": "LIPSYNC_PRECISION"}
    assert logs == []
    monkeypatch.setenv("LIPSYNC_PRECISION", "bf16-decoder")
    result, logs = _run(work, "wild", "forced_decoder.mkv", codec="ffv1")
    assert result["dtype"] == "bf16-decoder" and logs == []


def test_judge_measures_only_the_pasted_pixels():
    """A difference outside the rows paste writes is not counted; the encoder's is measured on the same pixels."""
    from lipsync_core.composite import Compositor

    frames = [np.full((120, 160, 3), 100, np.uint8) for _ in range(3)]
    box = (40, 20, 120, 100)
    exact = [np.full((96, 96, 3), 150, np.uint8)] * 3
    fast = [f.copy() for f in exact]
    for f in fast:
        f[:20] = 0  # rows above the feather mask: never pasted
        f[70, 48] = 153  # one pixel in the mouth, 3 levels off
    exact_encode = lambda xs: [x.copy() for x in xs]  # noqa: E731 (a lossless "encoder")
    v = precision.judge(frames, [box] * 3, exact, fast, Compositor("feather"), exact_encode)
    assert 0 < v.max_diff <= 3 and np.isfinite(v.psnr_fast) and v.psnr_encode == float("inf") and not v.keep_fast
    noisy_encode = lambda xs: [np.clip(x.astype(int) + 6, 0, 255).astype(np.uint8) for x in xs]  # noqa: E731
    v = precision.judge(frames, [box] * 3, exact, fast, Compositor("feather"), noisy_encode)
    assert v.psnr_encode == pytest.approx(10 * np.log10(255 ** 2 / 36)) and v.keep_fast


def test_judge_wants_the_margin_over_the_encoders_error():
    """bf16 2 levels off everywhere in the mouth (42.1 dB) passes an encoder 8 levels off (30.0 dB) but not one
    4 levels off (36.1 dB): it must stay MARGIN_DB under the encoder even when no pixel passes the cap."""
    from lipsync_core.composite import Compositor

    frames = [np.full((120, 160, 3), 100, np.uint8) for _ in range(2)]
    box = (40, 20, 120, 100)  # 80x80: resized from 96 and blended, the +2 lands as about +2 through the mask

    def shifted(k):
        return lambda xs: [np.clip(x.astype(int) + k, 0, 255).astype(np.uint8) for x in xs]

    exact = [np.full((96, 96, 3), 150, np.uint8)] * 2
    fast = [np.full((96, 96, 3), 152, np.uint8)] * 2
    comp = Compositor("box")  # the whole box pasted: every pixel of it is off by exactly 2
    coarse = precision.judge(frames, [box] * 2, exact, fast, comp, shifted(8))
    fine = precision.judge(frames, [box] * 2, exact, fast, comp, shifted(4))
    assert coarse.max_diff == fine.max_diff == 2
    assert coarse.psnr_fast == pytest.approx(10 * np.log10(255 ** 2 / 4))
    assert coarse.keep_fast and not fine.keep_fast
    # the log names the test that failed: here the PSNR one, not the cap
    line = fine.describe("bf16", "H.264 crf 18 superfast")
    assert "42.1 dB in the mouth < 46.1 needed (H.264 crf 18 superfast itself 36.1 dB + 10)" in line, line
    assert "largest difference 2/255 <= cap 8" in line and line.startswith("precision: keeping fp32")


def test_the_encoder_is_measured_on_a_window_around_the_mouth(monkeypatch):
    """At 1080p the encoder gets macroblock-aligned windows around each mouth (all one size), not whole frames;
    a per-pixel "encoder" measures the same there as on whole frames, and a real one within a dB or so."""
    from lipsync_core.composite import Compositor
    from lipsync_core.media import encode_roundtrip

    rng = np.random.default_rng(0)
    base = cv2_blur(rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8))
    frames = [np.roll(base, 3 * i, axis=1) for i in range(4)]
    boxes = [(900 + 5 * i, 400, 1100 + 5 * i, 640) for i in range(4)]
    exact = [rng.integers(90, 160, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    seen = []

    def noisy(xs):
        seen.extend(x.shape for x in xs)
        return [np.clip(x.astype(int) + 5, 0, 255).astype(np.uint8) for x in xs]

    v = precision.judge(frames, boxes, exact, exact, Compositor("feather"), noisy)
    assert len(set(seen)) == 1 and seen[0][0] % 16 == 0 and seen[0][1] % 16 == 0
    assert seen[0][0] * seen[0][1] < 1080 * 1920 / 20
    assert v.psnr_encode == pytest.approx(10 * np.log10(255 ** 2 / 25))
    # the result's preset for a 1920x1080 source (the renderer passes it for the windows too)
    real = lambda xs: encode_roundtrip(xs, "25/1", crf=18, preset="ultrafast")  # noqa: E731
    windowed = precision.judge(frames, boxes, exact, exact, Compositor("feather"), real)
    monkeypatch.setattr(precision, "ENCODE_MARGIN", 4000)  # the window grows to the whole frame
    seen.clear()
    whole = precision.judge(frames, boxes, exact, exact, Compositor("feather"), noisy)
    assert seen[0][:2] == (1080, 1920)
    whole = precision.judge(frames, boxes, exact, exact, Compositor("feather"), real)
    print(f"encoder in the mouth: window {windowed.psnr_encode:.2f} dB, whole frames {whole.psnr_encode:.2f} dB")
    assert abs(windowed.psnr_encode - whole.psnr_encode) < 1.5


def cv2_blur(img):
    import cv2

    return cv2.GaussianBlur(img, (0, 0), 3)

"""sync.ClipRenderer: its fast path (batched generator in a thread, overlapping decode/blend/encode, bounded
buffers) gives the same frames as a plain frame-by-frame loop."""

import numpy as np
import pytest

from lipsync_core import audio as A
from lipsync_core import media
from lipsync_core.composite import Compositor
from lipsync_core.media.encoder import codec_of
from lipsync_core.model import load_model
from lipsync_core.sync import ClipRenderer, SyncOptions, _crop96, frame_format_for
from tools import sample_media
from tools.random_weights import reference_predict, shared_checkpoint

BOX = (100, 60, 220, 200)


class CapturingEncoder:
    """Stands in for the H.264 encoder so frames can be compared bit for bit (encoding is lossy)."""

    def __init__(self, *args, **kwargs):
        self.frames = []
        CapturingEncoder.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, frame):
        self.frames.append(frame.copy())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_renderer")
    clip = sample_media.face_noface_face_clip(d / "clip.mp4", 12, 7, 13)
    speech = sample_media.speech_wav(d / "s.wav", seconds=2.0)
    ckpt = shared_checkpoint(tmp_path_factory, "official", 0)
    return clip, speech, ckpt


def plain(clip, info, order, boxes, mel, ckpt):
    """Frame by frame, with the plain network computing the whole face as the reference does."""
    net = load_model(ckpt)
    # the frames as the renderer gets them (an H.264 result of this 8-bit 4:2:0 clip: yuv420p planes)
    fmt, colour = frame_format_for(codec_of("h264"), info)
    frames = list(media.FrameReader(str(clip), pix_fmt=fmt))
    comp = Compositor("feather")
    out = []
    for k, src in enumerate(order):
        f = frames[src].copy()
        if boxes[k][0] >= 0:
            box = tuple(int(v) for v in boxes[k])
            crop = _crop96(f, box, colour)[None]
            face = reference_predict(net, A.mel_chunk_at(mel, np.array([k]), info.fps), crop)
            comp.paste(f, face[0], box, colour)
        out.append(f)
    return np.stack(out)


@pytest.mark.parametrize("looped", [False, True])
def test_fast_path_equals_plain_loop(setup, monkeypatch, looped):
    clip, speech, ckpt = setup
    monkeypatch.setenv("LIPSYNC_PRECISION", "fp32")
    monkeypatch.setattr(media, "VideoEncoder", CapturingEncoder)
    info = media.probe(str(clip))
    order = np.arange(45) % info.frames if looped else np.arange(info.frames)  # --match audio loops the video
    has_face = np.isin(order, np.r_[0:12, 19:32])
    boxes = np.where(has_face[:, None], np.array(BOX, np.int32), -1).astype(np.int32)
    mel = A.melspectrogram(A.load_audio(str(speech), duration=len(order) / info.fps))
    renderer = ClipRenderer(str(ckpt), SyncOptions(batch_size=4, blend="feather"))
    result = renderer.render(str(clip), info, order, boxes, mel, str(speech), 0.0, "unused.mp4")
    fast = np.stack(CapturingEncoder.last.frames)
    assert result["frames"] == len(order) and result["face_frames"] == int(has_face.sum())
    ref = plain(clip, info, order, boxes, mel, str(ckpt))
    diff = np.abs(fast.astype(np.int16) - ref)
    # batch composition may flip a truncation by one level; misordered frames or mel windows differ by far more
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    untouched = ~has_face
    assert np.array_equal(fast[untouched], ref[untouched])

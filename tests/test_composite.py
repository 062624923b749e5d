"""Compositor: reference box paste and the feathered mouth blend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync_core.composite import Compositor


@pytest.fixture
def scene():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (240, 320, 3), np.uint8)
    face = np.full((96, 96, 3), 200, np.uint8)
    face[:, :, 0] = np.arange(96, dtype=np.uint8)[None, :] * 2  # some structure to resize
    return frame, face, (100, 40, 220, 180)  # a 120 x 140 box


def outside(a: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    m = np.ones(a.shape[:2], bool)
    m[y1:y2, x1:x2] = False
    return a[m]


@pytest.mark.parametrize("mode", ["box", "feather"])
def test_outside_box_untouched(scene, mode):
    frame, face, box = scene
    out = Compositor(mode).paste(frame.copy(), face, box)
    assert np.array_equal(outside(out, box), outside(frame, box))


def test_box_mode_is_the_reference_paste(scene):
    frame, face, (x1, y1, x2, y2) = scene
    ref = frame.copy()
    ref[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    got = frame.copy()
    assert Compositor("box").paste(got, face, (x1, y1, x2, y2)) is got
    assert np.array_equal(got, ref)


def test_feather_keeps_eyes_and_replaces_mouth(scene):
    frame, face, (x1, y1, x2, y2) = scene
    got = Compositor().paste(frame.copy(), face, (x1, y1, x2, y2))
    h, w = y2 - y1, x2 - x1
    # upper half bit-identical
    assert np.array_equal(got[y1:y1 + h // 2, x1:x2], frame[y1:y1 + h // 2, x1:x2])
    resized = cv2.resize(face, (w, h)).astype(int)
    mouth = (slice(y1 + int(0.7 * h), y1 + int(0.85 * h)), slice(x1 + int(0.3 * w), x2 - int(0.3 * w)))
    ry, rx = slice(int(0.7 * h), int(0.85 * h)), slice(int(0.3 * w), w - int(0.3 * w))
    assert np.abs(got[mouth].astype(int) - resized[ry, rx]).max() <= 1  # fully the generated face there
    assert np.abs(got[mouth].astype(int) - frame[mouth]).mean() > 30


def test_mask_is_smooth_and_soft_at_edges():
    c = Compositor()
    for w, h in [(96, 96), (131, 157), (400, 380)]:
        m = c.mask(w, h)
        assert m.shape == (h, w) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() == pytest.approx(1.0)
        assert not m[: h // 2].any()  # nothing above the middle
        assert m[:, 0].max() < 0.05 and m[:, -1].max() < 0.05 and m[-1].max() < 0.1  # fades out at the edges
        assert m[int(0.8 * h), w // 2] == pytest.approx(1.0)
        # no hard step anywhere: neighbouring pixels differ by a small fraction of the full range
        step = max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max())
        assert step < 0.2 and step * min(w, h) < 16
    assert c.mask(131, 157) is c.mask(131, 157)  # cached


@pytest.mark.parametrize("mode", ["box", "feather"])
def test_box_past_the_frame_is_clipped(scene, mode):
    frame, face, _ = scene
    box = (250, 150, 350, 260)  # runs off the right and bottom
    got = Compositor(mode).paste(frame.copy(), face, box)
    assert np.array_equal(got[:150], frame[:150]) and np.array_equal(got[:, :250], frame[:, :250])
    assert not np.array_equal(got[230:240, 270:300], frame[230:240, 270:300])
    # the visible part lines up with an unclipped paste on a bigger canvas
    big = np.zeros((300, 400, 3), np.uint8)
    big[:240, :320] = frame
    ref = Compositor(mode).paste(big, face, box)[:240, :320]
    assert np.array_equal(got, ref)


def test_bad_mode():
    with pytest.raises(ValueError):
        Compositor("soft")

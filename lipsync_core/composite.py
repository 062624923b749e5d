"""Put the generator's 96x96 mouth back into the frame.

`box` mode is the Wav2Lip reference: the whole crop is replaced, which shows a square seam wherever the
model's colours drift. `feather` (default) replaces only what the model regenerates, the lower half of
the crop (its input had that half masked), through a soft alpha mask: eyes and everything outside the
box stay bit-identical, and no edge shows.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from .yuv420 import Yuv420

MODES = ("feather", "box")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class Compositor:
    """`paste(frame, face96, box)` writes the generated face into `frame` in place.

    Feather mask (fractions of the box): 0 above `top`, rising smoothly to 1 by `top + ramp_top`;
    falling to 0 over the last `ramp_side` of the width on each side and the last `ramp_bottom` of the
    height. Masks are cached per box size, so a frame costs one small resize and one blend of the mouth
    region only.
    """

    def __init__(self, mode: str = "feather", top: float = 0.5, ramp_top: float = 0.18,
                 ramp_side: float = 0.2, ramp_bottom: float = 0.1,
                 interpolation: int = cv2.INTER_LINEAR, cache_size: int = 256):
        if mode not in MODES:
            raise ValueError(f"blend mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.top, self.ramp_top, self.ramp_side, self.ramp_bottom = top, ramp_top, ramp_side, ramp_bottom
        self.interpolation = interpolation
        self._cache: dict[tuple[int, int], tuple] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # Rows above floor(source position) that each interpolation reads (linear: none, cubic: 1, Lanczos-4: 3);
    # nearest rounds differently for small boxes, so it gets 2. The test tries every box height up to 400.
    _ROWS_ABOVE = {cv2.INTER_NEAREST: 2, cv2.INTER_LINEAR: 0, cv2.INTER_CUBIC: 1, cv2.INTER_LANCZOS4: 3}

    def first_row_used(self, size: int = 96) -> int:
        """The first row of the generator's size x size face that `paste` can read, for any box size: the
        generator need not compute the rows above it (fast_model). 0 when the whole face is pasted."""
        if self.mode == "box" or self.interpolation not in self._ROWS_ABOVE:
            return 0
        # the mask is 0 down to box fraction `top` (rows strictly below it count); resizing maps that to face
        # row top*size - 0.5, so the first row read is its floor, less the interpolation's taps above
        return max(int(np.floor(self.top * size - 0.5)) - self._ROWS_ABOVE[self.interpolation], 0)

    def mask(self, w: int, h: int) -> np.ndarray:
        """The (h, w) float32 alpha in [0, 1] for a box of that size."""
        return self._weights(w, h)[0]

    def _weights(self, w: int, h: int):
        """(alpha, alpha and 1 - alpha cut to where alpha > 0, that cut (y0, y1, x0, x1)); cached per size."""
        key = (w, h)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # pixel centres in box fractions
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w
        ay = _smoothstep((ys - self.top) / max(self.ramp_top, 1e-6))
        ay *= _smoothstep((1.0 - ys) / max(self.ramp_bottom, 1e-6))
        ax = _smoothstep(np.minimum(xs, 1.0 - xs) / max(self.ramp_side, 1e-6))
        alpha = np.outer(ay, ax).astype(np.float32)
        rows = np.flatnonzero(ay > 0)
        cols = np.flatnonzero(ax > 0)
        if len(rows) == 0 or len(cols) == 0:
            y0 = y1 = x0 = x1 = 0
        else:
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        a = np.ascontiguousarray(alpha[y0:y1, x0:x1])
        entry = (alpha, a, np.ascontiguousarray(1.0 - a), (y0, y1, x0, x1))
        with self._lock:  # frames are pasted from several threads
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)), None)  # oldest first
            self._cache[key] = entry
        return entry

    def paste(self, frame: np.ndarray, face96: np.ndarray, box, colour=None) -> np.ndarray:
        """Blend `face96` (the model's BGR uint8 output for crop `box` = (x1, y1, x2, y2)) into `frame`.

        `frame`: (H, W, 3) uint8 BGR, or with `colour` (a colour.YuvColour) a (3, H, W) uint16 Y'CbCr frame
        (the faithful path: the mouth is converted to the source's matrix and blended at 16 bits), or with a
        yuv420.Yuv420 an 8-bit 4:2:0 frame (blended in its own samples as the BGR path's blend and the encoder's
        conversion would, in the region only).
        Modifies and returns `frame`. A box reaching past the frame is clipped (the face is resized to the
        full box first, so the visible part lines up).
        """
        place = self.region(colour.frame_hw(frame) if colour is not None else frame.shape[:2], box)
        if place is None:
            return frame
        (fy0, fy1, fx0, fx1), (by0, by1, bx0, bx1), (bw, bh) = place
        if face96.dtype != np.uint8:
            face96 = np.clip(face96, 0, 255).astype(np.uint8)
        face = cv2.resize(face96, (bw, bh), interpolation=self.interpolation)
        src = np.ascontiguousarray(face[by0:by1, bx0:bx1])
        if self.mode == "box":
            wa = None
        else:
            _, a, inv, (my0, _, mx0, _) = self._weights(bw, bh)
            wa = np.ascontiguousarray(a[by0 - my0:by1 - my0, bx0 - mx0:bx1 - mx0])
            wb = np.ascontiguousarray(inv[by0 - my0:by1 - my0, bx0 - mx0:bx1 - mx0])
        if isinstance(colour, Yuv420):
            colour.blend(frame, (fy0, fy1, fx0, fx1), src, wa, None if wa is None else wb)
            return frame
        if colour is not None:
            roi = frame[:, fy0:fy1, fx0:fx1]
            new = colour.from_bgr(src)
            if wa is not None:
                new = new * wa + roi.astype(np.float32) * wb
            roi[...] = np.clip(np.rint(new), 0, 65535).astype(np.uint16)
            return frame
        roi = frame[fy0:fy1, fx0:fx1]
        if wa is None:
            roi[...] = src
        else:
            # per-pixel (src*a + roi*(1-a)) in OpenCV's threaded C++ loop, ROI only, rounded to uint8
            roi[...] = cv2.blendLinear(src, np.ascontiguousarray(roi), wa, wb)
        return frame

    def region(self, frame_hw, box):
        """Where `paste` writes for this box: ((y0, y1, x0, x1) in the frame, the same in box coordinates,
        (box width, box height)), or None when nothing is written. The feather mode writes only where its
        mask is above 0 (the mouth rows); both are clipped to the frame."""
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            return None
        fh, fw = int(frame_hw[0]), int(frame_hw[1])
        # visible part of the box, in box coordinates
        ry0, ry1, rx0, rx1 = max(0, -y1), min(bh, fh - y1), max(0, -x1), min(bw, fw - x1)
        if self.mode == "feather":
            _, _, _, (my0, my1, mx0, mx1) = self._weights(bw, bh)
            ry0, ry1, rx0, rx1 = max(ry0, my0), min(ry1, my1), max(rx0, mx0), min(rx1, mx1)
        if ry0 >= ry1 or rx0 >= rx1:
            return None
        return (y1 + ry0, y1 + ry1, x1 + rx0, x1 + rx1), (ry0, ry1, rx0, rx1), (bw, bh)

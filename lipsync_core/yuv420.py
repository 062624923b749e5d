"""8-bit 4:2:0 frames (yuv420p) handled in their own planes: BGR only where the face pipeline looks.

An H.264 result of an 8-bit 4:2:0 source needs no colour conversion outside the mouth: the frames cross both
pipes as yuv420p (half the bytes of BGR), the face crop and the blended mouth are converted here, and every
other sample reaches the encoder as it was decoded (closer to the source than a trip through BGR, which drifts
chroma at colour edges).

The conversions reproduce what ffmpeg's swscale does with the reader's and the encoder's flags (SWS_FLAGS), to
within one level (tests/test_yuv420.py compares them with ffmpeg's own on BT.601, BT.709 and full-range media):
  - up (yuv420p -> bgr24): chroma interpolated linearly, horizontally at luma column x from chroma position
    x/2 - 1/4, vertically at luma row y from y/2 - 1/2 (the last row repeats the one before), edges clamped;
  - down (bgr24 -> yuv420p): chroma of each horizontal pair averaged, then rows filtered (1, 3, 3, 1)/8 around
    each chroma row, edges repeated; luma per pixel.
Both are linear, so the mouth is blended in Y'CbCr (no BGR of the source is made for it) and lands where the BGR
path's blend and encode would; only where the source holds colours outside the RGB cube, which that path clips,
are they kept here.
Matrix and range are the source's tags; untagged sources are read as BT.601 (what swscale does at any size).
"""

from __future__ import annotations

import cv2
import numpy as np

from .colour import matrix_coefficients


def frame_size(frame: np.ndarray) -> tuple[int, int]:
    """(height, width) of an I420 frame (the planes one after another, shape (h * 3 / 2, w))."""
    return frame.shape[0] * 2 // 3, frame.shape[1]


def planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of Y (h, w), Cb and Cr (h/2, w/2) of an I420 frame: writing them writes the frame."""
    h, w = frame_size(frame)
    flat = frame.reshape(-1)
    n, q = h * w, (h // 2) * (w // 2)
    return (flat[:n].reshape(h, w), flat[n:n + q].reshape(h // 2, w // 2),
            flat[n + q:n + 2 * q].reshape(h // 2, w // 2))


def _linear_taps(n: int, positions: np.ndarray):
    """Indices i0, i1 and weight of i1 for linear interpolation at `positions` in a line of n samples."""
    p = np.clip(positions, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (p - i0).astype(np.float32)


def _resize_taps(n: int, size: int):
    """The two source indices (2, size) and their weights (2, size) per output pixel of OpenCV's linear resize of
    n pixels to `size`."""
    pos = (np.arange(size) + 0.5) * (n / size) - 0.5
    pos = np.maximum(pos, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n - 1)
    f = np.where(i0 >= n - 1, 0.0, pos - i0)
    i1 = np.minimum(i0 + 1, n - 1)
    return np.stack([i0, i1]), np.stack([1.0 - f, f]).astype(np.float32)


class Yuv420:
    """The conversions of one source's (width, height) yuv420p frames: `color_space` (VideoInfo.color_space),
    `color_range` ("pc": full)."""

    def __init__(self, width: int, height: int, color_space: str | None = None, color_range: str | None = None):
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p frames need an even size, not {width}x{height}")
        self.width, self.height = int(width), int(height)
        kr, kb = matrix_coefficients(color_space)
        kg = 1.0 - kr - kb
        if color_range == "pc":
            y_scale, c_scale, y_off = 1.0, 1.0, 0.0
        else:  # limited: Y' 16..235, Cb/Cr 16..240
            y_scale, c_scale, y_off = 219.0 / 255.0, 224.0 / 255.0, 16.0
        # rows B, G, R from (Y', Cb, Cr, 1) as stored (offsets folded into the last column)
        m = np.array([[kb, kg, kr],
                      [0.5, -0.5 * kg / (1 - kb), -0.5 * kr / (1 - kb)],
                      [-0.5 * kb / (1 - kr), -0.5 * kg / (1 - kr), 0.5]], np.float64)
        m *= np.array([y_scale, c_scale, c_scale])[:, None]  # Y'CbCr (offsets removed) from BGR 0..255
        offset = np.array([y_off, 128.0, 128.0])
        inv = np.linalg.inv(m)
        self._to_bgr = np.hstack([inv, -(inv @ offset)[:, None]]).astype(np.float32)
        to_yuv = np.hstack([m, offset[:, None]])
        self._to_y = to_yuv[:1].astype(np.float32)  # (1, 4) for cv2.transform on BGR
        self._to_c = to_yuv[1:].astype(np.float32)  # (2, 4): Cb, Cr
        h2 = self.height // 2
        rows = np.arange(self.height) / 2.0 - 0.5
        rows[-1] = rows[-2]  # swscale's last row repeats the one before
        self._rows = _linear_taps(h2, rows)
        self._cols = _linear_taps(self.width // 2, np.arange(self.width) / 2.0 - 0.25)

    def frame_hw(self, frame: np.ndarray) -> tuple[int, int]:
        return frame_size(frame)

    # ---------------------------------------------------------------------------------------------- to BGR

    def _chroma_up(self, frame: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Cb and Cr interpolated to luma rows y0:y1, columns x0:x1: (h, w, 2) float32."""
        _, u, v = planes(frame)
        h2 = self.height // 2
        # chroma rows k0..k1 feed luma rows y0..y1: row 2k+1 is chroma row k, row 2k the mean of k-1 and k
        k0, k1 = max(0, y0 // 2 - 1), min(h2, (y1 + 1) // 2 + 1)
        # one chroma column beyond each side (where the frame has one): OpenCV's 2x linear resize is swscale's
        # horizontal interpolation, and its repeated border then only touches columns cut off below
        left, right = max(0, x0 // 2 - 1), min(self.width // 2, (x1 + 1) // 2 + 1)
        sub = cv2.merge([u[k0:k1, left:right], v[k0:k1, left:right]]).astype(np.float32)
        tall = np.empty((2 * (k1 - k0), right - left, 2), np.float32)
        tall[1::2] = sub  # luma row 2k + 1
        tall[2::2] = sub[:-1] + sub[1:]
        tall[2::2] *= np.float32(0.5)
        lo = 2 * k0  # the luma row tall[0] stands for
        if k0 == 0:
            tall[0] = sub[0]  # the first row: chroma row 0 (the edge is clamped)
        else:
            prev = np.stack([u[k0 - 1, left:right], v[k0 - 1, left:right]], axis=-1).astype(np.float32)
            tall[0] = (prev + sub[0]) * np.float32(0.5)
        if y1 == self.height:  # swscale's last row repeats the one before
            tall[self.height - 1 - lo] = tall[self.height - 2 - lo]
        rows = tall[y0 - lo:y1 - lo]
        wide = cv2.resize(rows, (2 * (right - left), len(rows)), interpolation=cv2.INTER_LINEAR)
        return wide[:, x0 - 2 * left:x1 - 2 * left]

    def region_bgr_float(self, frame: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """BGR of frame[y0:y1, x0:x1] as (h, w, 3) float32, not yet rounded or clipped."""
        y = planes(frame)[0]
        yuv = cv2.merge([y[y0:y1, x0:x1].astype(np.float32), self._chroma_up(frame, y0, y1, x0, x1)])
        return cv2.transform(yuv, self._to_bgr)

    def region_bgr(self, frame: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """BGR uint8 of frame[y0:y1, x0:x1] (clipped to the frame), as ffmpeg's bgr24 decode shows it."""
        y0, y1 = max(0, y0), min(self.height, y1)
        x0, x1 = max(0, x0), min(self.width, x1)
        if y0 >= y1 or x0 >= x1:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        # rounded and saturated to 0..255 in OpenCV's loops (negatives were clipped to 0 first)
        return cv2.convertScaleAbs(cv2.max(self.region_bgr_float(frame, y0, y1, x0, x1), 0.0))

    def resized_bgr(self, frame: np.ndarray, box, size: int) -> np.ndarray:
        """frame[y1:y2, x1:x2] (box = (x1, y1, x2, y2), clipped to the frame) as BGR resized to size x size, as
        cv2.resize(..., INTER_LINEAR) makes it from the decoder's BGR (within a level): only the pixels that
        resize reads are converted."""
        x1, y1, x2, y2 = (int(v) for v in box)
        x1, x2 = max(0, x1), min(self.width, x2)
        y1, y2 = max(0, y1), min(self.height, y2)
        if x1 >= x2 or y1 >= y2:
            return np.zeros((size, size, 3), np.uint8)
        (ry, fy), (rx, fx) = _resize_taps(y2 - y1, size), _resize_taps(x2 - x1, size)
        ys, xs = ry + y1, rx + x1  # (2, size): the two rows / columns each output pixel reads
        y, u, v = planes(frame)
        rows, cols = ys.reshape(-1), xs.reshape(-1)
        grid = np.ix_(rows, cols)
        r0, r1, rf = (a[rows] for a in self._rows)
        c0, c1, cf = (a[cols] for a in self._cols)
        chans = [y[grid].astype(np.float32)]
        for plane in (u, v):
            top = plane[np.ix_(r0, c0)] * (1 - cf) + plane[np.ix_(r0, c1)] * cf
            bottom = plane[np.ix_(r1, c0)] * (1 - cf) + plane[np.ix_(r1, c1)] * cf
            chans.append((top * (1 - rf[:, None]) + bottom * rf[:, None]).astype(np.float32))
        bgr = cv2.transform(cv2.merge(chans), self._to_bgr)
        bgr = cv2.convertScaleAbs(cv2.max(bgr, 0.0)).astype(np.float32)  # the decoder's uint8 pixels
        g = bgr.reshape(2, size, 2, size, 3)  # [row tap, y, column tap, x]
        wx = [np.ascontiguousarray(np.broadcast_to(fx[j], (size, size))) for j in (0, 1)]
        wy = [np.ascontiguousarray(np.broadcast_to(fy[i][:, None], (size, size))) for i in (0, 1)]
        top, bottom = (cv2.blendLinear(np.ascontiguousarray(g[i, :, 0]), np.ascontiguousarray(g[i, :, 1]), *wx)
                       for i in (0, 1))
        return cv2.convertScaleAbs(cv2.blendLinear(top, bottom, *wy))

    def to_bgr(self, frame: np.ndarray) -> np.ndarray:
        """The whole frame as BGR uint8 (H, W, 3)."""
        return self.region_bgr(frame, 0, self.height, 0, self.width)

    # ------------------------------------------------------------------------------------------- write back

    def blend(self, frame: np.ndarray, region, src: np.ndarray, alpha: np.ndarray | None = None,
              inverse: np.ndarray | None = None) -> None:
        """Blend `src` (BGR uint8 of region = (y0, y1, x0, x1)) into the frame with weights `alpha` ((h, w)
        float32 in [0, 1]; None: replace) and `inverse` (1 - alpha), as the BGR path's blend followed by the
        encoder's conversion would, in the region's own samples only.

        Both conversions are linear, so the blend runs on Y'CbCr: luma per pixel from the source's own luma, chroma
        blended at full size with the source's chroma as the decoder interpolates it, then filtered down as the
        encoder does (horizontal pairs averaged, rows 2k-1, 2k, 2k+1, 2k+2 weighted 1, 3, 3, 1). Samples outside
        the region and the chroma samples whose filter does not reach it stay as decoded."""
        fy0, fy1, fx0, fx1 = region
        h = self.height
        y, u, v = planes(frame)
        face = src.astype(np.float32)
        lum = cv2.transform(face, self._to_y)
        roi = y[fy0:fy1, fx0:fx1]
        if alpha is not None:
            inverse = np.float32(1.0) - alpha if inverse is None else inverse
            lum = cv2.blendLinear(lum, roi.astype(np.float32), alpha, inverse)
        roi[...] = cv2.convertScaleAbs(cv2.max(lum, 0.0))
        # chroma samples whose filter reads the region: columns by pairs, rows by the 4-row filter, and the luma
        # window those samples read (rows 2k-1 .. 2k+2), inside the frame
        ky0, ky1 = max(0, (fy0 - 1) // 2), min(h // 2, fy1 // 2 + 1)
        kx0, kx1 = fx0 // 2, (fx1 + 1) // 2
        wy0, wy1 = max(0, 2 * ky0 - 1), min(h, 2 * ky1 + 1)
        wx0, wx1 = 2 * kx0, 2 * kx1
        chroma = self._chroma_up(frame, wy0, wy1, wx0, wx1)  # (rows, cols, 2): what the decoder shows
        ry0, ry1, rx0, rx1 = fy0 - wy0, fy1 - wy0, fx0 - wx0, fx1 - wx0
        new = cv2.transform(face, self._to_c)
        if alpha is not None:
            new = cv2.blendLinear(new, np.ascontiguousarray(chroma[ry0:ry1, rx0:rx1]), alpha, inverse)
        chroma[ry0:ry1, rx0:rx1] = new
        rows = np.clip(np.arange(2 * ky0 - 1, 2 * ky1 + 1), 0, h - 1) - wy0
        picked = chroma[rows]
        pairs = cv2.resize(picked, (picked.shape[1] // 2, len(rows)), interpolation=cv2.INTER_AREA)
        filt = pairs[0:-3:2] + pairs[3::2]
        filt += np.float32(3.0) * (pairs[1:-2:2] + pairs[2:-1:2])
        filt *= np.float32(0.125)
        c = cv2.convertScaleAbs(cv2.max(filt, 0.0))
        u[ky0:ky1, kx0:kx1] = c[..., 0]
        v[ky0:ky1, kx0:kx1] = c[..., 1]

"""Y'CbCr <-> BGR for the planar 16-bit frames (yuv444p16le) of the faithful path.

ProRes and FFV1 results keep the source's samples outside the mouth. A detour through RGB cannot do that: chroma
upsampled for RGB and subsampled again drifts by up to ~20 10-bit levels at colour edges (measured), and colours
outside the RGB gamut clip. So for those codecs frames cross the pipe as the source's own Y'CbCr, chroma repeated
to full size (which subsampling back undoes exactly) and widened to 16 bits; only the face crop the generator
reads and the mouth it returns are converted, here, with the source's matrix and range.
"""

from __future__ import annotations

import numpy as np

# (Kr, Kb) per ffprobe colour matrix name; untagged and BT.601 tags: BT.601 (as swscale reads untagged sources)
_KR_KB = {"bt709": (0.2126, 0.0722), "bt2020nc": (0.2627, 0.0593), "bt2020c": (0.2627, 0.0593),
          "smpte240m": (0.212, 0.087), "fcc": (0.30, 0.11)}
_BT601 = (0.299, 0.114)


def matrix_coefficients(color_space: str | None) -> tuple[float, float]:
    """(Kr, Kb) of a source's matrix tag; untagged and BT.601 tags: BT.601 (as swscale reads untagged sources)."""
    return _KR_KB.get(color_space or "", _BT601)


class YuvColour:
    """The conversion of one source: `color_space` (VideoInfo.color_space) and `color_range` ("pc": full)."""

    def __init__(self, color_space: str | None = None, color_range: str | None = None):
        kr, kb = matrix_coefficients(color_space)
        kg = 1.0 - kr - kb
        # rows: Y', Pb, Pr from B, G, R in [0, 1]
        m = np.array([[kb, kg, kr],
                      [0.5, -0.5 * kg / (1 - kb), -0.5 * kr / (1 - kb)],
                      [-0.5 * kb / (1 - kr), -0.5 * kg / (1 - kr), 0.5]], np.float64)
        if color_range == "pc":
            scale = np.array([65535.0, 65535.0, 65535.0])
            offset = np.array([0.0, 32768.0, 32768.0])
        else:  # limited: Y' 16..235, Cb/Cr 16..240 at 8 bits, shifted left to 16 bits as ffmpeg widens them
            scale = np.array([219.0, 224.0, 224.0]) * 256.0
            offset = np.array([16.0, 128.0, 128.0]) * 256.0
        self._to_yuv = (m * scale[:, None] / 255.0).astype(np.float32)  # from BGR 0..255
        self._offset = offset.astype(np.float32)
        self._to_bgr = np.linalg.inv(m * scale[:, None] / 255.0).astype(np.float32)

    @staticmethod
    def frame_hw(frame: np.ndarray) -> tuple[int, int]:
        """(height, width) of a (3, H, W) frame."""
        return frame.shape[1], frame.shape[2]

    def to_bgr8(self, planes: np.ndarray) -> np.ndarray:
        """(3, h, w) uint16 Y'CbCr -> (h, w, 3) uint8 BGR (rounded, clipped)."""
        yuv = planes.reshape(3, -1).astype(np.float32) - self._offset[:, None]
        bgr = self._to_bgr @ yuv
        out = np.clip(np.rint(bgr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out.T.reshape(planes.shape[1], planes.shape[2], 3))

    def from_bgr(self, bgr: np.ndarray) -> np.ndarray:
        """(h, w, 3) BGR 0..255 (any numeric dtype) -> (3, h, w) float32 Y'CbCr in 16-bit units."""
        h, w = bgr.shape[:2]
        yuv = self._to_yuv @ bgr.reshape(-1, 3).T.astype(np.float32) + self._offset[:, None]
        return yuv.reshape(3, h, w)

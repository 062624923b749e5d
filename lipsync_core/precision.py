"""Which precision the generator keeps, judged against what the result's encoding already does to the same frames.

On the first batch the generator runs in fp32 and in each faster precision the device offers, fastest first
(device.faster_precisions: bf16 on CPUs with native bf16 or fp16 on CUDA, throughout, then in the decoder only);
the first that passes is kept. Each output is blended into copies of the frames, and in the pixels the blend writes (the
mouth) two things are measured: the faster precision's PSNR against fp32, and the encoder's own PSNR on the
fp32 frames (encoded with the result's codec and settings, decoded back). The faster precision is kept when
  - its PSNR is at least MARGIN_DB above the encoder's: its error is then at most a tenth of the error the
    encoding adds anyway (in mean square), so the delivered mouth is within 0.4 dB of an fp32 run's, and
  - no pixel moves by more than MAX_DIFF (in 8-bit levels): PSNR is an average, and a few far-off pixels on
    lips or teeth would show although the average is fine.
A lossless result (FFV1, H.264 at crf 0) keeps fp32 without trying: nothing hides any difference there.
Why the numbers: README (Speed, precision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MARGIN_DB = 10.0  # the faster precision's mouth PSNR must beat the encoder's by this much
MAX_DIFF = 8  # ... and move no pixel by more than this, in 8-bit levels
MEASURE_FRAMES = 12  # at most this many of the first batch's frames are encoded for the comparison
# The encoder's error is measured on a window around the mouth, not the whole frame (at 1080p encoding whole
# frames cost seconds): the mouth plus this much picture on each side, rounded up to whole 16x16 macroblocks, so
# the encoder's blocks and prediction see the same kind of surroundings as in the full frame.
ENCODE_MARGIN = 32


@dataclass(frozen=True)
class Verdict:
    keep_fast: bool
    psnr_fast: float  # the faster precision against fp32, in the mouth (dB; inf when identical)
    psnr_encode: float  # the encoding against its fp32 input, in the same pixels
    max_diff: float  # the faster precision's largest difference from fp32 there, in 8-bit levels
    frames: int

    def describe(self, fast: str, encoding: str) -> str:
        """One log line that says which of the two tests passed, e.g. `precision: keeping fp32 (bf16 vs fp32
        50.0 dB in the mouth >= 44.5 needed (H.264 crf 18 itself 34.5 dB + 10); largest difference 17/255 > cap 8;
        on 12 frame(s))`."""
        verdict = f"using {fast}" if self.keep_fast else "keeping fp32"
        need = self.psnr_encode + MARGIN_DB
        psnr_ok, diff_ok = _passes(self.psnr_fast, self.psnr_encode, self.max_diff)
        why = (f"{fast} vs fp32 {self.psnr_fast:.1f} dB in the mouth {'>=' if psnr_ok else '<'} {need:.1f} needed "
               f"({encoding} itself {self.psnr_encode:.1f} dB + {MARGIN_DB:g}); largest difference "
               f"{self.max_diff:.0f}/255 {'<=' if diff_ok else '>'} cap {MAX_DIFF}; on {self.frames} frame(s)")
        return f"precision: {verdict} ({why})"

    def as_dict(self) -> dict:
        def num(v):
            return None if math.isinf(v) else round(float(v), 2)

        return {"psnr_fast": num(self.psnr_fast), "psnr_encode": num(self.psnr_encode),
                "max_diff": round(float(self.max_diff), 2), "frames": self.frames,
                "margin_db": MARGIN_DB, "max_diff_cap": MAX_DIFF}


def _passes(psnr_fast: float, psnr_encode: float, max_diff: float) -> tuple[bool, bool]:
    """The rule's two tests: (the margin over the encoder's PSNR, the cap on the largest difference)."""
    return psnr_fast >= psnr_encode + MARGIN_DB, max_diff <= MAX_DIFF


def _psnr(sq_err_sum: float, count: int) -> float:
    if count == 0 or sq_err_sum == 0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / (sq_err_sum / count))


def _windows(regions, hw) -> list:
    """One window (oy, ox, h, w) per frame around its region, all the same size (one encode), and `regions`
    rewritten in place into window coordinates; None where a frame has no region."""
    valid = [r for r in regions if r is not None]
    if not valid:
        return [None] * len(regions)
    height, width = hw

    def size(extent, limit):
        return min(limit, -(-(extent + 2 * ENCODE_MARGIN) // 16) * 16)

    hh = size(max(r[1] - r[0] for r in valid), height)
    ww = size(max(r[3] - r[2] for r in valid), width)
    windows = []
    for i, r in enumerate(regions):
        if r is None:
            windows.append(None)
            continue
        y0, y1, x0, x1 = r
        # even origins keep 4:2:0 chroma on the same sample grid as in the frame
        oy = min(max(0, (y0 - ENCODE_MARGIN) // 2 * 2), height - hh)
        ox = min(max(0, (x0 - ENCODE_MARGIN) // 2 * 2), width - ww)
        windows.append((oy, ox, hh, ww))
        regions[i] = (y0 - oy, y1 - oy, x0 - ox, x1 - ox)
    return windows


def _cut(frame, window, planar: bool):
    if window is None:
        return frame
    oy, ox, hh, ww = window
    return frame[:, oy:oy + hh, ox:ox + ww] if planar else frame[oy:oy + hh, ox:ox + ww]


def judge(frames, boxes, exact_faces, fast_faces, compositor, encode, colour=None, encoded=None) -> Verdict:
    """frames: the batch's face frames (BGR uint8 (H, W, 3), or (3, H, W) uint16 Y'CbCr with `colour`), left
    untouched; boxes: their boxes; exact_faces / fast_faces: the generator's fp32 / faster output for them;
    encode(list of frames) -> the same frames as the result file delivers them (media.encode_roundtrip); it is
    given windows around the mouths (ENCODE_MARGIN), all of one size.
    encoded: a list that holds the encoder's round trip of the fp32 frames once made (empty at first): judging
    several precisions on one batch encodes once."""
    n = min(len(frames), MEASURE_FRAMES)
    planar = colour is not None
    scale = 1.0 / 256.0 if planar else 1.0  # 16-bit samples -> 8-bit levels
    exact, regions = [], []
    sq_fast, count, worst = 0.0, 0, 0.0
    for i in range(n):
        a = compositor.paste(frames[i].copy(), exact_faces[i], boxes[i], colour)
        b = compositor.paste(frames[i].copy(), fast_faces[i], boxes[i], colour)
        hw = frames[i].shape[1:] if planar else frames[i].shape[:2]
        place = compositor.region(hw, boxes[i])
        exact.append(a)
        regions.append(place[0] if place else None)
        if place is None:
            continue
        y0, y1, x0, x1 = place[0]
        cut = (slice(None), slice(y0, y1), slice(x0, x1)) if planar else (slice(y0, y1), slice(x0, x1))
        d = (a[cut].astype(np.float64) - b[cut]) * scale
        sq_fast += float(np.sum(d * d))
        count += d.size
        worst = max(worst, float(np.abs(d).max()))
    windows = _windows(regions, exact[0].shape[1:] if planar else exact[0].shape[:2]) if exact else []
    shown = [(_cut(a, w, planar), r) for a, r, w in zip(exact, regions, windows) if r is not None]
    if encoded is None:
        encoded = []
    if not encoded and shown:
        encoded.extend(encode([a for a, _ in shown]))
    sq_enc, count_enc = 0.0, 0
    for (a, r), e in zip(shown, encoded):
        y0, y1, x0, x1 = r
        cut = (slice(None), slice(y0, y1), slice(x0, x1)) if planar else (slice(y0, y1), slice(x0, x1))
        d = (a[cut].astype(np.float64) - e[cut]) * scale
        sq_enc += float(np.sum(d * d))
        count_enc += d.size
    psnr_fast, psnr_enc = _psnr(sq_fast, count), _psnr(sq_enc, count_enc)
    return Verdict(all(_passes(psnr_fast, psnr_enc, worst)), psnr_fast, psnr_enc, worst, n)

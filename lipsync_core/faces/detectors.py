"""Face detectors behind one small interface.

`Detector.detect(frames)` takes BGR uint8 frames and returns, per frame, a float32 (K, 5) array of
`[x1, y1, x2, y2, score]` in that frame's pixels, best score first, clipped to the frame; (0, 5) when no face.
`detect_near(frames, boxes)` (optional, same output) looks only for a face about the size and place of a box
(a face already followed): the tracker uses it between whole-frame detections because it is far cheaper.

Backends (registry `DETECTORS`):
- `sfd`: S3FD, the detector Wav2Lip's training data was cropped with (face-alignment's network class).
  Weights come from a local file; a download is tried only when allowed, with a short timeout.
- `opencv`: the Haar cascade bundled with opencv-python. Offline, nothing to download, less accurate.
`get_detector("auto")` uses sfd when its weights load, else opencv with one warning line.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import weights
from ..errors import LipsyncError

DOWNLOAD_TIMEOUT_S = 5.0

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def nms(dets: np.ndarray, iou_threshold: float, contain_threshold: float | None = None) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Uses the +1 pixel area convention of face-alignment's S3FD code so sfd results match it. With
    `contain_threshold`, a box whose area lies mostly inside a better box is dropped too (Haar nests boxes).
    """
    if len(dets) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2, s = (dets[:, i].astype(np.float64) for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        drop = inter / (areas[i] + areas[rest] - inter) > iou_threshold
        if contain_threshold is not None:
            drop |= inter / np.minimum(areas[i], areas[rest]) > contain_threshold
        order = rest[~drop]
    return np.asarray(keep, np.int64)


def _finish(dets: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip to the frame, drop empty boxes, sort best first, float32 (K, 5)."""
    if len(dets) == 0:
        return _empty()
    dets = np.asarray(dets, np.float32).copy()
    dets[:, [0, 2]] = np.clip(dets[:, [0, 2]], 0, width)
    dets[:, [1, 3]] = np.clip(dets[:, [1, 3]], 0, height)
    dets = dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]
    return dets[np.argsort(-dets[:, 4], kind="stable")]


class Detector:
    """Interface: `detect(frames) -> list of (K, 5) float32`, one per frame, in that frame's pixels.

    A backend may add `detect_near(frames, boxes)`: the faces a whole-frame `detect` would report at about
    the size and place of `boxes[i]` (x1, y1, x2, y2 in frames[i]'s pixels), for far less work. It may miss
    faces elsewhere; the tracker falls back to `detect` when it finds nothing there. `max_every`: the widest
    keyframe gap worth using with this detector (None: keep the caller's `detect_every`).
    """

    name = "base"
    max_every: int | None = None

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# ----------------------------------------------------------------------------------------------- opencv


class OpenCVDetector(Detector):
    """OpenCV's bundled frontal-face Haar cascade: offline, CPU, one frame at a time.

    Geometry: a Haar box is square and sits high (hairline to just above the chin), while S3FD's box, which
    Wav2Lip was trained on, runs from the lower forehead to the chin. By default the box is moved down to
    approximate S3FD: top by `ADJUST_TOP` and bottom by `ADJUST_BOTTOM` of its height (judged by eye on three
    frontal faces, where the chin ends 5-15% of the box height below a Haar box; no S3FD weights were at hand
    to fit it). `adjust=False` keeps the raw cascade box. Score: a monotonic map n/(n+10) of the cascade's
    neighbour count, not a probability.
    """

    name = "opencv"
    CASCADE = "haarcascade_frontalface_default.xml"
    ADJUST_TOP = 0.10
    ADJUST_BOTTOM = 0.10

    def __init__(self, device=None, weights_path=None, log: Log | None = None, allow_download: bool = False,
                 *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_frac: float = 1 / 16,
                 adjust: bool = True) -> None:
        import cv2

        path = os.path.join(cv2.data.haarcascades, self.CASCADE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise LipsyncError(
                f"OpenCV's face cascade could not be loaded from {path}. "
                "Reinstall opencv-python (pip install --force-reinstall 'opencv-python<4.12')."
            )
        self._cv2 = cv2
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_frac = min_size_frac
        self.adjust = adjust

    # detect_near scans only window sizes NEAR_SIZES x the box's side. The cascade's windows that vote for one
    # face span about 0.7-1.4x its box, so these scales give the whole-frame result for that face (measured:
    # identical boxes on 4 clips), while the many small scales that make a whole-frame scan slow are skipped.
    NEAR_SIZES = (0.6, 1.6)

    def detect(self, frames):
        return [self._detect(f) for f in frames]

    def detect_near(self, frames, boxes):
        out = []
        for f, b in zip(frames, boxes):
            side = float(np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0)))
            out.append(self._detect(f, side * self.NEAR_SIZES[0], side * self.NEAR_SIZES[1]))
        return out

    def _detect(self, frame, min_side: float = 0.0, max_side: float | None = None) -> np.ndarray:
        cv2 = self._cv2
        h, w = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        # faces smaller than ~1/16 of the frame are too small to lip-sync; skipping them saves most scales
        m = max(24, int(min(h, w) * self.min_size_frac), int(min_side))
        big = (int(np.ceil(max_side)),) * 2 if max_side is not None else None
        if big is not None and big[0] < m:
            return _empty()
        rects, neighbours = self._cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m), maxSize=big)
        if len(rects) == 0:
            return _empty()
        r = np.asarray(rects, np.float32).reshape(-1, 4)
        n = np.asarray(neighbours, np.float32).reshape(-1)
        bh = r[:, 3]
        dets = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3], n / (n + 10.0)], 1)
        if self.adjust:
            dets[:, 1] += self.ADJUST_TOP * bh
            dets[:, 3] += self.ADJUST_BOTTOM * bh
        dets = dets[nms(dets, 0.3, contain_threshold=0.8)]
        return _finish(dets, w, h)


# ----------------------------------------------------------------------------------------------- sfd


def s3fd_search_paths(weights_path: str | os.PathLike | None = None) -> list[Path]:
    """Where S3FD weights are looked for, in order: the weights registry's places for "s3fd" (checkpoints
    folder, $LIPSYNC_S3FD, torch hub's cache). An explicit path is the only place looked at."""
    if weights_path:
        return [Path(weights_path).expanduser()]
    return weights.search_paths("s3fd")


def find_s3fd_weights(weights_path: str | os.PathLike | None = None) -> Path | None:
    for p in s3fd_search_paths(weights_path):
        if p.is_file():
            return p
    return None


def download_s3fd(timeout: float = DOWNLOAD_TIMEOUT_S, url: str | None = None) -> Path | None:
    """Fetch S3FD into torch hub's cache; None on any failure (offline, slow, bad hash). Never hangs long.

    urlopen's timeout does not cover name resolution, so the connection is opened in a daemon thread and
    abandoned after `timeout`; each later read has the socket timeout.
    """
    import threading
    import urllib.request

    entry = weights.get("s3fd")
    opened: dict = {}

    def connect() -> None:
        try:
            opened["resp"] = urllib.request.urlopen(url or entry.urls[0], timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            opened["error"] = exc

    t = threading.Thread(target=connect, name="s3fd-download", daemon=True)
    t.start()
    t.join(timeout)
    if "resp" not in opened:
        return None
    dest = weights.hub_path("s3fd")
    tmp = None
    try:
        with opened["resp"] as resp:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
            sha = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                while chunk := resp.read(1 << 20):
                    sha.update(chunk)
                    f.write(chunk)
        if not sha.hexdigest().startswith(entry.sha256 or entry.sha256_prefix or ""):
            return None
        os.replace(tmp, dest)
        tmp = None
        return dest
    except Exception:  # noqa: BLE001 (network drop, timeout, disk full: the caller falls back)
        return None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _resolve_device(device) -> str:
    """"auto" and every name the engine accepts, resolved as the generator's device is (device.pick_device)."""
    from ..device import pick_device

    return str(pick_device(device or "cpu"))


def _missing_message(paths: list[Path]) -> str:
    where = ", ".join(str(p) for p in paths)
    entry = weights.get("s3fd")
    return (f"S3FD face detector weights not found (looked at: {where}). Run `python -m lipsync_core weights "
            f"download s3fd`, put {entry.filename} in {weights.default_dir()}, set {entry.env} to its path, "
            "or use the opencv detector.")


class SFDDetector(Detector):
    """S3FD through face-alignment's `s3fd` network, batched, with vectorised box decoding.

    Input colour order follows Wav2Lip's detector (its preprocess.py and inference.py): BGR frames are flipped
    to RGB and the BGR means (104, 117, 123) subtracted, then fed to the net as is. That quirk is what the
    generator's training crops saw, so it is kept. Decoding and thresholds match face-alignment's SFD
    post-processing (scores > 0.5, NMS at IoU 0.3): filtering by score before NMS gives the same boxes, since
    greedy NMS only lets a box be suppressed by a better-scoring one.
    """

    name = "sfd"
    MEAN_BGR = (104.0, 117.0, 123.0)
    VARIANCES = (0.1, 0.2)
    MAX_CANDIDATES = 1000
    # detect_near: a crop NEAR_CROP x the box's side, shrunk so the face is about NEAR_FACE px (S3FD's 64 px
    # anchors fit it well): a small fraction of a detection-width frame, and the net's cost goes with pixels
    NEAR_CROP = 2.0
    NEAR_FACE = 64
    MIN_INPUT = 64  # the net pools 5 times: smaller inputs are padded (with the mean: zeros to the net)
    # on a CPU even a crop pass costs as much as decoding many frames: keyframes may spread to 1 s apart
    # while optical flow predicts them well
    CPU_MAX_EVERY = 25

    def __init__(self, device="cpu", weights_path=None, log: Log | None = None, allow_download: bool = False,
                 *, threshold: float = 0.5, nms_threshold: float = 0.3) -> None:
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd

        paths = s3fd_search_paths(weights_path)
        path = find_s3fd_weights(weights_path)
        if path is None and not weights_path and (allow_download or os.environ.get("LIPSYNC_ALLOW_DOWNLOAD") == "1"):
            path = download_s3fd()
        if path is None:
            raise LipsyncError(_missing_message(paths))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            state = {k.removeprefix("module."): v for k, v in state.items()}
            with torch.device("meta"):  # no random init of 22M weights that are replaced right away
                net = s3fd()
            net.load_state_dict(state, assign=True)
        except Exception as exc:
            why = " ".join(str(exc).split())[:200]  # one line: auto mode logs it as a single warning
            raise LipsyncError(
                f"S3FD weights at {path} could not be loaded ({type(exc).__name__}: {why}). "
                f"Replace the file with a good copy of {weights.get('s3fd').filename} or use the opencv detector."
            ) from exc
        self.device = _resolve_device(device)
        self.weights_path = path
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        self._torch = torch
        self.net = net.to(self.device).eval()
        self._mean = torch.tensor(self.MEAN_BGR, device=self.device).view(1, 3, 1, 1)
        self.max_every = self.CPU_MAX_EVERY if self.device == "cpu" else None

    def detect_near(self, frames, boxes):
        import cv2

        crops, where = [], []
        for f, b in zip(frames, boxes):
            h, w = f.shape[:2]
            side = float(np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0)))
            half = side * self.NEAR_CROP / 2
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            x0, y0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
            x1, y1 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
            if x1 - x0 < 8 or y1 - y0 < 8:  # the box lies outside the frame
                crops.append(None)
                where.append(None)
                continue
            z = min(1.0, self.NEAR_FACE / side)  # never enlarge: a small face is searched at its own size
            crop = f[y0:y1, x0:x1]
            if z < 1.0:
                size = (max(8, round((x1 - x0) * z)), max(8, round((y1 - y0) * z)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            where.append((x0, y0, x1, y1, (x1 - x0) / crop.shape[1], (y1 - y0) / crop.shape[0]))
            ph, pw = max(0, self.MIN_INPUT - crop.shape[0]), max(0, self.MIN_INPUT - crop.shape[1])
            if ph or pw:  # right and bottom only: crop pixels keep their coordinates
                crop = cv2.copyMakeBorder(crop, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.MEAN_BGR)
            crops.append(np.ascontiguousarray(crop))
        found = iter(self.detect([c for c in crops if c is not None]))
        out = []
        for c, wh in zip(crops, where):
            if c is None:
                out.append(_empty())
                continue
            d = next(found).copy()
            x0, y0, x1, y1, sx, sy = wh
            d[:, [0, 2]] = np.clip(d[:, [0, 2]] * sx + x0, x0, x1)  # the clip also drops the padding
            d[:, [1, 3]] = np.clip(d[:, [1, 3]] * sy + y0, y0, y1)
            out.append(_finish(d, x1, y1))
        return out

    def detect(self, frames):
        out: list[np.ndarray | None] = [None] * len(frames)
        # one batch per frame size (a video has one; a caller may mix)
        by_shape: dict[tuple, list[int]] = {}
        for i, f in enumerate(frames):
            by_shape.setdefault(f.shape, []).append(i)
        for idx in by_shape.values():
            for i, dets in zip(idx, self._detect_batch(np.stack([frames[i] for i in idx]))):
                out[i] = dets
        return out  # type: ignore[return-value]

    def _detect_batch(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        try:
            return self._run(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise LipsyncError("The frame is too big for face detection on this GPU. Detect on smaller "
                                   "frames (a lower detection scale) or on the CPU.") from None
            torch.cuda.empty_cache()
            half = len(batch) // 2
            return self._detect_batch(batch[:half]) + self._detect_batch(batch[half:])

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        b, h, w = batch.shape[:3]
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).flip(1).float() - self._mean
            olist = self.net(x)
            boxes_l, scores_l, image_l = [], [], []
            v0, v1 = self.VARIANCES
            for lvl in range(len(olist) // 2):
                conf = torch.softmax(olist[2 * lvl], dim=1)[:, 1]  # (B, H, W)
                loc = olist[2 * lvl + 1]  # (B, 4, H, W)
                bi, yi, xi = torch.nonzero(conf > self.threshold, as_tuple=True)
                if bi.numel() == 0:
                    continue
                stride = 2 ** (lvl + 2)
                size = 4.0 * stride  # anchor side
                off = loc[bi, :, yi, xi]  # (M, 4)
                cx = stride / 2 + xi.float() * stride + off[:, 0] * v0 * size
                cy = stride / 2 + yi.float() * stride + off[:, 1] * v0 * size
                bw = size * torch.exp(off[:, 2] * v1)
                bh = size * torch.exp(off[:, 3] * v1)
                boxes_l.append(torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
                scores_l.append(conf[bi, yi, xi])
                image_l.append(bi)
            if not boxes_l:
                return [_empty() for _ in range(b)]
            dets = torch.cat([torch.cat(boxes_l), torch.cat(scores_l)[:, None]], 1).float().cpu().numpy()
            image = torch.cat(image_l).cpu().numpy()
        out = []
        for i in range(b):
            d = dets[image == i]
            if len(d) > self.MAX_CANDIDATES:  # bounds NMS time; a real face yields a few dozen
                d = d[np.argsort(-d[:, 4], kind="stable")[:self.MAX_CANDIDATES]]
            out.append(_finish(d[nms(d, self.nms_threshold)], w, h))
        return out


# ----------------------------------------------------------------------------------------------- registry

DETECTORS: dict[str, type[Detector]] = {"sfd": SFDDetector, "opencv": OpenCVDetector}
DETECTOR_NAMES = ("auto", *DETECTORS)


def get_detector(name: str = "auto", device="cpu", weights_path=None, log: Log | None = None,
                 allow_download: bool = False) -> Detector:
    """A ready detector. "auto": sfd if its weights load, else opencv after one warning line through `log`."""
    log = log or _stderr_log
    name = (name or "auto").lower()
    if name == "auto":
        try:
            return SFDDetector(device=device, weights_path=weights_path, log=log, allow_download=allow_download)
        except LipsyncError as exc:
            log(f"warning: {exc} Falling back to OpenCV's Haar face detector (less accurate).")
            return OpenCVDetector()
    if name not in DETECTORS:
        raise LipsyncError(f"Unknown face detector {name!r}: choose one of {', '.join(DETECTOR_NAMES)}.")
    return DETECTORS[name](device=device, weights_path=weights_path, log=log, allow_download=allow_download)

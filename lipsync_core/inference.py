"""Batched generator: numpy in, numpy out, the same numbers as the reference inference.py.

Input, as the reference builds it: the 96x96 BGR face crop, a copy with its lower half (rows 48:) zeroed, the
masked copy FIRST then the original along channels (6 channels), divided by 255; mel as (B, 1, 80, 16).
Output: sigmoid * 255, then truncated to uint8 (`astype(np.uint8)`, no rounding) exactly as the reference does.

The division by 255 happens on the device in float32; that is bit-identical to the reference's float64 divide
followed by its float32 cast (x/255 for integer x never lands on a float32 rounding tie), and it lets uint8 cross
the bus instead of float32 (4x less). The NHWC batch permuted to NCHW already has channels_last strides, so the
model, kept in channels_last, reads it without a copy.
"""

from __future__ import annotations

import numpy as np
import torch

from .device import FP32, Precision
from .fast_model import FastWav2Lip
from .model import FACE_SIZE, MEL_BINS, MEL_STEPS, Wav2Lip


def default_batch_size(device: torch.device | str) -> int:
    """Frames per generator call. CPU: 32. The banded generator alone runs about as fast at 16 to 64, but end to
    end 32 beat 16 (fewer hand-overs to the thread that blends and encodes) and 64 only costs memory. GPU: large
    batches keep it busy (activations per frame are small in fp16)."""
    kind = torch.device(device).type
    return {"cuda": 128, "mps": 32}.get(kind, 32)


class FaceGenerator:
    """Wraps a loaded Wav2Lip for inference on `device` in `precision` (device.Precision or a torch dtype; settable
    between calls: the fp32 network and the one in use are kept).

    The network that runs is fast_model.FastWav2Lip built from `model` (BatchNorm folded), computing only the
    output rows from `first_row` down (what the compositor uses: Compositor.first_row_used()); the rows above
    it are returned as the input face's own pixels. first_row=0 computes the whole face like the reference.
    `model` is put in eval mode and left otherwise untouched.
    No torch.compile: measured on the CPU it gained nothing in fp32 and a few percent in bf16-decoder for a
    compile longer than most clips (README, Speed).
    """

    def __init__(
        self,
        model: Wav2Lip,
        device: torch.device | str = "cpu",
        precision: Precision | torch.dtype = FP32,
        *,
        channels_last: bool = True,
        first_row: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.channels_last = channels_last
        model = FastWav2Lip(model.eval(), first_row).to(self.device)
        self.first_row = model.first_row
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # fp32
        self._nets: dict[Precision, torch.nn.Module] = {}
        self.precision = Precision.of(precision)
        # Pinned staging buffers make host<->GPU copies asynchronous; reused and grown as batches require.
        self._pinned = self.device.type == "cuda"
        self._host: dict[str, torch.Tensor] = {}

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, value: Precision | torch.dtype) -> None:
        value = Precision.of(value)
        # keep the fp32 network and the one in use: a converted copy of the weights costs memory
        self._nets = {p: net for p, net in self._nets.items() if p in (FP32, value)}
        if value not in self._nets:
            self._nets[value] = self.model.lowered(value.dtype, value.decoder_only)
        self._precision = value

    # -- input / output ------------------------------------------------------------------------------------

    @staticmethod
    def check_batch(mels: np.ndarray, faces: np.ndarray) -> None:
        if mels.ndim != 3 or mels.shape[1:] != (MEL_BINS, MEL_STEPS):
            raise ValueError(f"mels must be (B, {MEL_BINS}, {MEL_STEPS}), got {mels.shape}")
        if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
            raise ValueError(f"faces must be (B, {FACE_SIZE}, {FACE_SIZE}, 3), got {faces.shape}")
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 BGR, got {faces.dtype}")
        if len(mels) != len(faces):
            raise ValueError(f"{len(mels)} mel windows for {len(faces)} faces")

    def _staged(self, key: str, array: np.ndarray) -> torch.Tensor:
        """`array` as a tensor on the device (through a pinned buffer on CUDA)."""
        src = torch.from_numpy(np.ascontiguousarray(array))
        if not self._pinned:
            return src.to(self.device)
        buf = self._host.get(key)
        if buf is None or buf.shape[0] < src.shape[0] or buf.shape[1:] != src.shape[1:] or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            self._host[key] = buf
        host = buf[: src.shape[0]]
        host.copy_(src)
        return host.to(self.device, non_blocking=True)

    def make_inputs(self, mels: np.ndarray, faces: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(mel (B,1,80,16) float32, faces (B,6,96,96) float32 in [0,1]) on the device, as the reference builds them."""
        self.check_batch(mels, faces)
        mel = self._staged("mel", mels.astype(np.float32, copy=False)).unsqueeze(1)
        face = self._staged("face", faces)  # (B, H, W, 3) uint8
        six = torch.cat((face, face), dim=3)
        six[:, FACE_SIZE // 2 :, :, :3] = 0  # masked copy first: the lower half is what the model must draw
        x = six.permute(0, 3, 1, 2).float() / 255.0  # keeps NHWC strides = channels_last
        if not self.channels_last:
            x = x.contiguous()
        return mel, x

    def _to_uint8(self, pred: torch.Tensor) -> np.ndarray:
        """(B, 3, rows, 96) in [0, 1] on the device -> (B, rows, 96, 3) uint8 on the host."""
        # float32 * 255 then truncation, as the reference's `(pred * 255.).astype(np.uint8)`.
        out = (pred.float() * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        if not self._pinned:
            return out.cpu().numpy() if out.is_contiguous() else out.contiguous().cpu().numpy()
        out = out.contiguous()
        buf = self._host.get("out")
        if buf is None or buf.shape[0] < out.shape[0]:
            buf = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
            self._host["out"] = buf
        host = buf[: out.shape[0]]
        host.copy_(out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()  # the pinned buffer is reused by the next batch

    # -- the call ------------------------------------------------------------------------------------------

    def predict(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """mels (B,80,16) float32 + faces (B,96,96,3) uint8 BGR -> generated faces (B,96,96,3) uint8 BGR."""
        if len(faces) == 0:
            return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        self.check_batch(mels, faces)
        n = len(faces)
        with torch.inference_mode():
            mel, x = self.make_inputs(mels, faces)
            pred = self._nets[self._precision](mel, x)
            rows = self._to_uint8(pred[:n])
        if self.first_row == 0:
            return rows
        out = faces[:n].copy()  # rows above the band: the input's own pixels (the compositor never reads them)
        out[:, self.first_row:] = rows
        return out

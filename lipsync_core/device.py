"""Which device and precision the generator runs with: chosen once per run.

Device: "auto" takes CUDA, then Apple MPS, then the CPU. An explicit "cuda"/"cuda:N"/"mps" that this machine
cannot give raises LipsyncError instead of quietly falling back: someone who picked a GPU and silently gets a
far slower CPU run would rather be told (and "auto" is one word away).

Precision: every run starts in fp32. sync.ClipRenderer then judges the faster precisions on the first batch
(`faster_precisions`: the device's fast type throughout, then only in the decoder; fp16 on CUDA, bf16 on CPUs
with native bf16, AVX512-BF16 or AMX) against what the result's encoding does anyway (precision.py), and keeps
the fastest that passes; lossless results stay fp32. How far a low precision moves the output depends on the
weights (under 1/255 on PyTorch's plain initialisation, tens of levels on the calibrated random checkpoints),
hence a judgement per run, not a default. Without native bf16 it is emulated, slower than fp32, never tried; MPS
runs fp32 (not measured: no Mac here).
LIPSYNC_PRECISION=fp32|bf16|fp16|bf16-decoder|fp16-decoder overrides (and skips the rule); a precision the device
cannot do warns and falls back to fp32.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch

from .errors import LipsyncError


@dataclass(frozen=True)
class Precision:
    """What the generator computes in. `dtype` runs the decoder; the face and audio encoders and the output
    layer run in it too, unless `decoder_only` (then they stay fp32). The encoders see the input pixels and the
    output layer makes them: in bf16 those layers carry most of the error (an 8-bit mantissa cannot hold k/255
    exactly), while the decoder holds most of the arithmetic. Names: fp32, bf16, fp16, bf16-decoder, fp16-decoder."""

    dtype: torch.dtype = torch.float32
    decoder_only: bool = False

    @property
    def name(self) -> str:
        base = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"{base}-decoder" if self.decoder_only and self.dtype != torch.float32 else base

    @classmethod
    def of(cls, value: Precision | torch.dtype | str) -> Precision:
        """A Precision from itself, a torch dtype or a name (see parse_precision)."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, torch.dtype):
            return cls(value)
        parsed = parse_precision(value)
        return parsed if parsed is not None else cls()


FP32 = Precision()
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
PRECISION_NAMES = ("fp32", "bf16", "fp16", "bf16-decoder", "fp16-decoder")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" | "mps" -> torch.device, or LipsyncError saying what to use instead."""
    text = "auto" if name is None else str(name).strip().lower()
    if text in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise LipsyncError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from None

    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise LipsyncError(
                f"Device {text!r} was asked for, but {build} (torch {torch.__version__}). "
                "Use --device auto or cpu, or install a CUDA build of PyTorch and an NVIDIA driver."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise LipsyncError(f"Device {text!r} does not exist: this machine has {count} CUDA GPU(s), "
                               f"cuda:0 to cuda:{count - 1}.")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise LipsyncError(
                f"Device {text!r} (Apple Metal) is not available on this machine. Use --device auto or cpu."
            )
        return device
    raise LipsyncError(f"Device {text!r} is not supported: use auto, cpu, cuda, cuda:N or mps.")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the instructions that make bf16 convolutions faster than fp32 on a CPU."""
    try:
        from torch import cpu as tcpu

        checks = [getattr(tcpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(fn is not None and fn() for fn in checks)
    except (ImportError, AttributeError, RuntimeError):  # private helpers moved: be conservative
        return False


def _supported(device: torch.device, dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # fp16 autocast exists on the CPU but is far slower than fp32 there; emulated bf16 is too.
        return dtype == torch.bfloat16 and cpu_has_native_bf16()
    if device.type == "mps":
        return dtype == torch.float16
    return False


def parse_precision(text: str) -> Precision | None:
    """"fp32", "bf16", "fp16", "bf16-decoder", "fp16-decoder" (and long dtype names) -> Precision; "" or "auto"
    -> None; anything else -> LipsyncError."""
    key = text.strip().lower()
    if key in ("", "auto"):
        return None
    base, _, part = key.partition("-")
    if base not in _DTYPES or part not in ("", "decoder"):
        raise LipsyncError(f"Unknown precision {text!r} (LIPSYNC_PRECISION): use {', '.join(PRECISION_NAMES)} "
                           "or auto.")
    return Precision(_DTYPES[base], part == "decoder")


def faster_precisions(device: torch.device) -> list[Precision]:
    """The precisions worth judging on the first batch, fastest first: the device's fast type throughout, then
    only in the decoder (most of the arithmetic, little of the error). Empty where nothing beats fp32."""
    device = torch.device(device)
    fast = {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type)
    if fast is None or not _supported(device, fast):
        return []
    return [Precision(fast), Precision(fast, decoder_only=True)]


def pick_precision(device: torch.device | str, override: str | None = None) -> Precision | None:
    """The precision forced by `override` or $LIPSYNC_PRECISION, or None: the engine then starts in fp32 and
    judges faster_precisions on the first batch (see sync.ClipRenderer). A forced precision the device cannot
    do warns and runs fp32."""
    device = torch.device(device)
    wanted = parse_precision(override if override is not None else os.environ.get("LIPSYNC_PRECISION", ""))
    if wanted is None:
        return None
    if not _supported(device, wanted.dtype):
        warnings.warn(f"{wanted.name} is not supported (or not useful) on {device.type}; using fp32 instead.",
                      stacklevel=2)
        return FP32
    return wanted

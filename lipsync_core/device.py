"""Which device and precision the generator runs with: chosen once per run.

Device: "auto" takes CUDA, then Apple MPS, then the CPU. An explicit "cuda"/"cuda:N"/"mps" that this machine
cannot give raises LipsyncError instead of quietly falling back: someone who picked a GPU and silently gets a
far slower CPU run would rather be told (and "auto" is one word away).

Precision: fp16 on CUDA; fp32 on MPS (not measured: no Mac here); fp32 to start with on the CPU.
CPU bf16 is faster where the CPU has native bf16 (AVX512-BF16 or AMX; figures in README and the bench), but it
keeps 8 mantissa bits, and over 50 layers how far the output moves depends on the weights: under 1/255 on
PyTorch's plain initialisation, tens of levels on the calibrated random checkpoint the tests use. So
sync.ClipRenderer judges the faster precision (CUDA fp16, CPU bf16) on the first batch against what the
result's encoding does anyway (precision.py), and lossless results run fp32. Without native bf16 it is
emulated, slower than fp32, never tried.
LIPSYNC_PRECISION=fp32|bf16|fp16 overrides (and skips the rule); a precision the device cannot do warns and
falls back.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from .errors import LipsyncError

PRECISIONS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


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


def parse_precision(text: str) -> torch.dtype | None:
    """"fp32"/"bf16"/"fp16" (and long names) -> dtype; "" or "auto" -> None; anything else -> LipsyncError."""
    key = text.strip().lower()
    if key in ("", "auto"):
        return None
    if key not in PRECISIONS:
        raise LipsyncError(f"Unknown precision {text!r} (LIPSYNC_PRECISION): use fp32, bf16, fp16 or auto.")
    return PRECISIONS[key]


# Flip to make native-bf16 CPUs start in bf16 without the first-batch check (see the accuracy note above).
CPU_BF16_BY_DEFAULT = False


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and CPU_BF16_BY_DEFAULT and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def pick_dtype(device: torch.device | str, override: str | None = None) -> torch.dtype:
    """The generator's compute dtype on `device`: `override`, else $LIPSYNC_PRECISION, else the default above."""
    device = torch.device(device)
    wanted = parse_precision(override if override is not None else os.environ.get("LIPSYNC_PRECISION", ""))
    if wanted is None:
        return default_dtype(device)
    if not _supported(device, wanted):
        fallback = default_dtype(device)
        warnings.warn(
            f"{wanted} is not supported (or not useful) on {device.type}; using {fallback} instead.",
            stacklevel=2,
        )
        return fallback
    return wanted


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """One line for logs, e.g. "cpu (bf16)" or "cuda:0 NVIDIA H100 (fp16)"."""
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    name = str(device)
    if device.type == "cuda":
        try:
            name += " " + torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):  # the name is decoration only
            name += " (unnamed)"
    return f"{name} ({short})"

"""Audio decoding and the exact mel spectrogram the Wav2Lip weights were trained on.

Constants are the reference's hparams. The one trap: the reference called `librosa.stft` when its default
padding was *reflect*; librosa 0.10 switched the default to zeros. We compute the STFT ourselves (reflect
padding, periodic Hann, block by block so a long track never builds a huge complex matrix) and build the
Slaney mel filterbank librosa builds (tested equal to librosa.filters.mel); importing librosa would cost a
second on every run.
"""

from __future__ import annotations

import functools
import subprocess

import numpy as np

from .errors import LipsyncError
from .media import ffmpeg_exe, probe_audio

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200  # 12.5 ms: 80 mel frames per second
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
MEL_STEP = 16  # mel frames the generator sees per video frame (0.2 s)
MEL_FPS = SAMPLE_RATE / HOP  # 80.0

_STFT_BLOCK = 4096  # STFT frames per block: bounds memory on long audio


def load_audio(path: str, sr: int = SAMPLE_RATE, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode any audio ffmpeg reads (wav, mp3, m4a, a video's sound) to float32 mono at `sr`.

    Mirrors the reference's `librosa.load(path, sr=16000)`: native-rate float samples, channels averaged,
    then soxr 'HQ' resampling. A 16 kHz mono file comes back with exactly its own samples.
    `offset` may be negative (leading silence); `duration` pads with silence past the file's end.
    """
    import os

    if not os.path.isfile(path):
        raise LipsyncError(f"audio file not found: {path}")
    info = probe_audio(path)  # LipsyncError when the file is unreadable or has no sound
    native_sr, channels = info.sample_rate or sr, max(info.channels, 1)
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    if offset > 0:
        args += ["-ss", f"{offset:.6f}"]
    args += ["-i", path, "-map", "0:a:0", "-vn"]
    if duration is not None:
        args += ["-t", f"{max(0.0, duration + min(offset, 0.0)):.6f}"]
    args += ["-f", "f32le", "-acodec", "pcm_f32le", "-"]
    proc = subprocess.run(args, capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise LipsyncError(f"could not decode the audio of {path}: " + " | ".join(tail))
    wav = np.frombuffer(proc.stdout, np.float32)
    if channels > 1:
        wav = wav[: len(wav) // channels * channels].reshape(-1, channels).mean(axis=1)
    if native_sr != sr and len(wav):
        import soxr

        wav = soxr.resample(wav, native_sr, sr, quality="HQ")
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if offset < 0:
        wav = np.concatenate([np.zeros(int(round(-offset * sr)), np.float32), wav])
    if duration is not None:
        n = int(round(duration * sr))
        wav = wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))
    return wav


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's htk=False): linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    mel = hz / (200.0 / 3)
    log = hz >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), mel * (200.0 / 3))


@functools.cache
def _mel_basis() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular filters on Slaney's scale with Slaney's area normalisation, as the
    reference got from librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # each filter's area is the same
    return weights.astype(np.float32)


@functools.cache
def _window() -> np.ndarray:
    # periodic Hann (scipy get_window('hann', 800, fftbins=True)), what librosa.stft uses
    n = np.arange(WIN)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)).astype(np.float64)


def preemphasis(wav: np.ndarray) -> np.ndarray:
    """y[n] = x[n] - 0.97 x[n-1], i.e. lfilter([1, -0.97], [1], x)."""
    x = np.asarray(wav, np.float64)
    y = np.empty_like(x)
    if len(x):
        y[0] = x[0]
        y[1:] = x[1:] - PREEMPHASIS * x[:-1]
    return y


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| (N_FFT//2+1, T): centred frames, reflect padding, periodic Hann; T = 1 + len(y) // HOP."""
    pad = N_FFT // 2
    if len(y) <= pad:
        raise LipsyncError("the audio is too short: it needs at least 0.2 s of sound")
    yp = np.pad(y, pad, mode="reflect")
    n_frames = 1 + (len(yp) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(yp, N_FFT)[::HOP][:n_frames]
    win = _window()
    out = np.empty((N_FFT // 2 + 1, n_frames), np.float32)
    for s in range(0, n_frames, _STFT_BLOCK):
        block = frames[s : s + _STFT_BLOCK] * win
        out[:, s : s + _STFT_BLOCK] = np.abs(np.fft.rfft(block, axis=1)).T
    return out


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel, (80, T) float32 in [-4, 4], T = 1 + len(wav) // 200."""
    mag = stft_magnitude(preemphasis(wav))
    mel = _mel_basis() @ mag
    min_level = np.float32(10 ** (MIN_LEVEL_DB / 20))  # 1e-5
    s = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    s = np.clip((2 * MAX_ABS) * ((s - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS, -MAX_ABS, MAX_ABS)
    return s.astype(np.float32)


def chunk_starts(n_mel: int, fps: float) -> np.ndarray:
    """Start column of every chunk by the reference's rule (its float arithmetic kept: i * (80 / fps)).

    Chunks run while they fit; the first that would run past the end is replaced by the last 16 columns
    and ends the list.
    """
    mult = 80.0 / fps
    n = int(np.ceil(n_mel / mult)) + 2  # enough that the last start is past the end
    starts = (np.arange(n, dtype=np.float64) * mult).astype(np.int64)
    first_over = int(np.nonzero(starts + MEL_STEP > n_mel)[0][0])
    starts = starts[: first_over + 1]
    starts[-1] = n_mel - MEL_STEP
    return starts


def mel_chunks(mel: np.ndarray, fps: float) -> np.ndarray:
    """(N, 80, 16) chunks, one per video frame, exactly as the reference's inference loop builds them."""
    if mel.shape[1] < MEL_STEP:
        raise LipsyncError("the audio is too short: it needs at least 0.2 s of sound")
    starts = chunk_starts(mel.shape[1], fps)
    idx = starts[:, None] + np.arange(MEL_STEP)[None, :]
    return np.ascontiguousarray(mel[:, idx].transpose(1, 0, 2))


def mel_chunk_at(mel: np.ndarray, frame: int | np.ndarray, fps: float) -> np.ndarray:
    """Chunk(s) for video frame index(es), clamped like the reference's last chunk: (80,16) or (B,80,16)."""
    frames = np.atleast_1d(np.asarray(frame, np.int64))
    if mel.shape[1] < MEL_STEP:  # sound shorter than one window (a cut of a few frames): silence after it
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-MAX_ABS)
    starts = (frames.astype(np.float64) * (80.0 / fps)).astype(np.int64)
    starts = np.minimum(starts, mel.shape[1] - MEL_STEP)
    idx = starts[:, None] + np.arange(MEL_STEP)[None, :]
    out = mel[:, idx].transpose(1, 0, 2)
    return out[0] if np.ndim(frame) == 0 else np.ascontiguousarray(out)

"""Random-weight Wav2Lip checkpoints for the tests, the demo and the bench (no real weights can be had offline).

`write_random_checkpoint(path)` saves the same layout as the reference training script's save_checkpoint:
{"state_dict": <DataParallel's "module."-prefixed keys>, "optimizer": <Adam state_dict>, "global_step": int,
"global_epoch": int}. BatchNorm statistics are calibrated on one random batch and then jittered, so the eval-mode
network neither explodes nor collapses (outputs spread over (0, 1)) and BN is not an identity; residual branches
get small gains so the net is about as smooth in its input as a trained one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from lipsync_core.model import ConvUnit, Wav2Lip


def random_model(seed: int = 0, residual_gain: tuple[float, float] = (0.2, 0.4),
                 calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> Wav2Lip:
    """A Wav2Lip with seeded random weights and non-trivial BN running stats, in eval mode.

    calibration: (mel (B, 1, 80, 16), faces (B, 6, 96, 96)) to set the BN statistics from (default: one random
    batch)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = Wav2Lip().eval()
        for unit in model.modules():
            if isinstance(unit, ConvUnit):
                with torch.no_grad():
                    bn = unit.conv_block[1]
                    # Small residual-branch gains, as trained residual nets have: with gain 1 an untrained
                    # 50-layer net is chaotic (bf16 autocast moves its outputs by up to 41/255, 12/255 here),
                    # which would measure the random net, not the precision or the code.
                    bn.weight.uniform_(*residual_gain) if unit.residual else bn.weight.uniform_(0.8, 1.2)
                    bn.bias.normal_(0.0, 0.05)
        # Calibrate every BN on one random batch in a single eval pass (cheaper than a train-mode pass):
        # a pre-hook sets each layer's running stats from its actual input just before it normalises it.
        def calibrate(bn, args):
            x = args[0]
            bn.running_mean.copy_(x.mean((0, 2, 3)))
            bn.running_var.copy_(x.var((0, 2, 3)))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        with torch.no_grad():
            model(*(calibration or (torch.randn(4, 1, 80, 16), torch.rand(4, 6, 96, 96))))
            for h in hooks:
                h.remove()
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):  # jitter: eval must not equal batch statistics
                    m.running_mean.add_(torch.randn_like(m.running_mean) * 0.02)
                    m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
                    m.num_batches_tracked.fill_(int(torch.randint(1000, 100000, ()).item()))
    return model.eval()


def face_and_speech_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(mel, faces) as the engine feeds the generator, from made media: astronaut face crops and spoken words
    (espeak-ng; a tone without it)."""
    import tempfile

    import cv2

    from lipsync_core import audio as A
    from tools import sample_media

    frames = sample_media.astronaut_frames(n)
    faces = np.stack([cv2.resize(f[60:200, 100:220], (96, 96)) for f in frames])
    with tempfile.TemporaryDirectory() as d:
        wav = sample_media.speech_wav(Path(d) / "s.wav", seconds=max(1.0, n / 25 + 0.5))
        mel = A.melspectrogram(A.load_audio(str(wav)))
    mels = A.mel_chunk_at(mel, np.arange(n), 25.0)
    masked = faces.copy()
    masked[:, 48:] = 0
    x = torch.from_numpy(np.concatenate((masked, faces), axis=3)).permute(0, 3, 1, 2).float() / 255.0
    return torch.from_numpy(mels).float().unsqueeze(1), x


def trained_like_model(seed: int = 0, spread: float = 0.1, residual_gain: tuple[float, float] = (0.2, 0.4)) -> Wav2Lip:
    """random_model with BN statistics set from real face crops and speech, and the last layer scaled so the
    mouth it draws spreads like a trained generator's (output standard deviation `spread` around 0.5, not the
    random net's 0.33 over 0..1). Larger residual gains make the net more chaotic, so lower precisions move its
    output further: the precision tests use one of each."""
    calibration = face_and_speech_batch()
    model = random_model(seed, residual_gain, calibration)
    conv = model.output_block[-2]  # the 1x1 convolution before the sigmoid
    logits = []
    hook = conv.register_forward_hook(lambda m, a, out: logits.append(out))
    with torch.no_grad():
        model(*calibration)
        hook.remove()
        z = logits[0][:, :, 48:]  # the rows the feather blend uses
        # sigmoid'(0) = 1/4: a logit spread of 4 * spread gives about that spread around 0.5
        k = 4.0 * spread / float(z.std())
        conv.weight.mul_(k)
        conv.bias.mul_(k).sub_(k * z.mean((0, 2, 3)))
    return model.eval()


def plain_init_model(seed: int = 0) -> Wav2Lip:
    """Wav2Lip() exactly as PyTorch initialises it (BN: running mean 0, var 1). Its activations shrink layer by
    layer, so its output is a flat grey near 0.5 and bf16 moves it by under 1/255: the kind of random
    checkpoint on which the engine's first-batch check picks bf16 (the speed issue's own figures were taken
    on one). The benchmark uses it to show that path; tests use random_model, which is far harder on bf16."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Wav2Lip().eval()


@functools.lru_cache(maxsize=2)
def cached_random_model(seed: int) -> Wav2Lip:
    """random_model(seed), built once per process (it costs seconds): shared, so do not modify it."""
    return random_model(seed)


def _adam_state(model: Wav2Lip, full: bool) -> dict:
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    if full:  # what a trained checkpoint carries: step + both moments per parameter (3x the file size)
        for p in params:
            opt.state[p] = {
                "step": torch.tensor(float(123456)),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
    return opt.state_dict()


def write_random_checkpoint(
    path: str | Path,
    seed: int = 0,
    fmt: str = "official",
    *,
    full_optimizer: bool = False,
    legacy_format: bool = False,
    plain_init: bool = False,
    model: Wav2Lip | None = None,
) -> Path:
    """Save a random-weight Wav2Lip to `path`.

    fmt "official": the training script's dict with "module." prefixes; "bare": just the state dict.
    full_optimizer: include Adam moments like a real training checkpoint (~435 MB instead of ~145 MB).
    legacy_format: the pre-1.6 (non-zip) torch.save format that old checkpoints use.
    plain_init: PyTorch's own initialisation (plain_init_model) instead of the calibrated random_model.
    model: save this model instead (e.g. trained_like_model(...)).
    """
    if fmt not in ("official", "bare"):
        raise ValueError(f"fmt must be 'official' or 'bare', not {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = plain_init_model(seed) if plain_init else cached_random_model(seed)
    if fmt == "bare":
        payload = model.state_dict()
    else:
        # DataParallel works without a GPU and gives the exact "module." keys (and metadata) training saved.
        payload = {
            "state_dict": torch.nn.DataParallel(model).state_dict(),
            "optimizer": _adam_state(model, full_optimizer),
            "global_step": 250000 + seed,
            "global_epoch": 400 + seed,
        }
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    return path


_SHARED: dict[tuple, Path] = {}


def shared_checkpoint(tmp_path_factory, fmt: str = "official", seed: int = 0) -> Path:
    """One random checkpoint per (fmt, seed) per pytest session, shared by every test module that asks
    (a session fixture defined in two modules would build it twice). Treat the file as read-only."""
    key = (fmt, seed)
    path = _SHARED.get(key)
    if path is None or not path.is_file():
        path = write_random_checkpoint(tmp_path_factory.getbasetemp() / f"wav2lip_random_{fmt}_{seed}.pth", seed, fmt)
        _SHARED[key] = path
    return path


def reference_predict(net: Wav2Lip, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The reference inference.py's numbers for one batch: torch.FloatTensor of the transposed numpy batch
    (masked copy first, /255 in float64), the plain model as loaded, no_grad, then (pred * 255.).astype(uint8)."""
    masked = faces.copy()
    masked[:, 48:] = 0
    img = np.concatenate((masked, faces), axis=3) / 255.0
    img = torch.FloatTensor(np.transpose(img, (0, 3, 1, 2)))
    mel = torch.FloatTensor(np.transpose(np.reshape(mels, [len(mels), 80, 16, 1]), (0, 3, 1, 2)))
    with torch.no_grad():
        pred = net(mel, img)
    return (pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)

"""The generator rewritten for inference: the same numbers as model.Wav2Lip, with less work.

Two exact savings (within float rounding: a truncated uint8 level flips on a handful of pixels):

* BatchNorm folded into the convolution before it. In eval mode BN is a per-channel affine map, so
  conv -> BN equals one conv with scaled weights and a shifted bias; that saves a full pass over every
  activation, and the ReLU and residual add then run in place.
* Only the output rows the compositor uses. The feather blend takes the lower half of the 96x96 face; the
  decoder's top rows at 96, 48 and 24 pixels feed only the discarded upper half, and those stages hold most of
  the network's arithmetic. Convolutions are local, so the decoder runs on a band of rows that starts just
  high enough for every kept row to see exactly the inputs it sees in the full network.

Lower precision by stage: `lowered(dtype, decoder_only)` gives a copy computing in bf16/fp16, either throughout
or in the decoder only, with the encoders and the output layer kept in fp32. The decoder holds most of the
arithmetic; the encoders see the input pixels and the output layer writes them, and there a low precision costs
the most (bf16 cannot hold k/255 exactly): on the calibrated random weights the decoder alone in bf16 moves the
output about a quarter as far as bf16 throughout, at most of its speed (figures: README, Speed).

Why the band is exact: a 3x3 convolution run on rows [s, H) of its input (zero-padded at the cut) is wrong
only in its first output row; n of them in a row are wrong in the first n rows. A stride-2 transposed
convolution (padding 1, output padding 1) run on rows [s, H) gives exactly rows [2s, 2H) of the full output:
output row o draws on input rows (o - 1) / 2 to (o + 1) / 2. So each decoder stage, which is one transposed
convolution then n residual 3x3 units, is exact from row 2*s + n, and `row_plan` picks the latest start per
stage that keeps the requested rows exact. The encoder always sees the whole face: its deepest features see
every pixel.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .model import FACE_SIZE, ConvUnit, Wav2Lip


class FoldedUnit(nn.Module):
    """A ConvUnit with its BatchNorm folded into the convolution: conv -> [+ input] -> ReLU."""

    def __init__(self, unit: ConvUnit) -> None:
        super().__init__()
        conv, bn = unit.conv_block[0], unit.conv_block[1]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
            shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
            weight = conv.weight * scale.view(shape)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            bias = (bias - bn.running_mean) * scale + bn.bias
        extra = {"output_padding": conv.output_padding} if isinstance(conv, nn.ConvTranspose2d) else {}
        with torch.device("meta"):  # no random init: both tensors are assigned next
            folded = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                **extra)
        folded.weight, folded.bias = nn.Parameter(weight, False), nn.Parameter(bias, False)
        self.conv = folded
        self.residual = unit.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.residual:
            y += x
        return y.relu_()


def _fold(module: nn.Module) -> nn.Module:
    """`module` with every ConvUnit replaced by a FoldedUnit (containers rebuilt, other layers shared)."""
    if isinstance(module, ConvUnit):
        return FoldedUnit(module)
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(_fold(m) for m in module))
    if isinstance(module, nn.ModuleList):
        return nn.ModuleList(_fold(m) for m in module)
    return module


# Decoder blocks that start with a stride-2 transposed conv (3 -> 6 -> 12 -> 24 -> 48 -> 96); blocks 0 and 1
# (1x1 and 3x3 maps) always run whole.
_BANDED = (2, 3, 4, 5, 6)


def row_plan(first_row: int, residuals: dict[int, int]) -> dict[int, int]:
    """Decoder block index -> first row of that block's output (after its skip concat) to compute, such that
    output rows >= first_row come out exact. residuals: block -> number of 3x3 units after its up-conv."""
    first_row = min(max(int(first_row), 0), FACE_SIZE - 1)
    plan = {}
    need = max(first_row - 1, 0)  # the output block's 3x3 unit is wrong in the first row of its band
    for block in reversed(_BANDED):
        plan[block] = need
        need = max((need - residuals[block]) // 2, 0) if need > 0 else 0
    return plan


class FastWav2Lip(nn.Module):
    """Inference-only Wav2Lip: forward(mel, faces) -> (B, 3, FACE_SIZE - first_row, FACE_SIZE), the output
    rows [first_row, 96) of Wav2Lip(mel, faces). first_row=0 gives the whole face."""

    def __init__(self, model: Wav2Lip, first_row: int = 0) -> None:
        super().__init__()
        self.face_encoder_blocks = _fold(model.face_encoder_blocks)
        self.audio_encoder = _fold(model.audio_encoder)
        self.face_decoder_blocks = _fold(model.face_decoder_blocks)
        self.output_block = _fold(model.output_block)
        self.first_row = min(max(int(first_row), 0), FACE_SIZE - 1)
        residuals = {i: len(self.face_decoder_blocks[i]) - 1 for i in _BANDED}
        self.plan = row_plan(self.first_row, residuals) if self.first_row > 0 else {}
        # compute dtype of the encoders (face and audio), the decoder and the output block
        self.stage_dtypes = (torch.float32, torch.float32, torch.float32)
        self.eval()

    def lowered(self, dtype: torch.dtype, decoder_only: bool = False) -> FastWav2Lip:
        """A copy computing in `dtype`: throughout, or only in the decoder. Stages kept in fp32 share this
        model's weights; converted stages hold their own copy (converted once, not on every call)."""
        if dtype == torch.float32:
            return self
        new = copy.copy(self)
        new._modules = dict(self._modules)  # a shallow copy would share (and mutate) the submodule table
        stages = ("face_decoder_blocks",) if decoder_only else (
            "face_encoder_blocks", "audio_encoder", "face_decoder_blocks", "output_block")
        for name in stages:
            new._modules[name] = copy.deepcopy(self._modules[name]).to(dtype)
        keep = torch.float32 if decoder_only else dtype
        new.stage_dtypes = (keep, dtype, keep)
        return new

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        encoder, decoder, output = self.stage_dtypes
        skips = []
        x = faces.to(encoder)
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)

        x = self.audio_encoder(mel.to(encoder)).to(decoder)
        start = 0  # first row of the full map that x holds
        for i, (block, skip) in enumerate(zip(self.face_decoder_blocks, reversed(skips))):
            y = block(x)
            if i in self.plan:
                offset = 2 * start  # a stride-2 up-conv of rows [start, H) gives rows [2*start, 2H)
                start = self.plan[i]
                y, skip = y[:, :, start - offset:], skip[:, :, start:]
            x = torch.cat((y, skip.to(decoder)), dim=1)
        out = self.output_block(x.to(output))
        return out[:, :, self.first_row - start:]

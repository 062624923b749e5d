"""The Wav2Lip generator and a checked checkpoint loader.

The module tree (names and order) mirrors the published checkpoints, so wav2lip.pth and wav2lip_gan.pth load
unchanged: every conv unit holds `conv_block = Sequential(conv, BatchNorm2d)` followed by a ReLU, giving 7 state
tensors per unit (conv weight/bias, BN weight/bias/running_mean/running_var/num_batches_tracked).

Loading never unpickles code: `torch.load(weights_only=True)`, and every refusal is a LipsyncError that says
what to do instead of a torch traceback.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import LipsyncError

# Shapes the model works on (also used by inference.py).
FACE_SIZE = 96
MEL_BINS = 80
MEL_STEPS = 16

# The reference checkpoints: 352 tensors, 36,298,035 numbers (parameters + BN buffers).
N_TENSORS = 352

GET_WEIGHTS_HINT = "Get the real file with `python -m lipsync_core weights download wav2lip_gan` (or wav2lip)."


class ConvUnit(nn.Module):
    """conv (or transposed conv) -> BatchNorm -> [+ input] -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int | tuple[int, int] = 1,
        padding: int = 0,
        *,
        residual: bool = False,
        transpose: bool = False,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return self.act(y)


def _down(cin: int, cout: int, stride, n_res: int) -> list[nn.Module]:
    """A strided 3x3 unit that changes width, then `n_res` residual 3x3 units."""
    units: list[nn.Module] = [ConvUnit(cin, cout, 3, stride, 1)]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
    return units


def _up(cin: int, cout: int, n_res: int, *, stride: int = 2, padding: int = 1, output_padding: int = 1):
    """A transposed 3x3 unit (x2 upsampling by default), then `n_res` residual 3x3 units."""
    units: list[nn.Module] = [
        ConvUnit(cin, cout, 3, stride, padding, transpose=True, output_padding=output_padding)
    ]
    units += [ConvUnit(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
    return nn.Sequential(*units)


def _bottleneck(cin: int) -> list[nn.Module]:
    """3x3 valid conv to 1x1 spatial, then a 1x1 conv: the 512-d embedding."""
    return [ConvUnit(cin, 512, 3, 1, 0), ConvUnit(512, 512, 1, 1, 0)]


class Wav2Lip(nn.Module):
    """Generator: mel (B,1,80,16) + faces (B,6,96,96) [masked BGR, reference BGR] -> (B,3,96,96) in [0,1]."""

    def __init__(self) -> None:
        super().__init__()
        # Identity encoder: 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1; every block's output is a skip feature.
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(6, 16, 7, 1, 3)),
                nn.Sequential(*_down(16, 32, 2, 2)),
                nn.Sequential(*_down(32, 64, 2, 3)),
                nn.Sequential(*_down(64, 128, 2, 2)),
                nn.Sequential(*_down(128, 256, 2, 2)),
                nn.Sequential(*_down(256, 512, 2, 1)),
                nn.Sequential(*_bottleneck(512)),
            ]
        )
        # Speech encoder: 80x16 mel -> 27x16 -> 9x6 -> 3x3 -> 1x1, one flat Sequential (indices 0..12).
        self.audio_encoder = nn.Sequential(
            *_down(1, 32, 1, 2),
            *_down(32, 64, (3, 1), 2),
            *_down(64, 128, 3, 2),
            *_down(128, 256, (3, 2), 1),
            *_bottleneck(256),
        )
        # Decoder: each block's output is concatenated with the matching encoder feature (hence the odd widths).
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvUnit(512, 512, 1, 1, 0)),
                _up(1024, 512, 1, stride=1, padding=0, output_padding=0),  # 1 -> 3
                _up(1024, 512, 2),  # 3 -> 6
                _up(768, 384, 2),  # 6 -> 12
                _up(512, 256, 2),  # 12 -> 24
                _up(320, 128, 2),  # 24 -> 48
                _up(160, 64, 2),  # 48 -> 96
            ]
        )
        self.output_block = nn.Sequential(
            ConvUnit(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)

        x = self.audio_encoder(mel)
        for block, skip in zip(self.face_decoder_blocks, reversed(skips)):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor a Wav2Lip checkpoint holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        template = Wav2Lip()
    return {k: tuple(v.shape) for k, v in template.state_dict().items()}


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> object:
    """torch.load without running code; every way a file can be unusable becomes a LipsyncError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LipsyncError(f"The {what} {path} does not exist. {GET_WEIGHTS_HINT}")
    if path.is_dir():
        raise LipsyncError(f"The {what} {path} is a folder; pass the .pth file inside it.")
    if path.stat().st_size == 0:
        raise LipsyncError(f"The {what} {path} is empty (an interrupted download?): delete it and re-download it.")
    with open(path, "rb") as fh:
        head = fh.read(16)
    legacy = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if not head.startswith(_ZIP_MAGIC) and not legacy:
        shown = head[:12].decode("latin-1").encode("unicode_escape").decode("ascii")
        hint = " (a web page saved instead of the file?)" if head.lstrip()[:1] == b"<" else ""
        raise LipsyncError(
            f"The {what} {path} is not a PyTorch checkpoint: it starts with '{shown}'{hint}. "
            "Delete it and re-download it."
        )
    try:
        with warnings.catch_warnings():  # torch warns before refusing a TorchScript file; we explain instead
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _carries_code(path, str(exc)):
            raise LipsyncError(
                f"The {what} {path} is not a plain weights file: it carries code that would run when loaded, "
                "so it was not loaded (nothing in it ran). Do not fetch it again from the same place: use the "
                "official wav2lip.pth / wav2lip_gan.pth from a source you trust. "
                + GET_WEIGHTS_HINT
            ) from None
        raise _corrupt(path, what, exc) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as exc:
        if "TorchScript" in str(exc):
            raise LipsyncError(
                f"The {what} {path} is a TorchScript export, not the original PyTorch checkpoint. "
                + GET_WEIGHTS_HINT
            ) from None
        raise _corrupt(path, what, exc) from None


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6; before it, a pickle (PROTO opcode 0x80, protocol 2-5)
# Pickle opcodes that import or call something: the ways a pickle runs code.
_CODE_OPCODES = {ord(c) for c in "ciRob"} | {0x81, 0x82, 0x83, 0x84, 0x92, 0x93}


# Globals a plain checkpoint may name besides torch's own (what torch's weights-only loader allows too).
_PLAIN_GLOBALS = {"collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set",
                  "builtins.bytearray", "builtins.complex"}
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _carries_code(path: Path, text: str) -> bool:
    """After torch's weights-only loader refused a file: was it built to run something (a refused global or a
    code-calling opcode), or is the byte stream broken? torch's wording changes between versions, so its
    message is read loosely and the pickle's own imports are checked as well."""
    low = text.lower()
    if "unsupported global" in low or "allowed global" in low or "is blocked" in low:
        return True
    match = re.search(r"unsupported operand (\d+)", low)
    if match and int(match.group(1)) in _CODE_OPCODES:
        return True
    return any(not _plain_global(name) for name in _pickle_globals(path))


def _plain_global(name: str) -> bool:
    return name == "torch" or name.startswith("torch.") or name in _PLAIN_GLOBALS


def _pickle_globals(path: Path) -> list[str]:
    """Every "module.name" the checkpoint's pickle imports, read from its opcodes without running any (as far
    as the stream can be read: a broken stream yields what came before the break)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                streams = [archive.read(names[0])] if names else []
        else:
            # torch's legacy format: magic number, protocol, sys info and the object pickled one after another,
            # then raw tensor bytes
            streams = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return []
    found: list[str] = []
    for data in streams:
        stream = io.BytesIO(data)
        for _ in range(4):
            strings: list = []
            memo: dict = {}
            last = None
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    name = op.name
                    if name in _STRING_OPS:
                        last = arg.decode("latin-1") if isinstance(arg, bytes) else arg
                        strings.append(last)
                    elif name == "MEMOIZE":
                        memo[len(memo)] = last
                    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = last
                    elif name in ("GET", "BINGET", "LONG_BINGET"):
                        last = memo.get(arg)
                        strings.append(last)
                    elif name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                    elif name == "STACK_GLOBAL":
                        module, attr = (strings[-2:] if len(strings) >= 2 else ["?", "?"])
                        found.append(f"{module}.{attr}")
                    else:
                        last = None
            except Exception:  # noqa: BLE001 (a broken stream: keep what was read before the break)
                break
            if stream.tell() >= len(data):
                break
    return found


def _corrupt(path: Path, what: str, exc: BaseException) -> LipsyncError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
    return LipsyncError(
        f"The {what} {path} is truncated or corrupt and cannot be read ({first}). "
        "Delete it and re-download it."
    )


def extract_state_dict(obj: object, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The official layout ({"state_dict": ..., "optimizer": ...}, keys with DataParallel's `module.`) or a
    bare state dict -> a plain name -> tensor dict with the prefix removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise LipsyncError(
            f"{path} holds no state dict (found {type(obj).__name__}), so it is not a Wav2Lip checkpoint. "
            + GET_WEIGHTS_HINT
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue  # stray metadata; a real gap shows up as missing tensors below
        out[key.removeprefix("module.")] = value
    return out


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple] | None = None) -> dict:
    """Compare names and shapes with the model. Returns {"missing", "unexpected", "mismatched"} lists;
    all empty means it loads. `num_batches_tracked` is optional: eval never reads it and some exports drop it."""
    expected = expected_shapes() if expected is None else expected
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), expected[k])
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


WRONG_MODEL_HINT = (
    "It may be the SyncNet expert (lipsync_expert.pth), a face detector or another model. " + GET_WEIGHTS_HINT
)


def describe_problems(
    problems: dict,
    path: str | Path,
    limit: int = 4,
    *,
    what: str = "a Wav2Lip generator checkpoint",
    hint: str = WRONG_MODEL_HINT,
) -> str | None:
    """One readable paragraph naming the first few bad tensors, or None when there is nothing wrong."""
    parts = []

    def names(items):
        shown = ", ".join(items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    if problems["missing"]:
        parts.append(f"{len(problems['missing'])} tensors missing ({names(problems['missing'])})")
    if problems["unexpected"]:
        parts.append(f"{len(problems['unexpected'])} unexpected ({names(problems['unexpected'])})")
    if problems["mismatched"]:
        shapes = [f"{k} {list(got)} != {list(want)}" for k, got, want in problems["mismatched"]]
        parts.append(f"{len(shapes)} with the wrong shape ({names(shapes)})")
    if not parts:
        return None
    return f"{path} is not {what}: " + "; ".join(parts) + ". " + hint


def load_state_dict_checked(path: str | Path) -> dict[str, torch.Tensor]:
    """Read + validate a generator checkpoint on the CPU; raises LipsyncError naming what does not fit."""
    state = extract_state_dict(read_checkpoint(path), path)
    message = describe_problems(check_state_dict(state), path)
    if message:
        raise LipsyncError(message)
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Wav2Lip:
    """A Wav2Lip in eval mode with the checkpoint's weights, on `device` (float32; a name such as "auto" or
    "cuda" goes through device.pick_device, which explains an unavailable one)."""
    if not isinstance(device, torch.device):
        from .device import pick_device

        device = pick_device(device)
    state = load_state_dict_checked(path)
    # Built on the meta device and given the file's tensors (assign): no time spent on a random init that
    # the checkpoint overwrites. Floats become float32 as a copy into a float32 model would make them.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key in expected_shapes():
        if key.endswith("num_batches_tracked") and key not in state:  # some exports drop it; eval ignores it
            state[key] = torch.tensor(0)
    with torch.device("meta"):
        model = Wav2Lip()
    model.load_state_dict(state, assign=True)
    return model.to(device).eval()

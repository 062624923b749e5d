"""Known checkpoints: where they come from, how to fetch them, how to tell a good file from a bad one.

Nothing here is downloaded implicitly: `download()` runs only when asked (CLI `weights download NAME`).
Files stream to `<file>.part`, resume with an HTTP Range request, and are moved to their final name only after
they verify (size and sha256 where recorded, and always the tensor names and shapes, read with the same
weights-only loader as `load_model`). A bad download never sits at the final name.

Mirrors: the official Wav2Lip links (IIIT SharePoint, Google Drive) are dead or throttled; the URLs below are
community mirrors on Hugging Face, tried in order after any the user configures:
  LIPSYNC_WEIGHTS_MIRRORS = "https://a.example/w2l https://b.example/x"  (base URLs; the file name is appended)
  LIPSYNC_WEIGHTS_MIRRORS = /path/mirrors.json   ({"wav2lip_gan": ["https://...full url..."], "*": [bases]})
  <checkpoints folder>/mirrors.json                (same JSON, picked up when present)
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import LipsyncError

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a mirror counts as failed

WAV2LIP_LICENCE = (
    "Wav2Lip (Prajwal, Mukhopadhyay, Namboodiri, Jawahar; IIIT Hyderabad, ACM MM 2020). The authors permit "
    "personal, research and non-commercial use only: the models were trained on LRS2, and any commercial use is "
    "prohibited (commercial requests: the authors / sync.so). See https://github.com/Rudrabha/Wav2Lip."
)
S3FD_LICENCE = (
    "S3FD face detector (Zhang et al., ICCV 2017) weights as converted and published by the face-alignment "
    "project (Adrian Bulat; code under BSD-3-Clause). The weights come from the S3FD authors' release; check "
    "their terms for commercial use. See https://github.com/1adrianb/face-alignment."
)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str
    filename: str
    kind: str  # "wav2lip" (generator) or "s3fd" (face detector): which structure check applies
    description: str
    licence_short: str
    licence: str
    size: int | None  # bytes; None where no trustworthy record exists
    sha256: str | None  # full hex digest; None where unknown (then only the structure is checked)
    sha256_prefix: str | None  # torch hub convention: the file name carries the digest's first hex digits
    urls: tuple[str, ...]
    # Where else the file is looked for (see `search_paths`): other names it goes by in the checkpoints folder,
    # an environment variable holding its path, and torch hub's checkpoint cache (where face-alignment keeps it).
    also_named: tuple[str, ...] = ()
    env: str | None = None
    torch_hub: bool = False


KNOWN: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="wav2lip",
            filename="wav2lip.pth",
            kind="wav2lip",
            description="Wav2Lip generator: most accurate lip sync, slightly blurrier mouth",
            licence_short="non-commercial (Wav2Lip)",
            licence=WAV2LIP_LICENCE,
            # No size or digest of this file is documented anywhere we could check: verified by structure.
            size=None,
            sha256=None,
            sha256_prefix=None,
            urls=(
                "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints/wav2lip.pth",
                "https://huggingface.co/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip.pth",
                "https://huggingface.co/rippertnt/wav2lip/resolve/main/checkpoints/wav2lip.pth",
            ),
        ),
        Checkpoint(
            name="wav2lip_gan",
            filename="wav2lip_gan.pth",
            kind="wav2lip",
            description="Wav2Lip + GAN generator: sharper mouth, slightly weaker sync (the usual choice)",
            licence_short="non-commercial (Wav2Lip)",
            licence=WAV2LIP_LICENCE,
            # Size and digest as recorded by independent public download scripts that check this mirror file.
            size=435_801_865,
            sha256="ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
            sha256_prefix=None,
            urls=(
                "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints/wav2lip_gan.pth",
                "https://huggingface.co/numz/wav2lip_studio/resolve/main/Wav2lip/wav2lip_gan.pth",
                "https://huggingface.co/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth",
            ),
        ),
        Checkpoint(
            name="s3fd",
            filename="s3fd-619a316812.pth",
            kind="s3fd",
            description="S3FD face detector used by face-alignment (the 'sfd' detector)",
            licence_short="BSD-3 code (face-alignment); S3FD authors' weights",
            licence=S3FD_LICENCE,
            size=89_843_225,
            # Recorded by public download scripts; its first 10 digits are the ones in the torch hub file name.
            sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            sha256_prefix="619a316812",
            urls=(
                "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
                "https://huggingface.co/camenduru/Wav2Lip/resolve/main/face_detection/detection/sfd/s3fd.pth",
                "https://huggingface.co/vinthony/SadTalker/resolve/main/hub/checkpoints/s3fd-619a316812.pth",
            ),
            also_named=("s3fd.pth",),  # what the reference Wav2Lip repository calls it
            env="LIPSYNC_S3FD",
            torch_hub=True,
        ),
    )
}


def get(name: str) -> Checkpoint:
    try:
        return KNOWN[name]
    except KeyError:
        raise LipsyncError(f"Unknown checkpoint {name!r}: known ones are {', '.join(KNOWN)}.") from None


# ---------------------------------------------------------------------------------------------------------
# Where files live


def default_dir() -> Path:
    """$LIPSYNC_CHECKPOINTS, else the checkout's checkpoints/ folder, else ~/.cache/lipsync/checkpoints."""
    env = os.environ.get("LIPSYNC_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    in_checkout = Path(__file__).resolve().parents[1] / "checkpoints"
    if (in_checkout / "README.md").is_file():
        return in_checkout
    return Path.home() / ".cache" / "lipsync" / "checkpoints"


def path_for(name: str, dest_dir: str | Path | None = None) -> Path:
    """Where checkpoint `name` is (or would be) stored."""
    return Path(dest_dir or default_dir()) / get(name).filename


def hub_path(name: str) -> Path:
    """Where torch hub keeps `name` (honours $TORCH_HOME / $XDG_CACHE_HOME, as face-alignment's own download)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / get(name).filename


def search_paths(name: str, dest_dir: str | Path | None = None) -> list[Path]:
    """Every place checkpoint `name` is looked for, in order: the checkpoints folder (its file name, then the
    other names it goes by), the file its environment variable names, torch hub's cache."""
    entry = get(name)
    folder = Path(dest_dir or default_dir())
    paths = [folder / n for n in (entry.filename, *entry.also_named)]
    if entry.env and os.environ.get(entry.env):
        paths.append(Path(os.environ[entry.env]).expanduser())
    if entry.torch_hub:
        paths.append(hub_path(name))
    return paths


def find(name: str, dest_dir: str | Path | None = None) -> Path | None:
    """The first file present for `name` among `search_paths` (not verified: see `verify`)."""
    return next((p for p in search_paths(name, dest_dir) if p.is_file()), None)


def _split_urls(text: str) -> list[str]:
    return [u for u in text.replace(",", " ").split() if u]


def _mirrors_from_json(path: Path, entry: Checkpoint) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LipsyncError(f"Cannot read the mirrors file {path} ({exc}); fix or remove it.") from None
    if not isinstance(data, dict):
        raise LipsyncError(f"The mirrors file {path} must hold a JSON object: {{\"name\": [urls], \"*\": [bases]}}.")
    urls = [str(u) for u in data.get(entry.name, [])]
    urls += [str(b).rstrip("/") + "/" + entry.filename for b in data.get("*", [])]
    return urls


def mirrors_for(name: str, dest_dir: str | Path | None = None) -> list[str]:
    """User-configured mirrors first (env, then <dest>/mirrors.json), then the built-in ones; no duplicates."""
    entry = get(name)
    urls: list[str] = []
    env = os.environ.get("LIPSYNC_WEIGHTS_MIRRORS", "").strip()
    if env:
        if env.lower().endswith(".json") or Path(env).expanduser().is_file():
            urls += _mirrors_from_json(Path(env).expanduser(), entry)
        else:
            urls += [base.rstrip("/") + "/" + entry.filename for base in _split_urls(env)]
    local = Path(dest_dir or default_dir()) / "mirrors.json"
    if local.is_file():
        urls += _mirrors_from_json(local, entry)
    urls += entry.urls
    return list(dict.fromkeys(urls))


# ---------------------------------------------------------------------------------------------------------
# Verification


@dataclasses.dataclass
class VerifyReport:
    path: Path
    name: str | None  # the KNOWN entry it was checked against (None: matched none)
    size: int
    sha256: str | None
    size_ok: bool | None  # None: no recorded size
    sha256_ok: bool | None  # None: no recorded digest
    structure_ok: bool
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.structure_ok and self.size_ok is not False and self.sha256_ok is not False

    def lines(self) -> list[str]:
        def mark(flag):
            return {True: "ok", False: "MISMATCH", None: "not recorded"}[flag]

        out = [
            f"file:       {self.path}",
            f"checked as: {self.name or 'a Wav2Lip generator (file name not a known one)'}",
            f"size:       {self.size:,} bytes ({mark(self.size_ok)})",
            f"sha256:     {self.sha256 or '-'} ({mark(self.sha256_ok)})",
            f"structure:  {'ok' if self.structure_ok else 'BAD'}",
        ]
        out += [f"problem:    {p}" for p in self.problems]
        out.append("result:     " + ("OK" if self.ok else "BAD - delete the file and re-download it"))
        return out


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _s3fd_shapes() -> dict[str, tuple]:
    import torch

    try:  # the detector's own class, built on the meta device (no memory, no weights)
        from face_alignment.detection.sfd.net_s3fd import s3fd

        with torch.device("meta"):
            net = s3fd()
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    except (ImportError, AttributeError, RuntimeError, TypeError):  # face-alignment missing or changed:
        # check a few layers its loader needs
        return {
            "conv1_1.weight": (64, 3, 3, 3),
            "conv5_3.weight": (512, 512, 3, 3),
            "fc6.weight": (1024, 512, 3, 3),
            "fc7.weight": (1024, 1024, 1, 1),
            "conv3_3_norm.weight": (256,),
            "conv7_2_mbox_loc.weight": (4, 256, 3, 3),
        }


def check_structure(path: str | Path, kind: str) -> list[str]:
    """Problems found reading `path` as a `kind` checkpoint (empty: fine). CPU only, weights-only unpickler."""
    from . import model as m

    try:
        obj = m.read_checkpoint(path)
        state = m.extract_state_dict(obj, path)
    except LipsyncError as exc:
        return [str(exc)]
    if kind == "wav2lip":
        message = m.describe_problems(m.check_state_dict(state), path)
    else:
        expected = _s3fd_shapes()
        problems = {
            "missing": [k for k in expected if k not in state],
            "unexpected": [k for k in state if k not in expected] if len(expected) > 10 else [],
            "mismatched": [(k, tuple(state[k].shape), s) for k, s in expected.items()
                           if k in state and tuple(state[k].shape) != s],
        }
        message = m.describe_problems(
            problems, path, what="the S3FD face detector",
            hint="Get it with `python -m lipsync_core weights download s3fd`.")
    return [message] if message else []


def _guess_name(path: Path) -> str | None:
    for entry in KNOWN.values():
        if path.name == entry.filename:
            return entry.name
    for entry in KNOWN.values():
        if path.name in entry.also_named:
            return entry.name
    return None


def verify(path: str | Path, name: str | None = None) -> VerifyReport:
    """Check a file against KNOWN[name]; with no name, the entry is guessed from the file name, else the file
    is accepted as whichever structure fits (a generator, then the face detector)."""
    path = Path(path)
    if not path.is_file():
        raise LipsyncError(f"{path} does not exist (or is not a file).")
    if name is not None:
        get(name)
    name = name or _guess_name(path)
    if name is not None:
        structure = check_structure(path, get(name).kind)
    else:
        structure = check_structure(path, "wav2lip")
        if structure and not check_structure(path, "s3fd"):
            structure, name = [], "s3fd"
    entry = KNOWN.get(name) if name else None

    size = path.stat().st_size
    problems: list[str] = []
    size_ok = None if entry is None or entry.size is None else size == entry.size
    if size_ok is False:
        problems.append(f"size is {size:,} bytes, expected {entry.size:,}")
    digest = sha256_of(path)
    sha_ok = None
    if entry is not None and entry.sha256:
        sha_ok = digest == entry.sha256
    elif entry is not None and entry.sha256_prefix:
        sha_ok = digest.startswith(entry.sha256_prefix)
    if sha_ok is False:
        problems.append(f"sha256 {digest} does not match the recorded {entry.sha256 or entry.sha256_prefix}")
    return VerifyReport(path, name, size, digest, size_ok, sha_ok, not structure, problems + structure)


# ---------------------------------------------------------------------------------------------------------
# Download


class _MirrorFailed(Exception):
    """One mirror did not deliver; the message says how (shown in the final error)."""


def _status(resp) -> int:
    status = getattr(resp, "status", None)
    if status is None and hasattr(resp, "getcode"):
        status = resp.getcode()
    return int(status or 200)


def _header(resp, key: str) -> str | None:
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    return headers.get(key)


def _total_from(resp, status: int, offset: int) -> int | None:
    if status == 206:
        content_range = _header(resp, "Content-Range") or ""  # "bytes START-END/TOTAL"
        try:
            start = int(content_range.split()[1].split("-")[0])
            total = content_range.rsplit("/", 1)[1]
        except (IndexError, ValueError):
            raise _MirrorFailed(f"bad Content-Range {content_range!r}") from None
        if start != offset:
            raise _MirrorFailed(f"asked to resume at byte {offset}, server sent from {start}")
        return int(total) if total.isdigit() else None
    length = _header(resp, "Content-Length")
    return int(length) if length and length.isdigit() else None


class _Bar:
    """progress(done, total) callback, or a tqdm bar on stderr (hidden when stderr is not a terminal)."""

    def __init__(self, callback: Callable[[int, int | None], None] | None, label: str) -> None:
        self.callback = callback
        self.label = label
        self.bar = None

    def start(self, done: int, total: int | None) -> None:
        if self.callback is not None:
            self.callback(done, total)
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=self.label, unit="B", unit_scale=True,
                        unit_divisor=1024, file=sys.stderr, disable=None, leave=False)

    def update(self, done: int, total: int | None, n: int) -> None:
        if self.callback is not None:
            self.callback(done, total)
        elif self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fetch(url: str, part: Path, expected_size: int | None, opener, timeout: float, bar: _Bar) -> None:
    """Bring `part` to the complete file from `url`, resuming what is there. Raises _MirrorFailed."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        offset = 0  # complete-but-unverified or overlong leftovers: start clean
    request = urllib.request.Request(url, headers={"User-Agent": "lipsync-weights/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        resp = opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range past the end: our leftover is bad or complete; redo from 0
            part.unlink(missing_ok=True)
            return _fetch(url, part, expected_size, opener, timeout, bar)
        raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _MirrorFailed(f"no answer within {timeout:g} s (timed out)") from None
        raise _MirrorFailed(f"cannot connect ({exc.reason})") from None
    except TimeoutError:
        raise _MirrorFailed(f"no answer within {timeout:g} s (timed out)") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _MirrorFailed(f"{type(exc).__name__}: {exc}") from None

    try:
        status = _status(resp)
        if status not in (200, 206):
            raise _MirrorFailed(f"HTTP {status}")
        if status == 200 and offset:
            offset = 0  # the server ignored Range and sends the whole file: start over
        total = _total_from(resp, status, offset)
        if status == 200 and total is not None and expected_size is not None and total != expected_size:
            raise _MirrorFailed(f"server offers {total:,} bytes, expected {expected_size:,} (a different file?)")
        total = total if total is not None else expected_size
        done = offset
        bar.start(done, total)
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    block = resp.read(CHUNK)
                except TimeoutError:
                    raise _MirrorFailed(f"stalled after {done:,} bytes: no data for {timeout:g} s") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise _MirrorFailed(f"interrupted after {done:,} bytes ({type(exc).__name__}: {exc})") from None
                if not block:
                    break
                out.write(block)
                done += len(block)
                bar.update(done, total, len(block))
        if total is not None and done < total:
            raise _MirrorFailed(f"connection closed after {done:,} of {total:,} bytes")
    finally:
        bar.close()
        close = getattr(resp, "close", None)
        if close is not None:
            close()


def download(
    name: str,
    dest_dir: str | Path | None = None,
    urls: Iterable[str] | None = None,
    opener: Callable = urllib.request.urlopen,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check_hash: bool = True,
) -> Path:
    """Fetch checkpoint `name` into `dest_dir` (default: `default_dir()`), verified; returns its path.

    A file already there that verifies is kept. `urls` replaces the mirror list. `opener(request, timeout=)`
    is urllib's urlopen (swappable for tests). `progress(done, total)` replaces the tqdm bar.
    `check_hash=False` skips size/sha256 (the structure is still checked) for a legitimately re-saved file.
    """
    entry = get(name)
    dest = Path(dest_dir or default_dir())
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LipsyncError(f"Cannot create {dest} ({exc}); pass another folder with --dest.") from None
    final = dest / entry.filename
    part = final.with_name(final.name + ".part")

    def good(path: Path) -> list[str]:
        report = verify(path, name)
        if not check_hash:
            return [p for p in report.problems if not p.startswith(("size is", "sha256"))]
        return report.problems

    if final.is_file() and not good(final):
        return final

    url_list = list(urls) if urls else mirrors_for(name, dest)
    if not url_list:
        raise LipsyncError(f"No download address for {name}: pass --url or set LIPSYNC_WEIGHTS_MIRRORS.")
    failures: list[str] = []
    expected = entry.size if check_hash else None
    for url in url_list:
        for attempt in (1, 2):
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _fetch(url, part, expected, opener, timeout, _Bar(progress, entry.filename))
            except _MirrorFailed as exc:
                failures.append(f"{url}: {exc}")
                break  # keep the .part: the next mirror resumes it
            problems = good(part)
            if not problems:
                os.replace(part, final)
                return final
            part.unlink(missing_ok=True)  # a corrupt file never stays, under either name
            if resumed and attempt == 1:
                continue  # maybe the old .part was the bad half: this mirror gets one clean try
            failures.append(f"{url}: downloaded but it is not a valid {entry.filename}: {problems[0]}")
            break
    lines = "\n  ".join(failures)
    raise LipsyncError(
        f"Could not download {entry.filename}. Tried:\n  {lines}\n"
        f"Download it by hand from any mirror and put it at {final}, pass --url, or set "
        "LIPSYNC_WEIGHTS_MIRRORS; then check it with `weights verify`."
    )


# ---------------------------------------------------------------------------------------------------------
# CLI: `python -m lipsync_core weights list|download|verify`


def _human(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.0f} MB"


def _cmd_list(args) -> int:
    dest = Path(args.dest) if getattr(args, "dest", None) else default_dir()
    rows = [("name", "file", "size", "licence", "present")]
    for entry in KNOWN.values():
        found = find(entry.name, dest)  # every place the engine looks, not only the folder
        present = "no" if found is None else "yes" if found == dest / entry.filename else f"yes: {found}"
        rows.append((entry.name, entry.filename, _human(entry.size), entry.licence_short, present))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\nfolder: {dest}")
    print("Wav2Lip weights are for personal/research/non-commercial use only (see checkpoints/README.md).")
    return 0


def _cmd_download(args) -> int:
    try:
        path = download(args.name, args.dest, urls=args.url or None, timeout=args.timeout,
                        check_hash=not args.no_hash_check)
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    entry = KNOWN[args.name]
    print(f"{entry.name}: {path}")
    print(f"licence: {entry.licence}")
    return 0


def _cmd_verify(args) -> int:
    try:
        report = verify(args.path, args.name)
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok else 2


def add_subparser(subparsers) -> None:
    """Add `weights {list,download,verify}` to an argparse sub-parser set; each sets `func(args) -> exit code`."""
    weights = subparsers.add_parser("weights", help="list, download and verify model checkpoints")
    sub = weights.add_subparsers(dest="weights_command", metavar="{list,download,verify}")
    sub.required = True

    p = sub.add_parser("list", help="known checkpoints and whether they are present")
    p.add_argument("--dest", help="checkpoints folder to look in (default: %(default)s)", default=None)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("download", help="download a checkpoint, resuming and verifying it")
    p.add_argument("name", choices=sorted(KNOWN), help="which checkpoint")
    p.add_argument("--dest", default=None, help="folder to save into (default: the checkpoints folder)")
    p.add_argument("--url", action="append", help="download from this URL instead (repeat for fallbacks)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds without data before giving up")
    p.add_argument("--no-hash-check", action="store_true", help="skip size/sha256 (the structure is still checked)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("verify", help="check a checkpoint file's tensors, size and sha256")
    p.add_argument("path")
    p.add_argument("--name", choices=sorted(KNOWN), default=None, help="check against this entry")
    p.set_defaults(func=_cmd_verify)

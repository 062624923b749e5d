"""The sync and detection options: one definition for the CLI (`cli.py`) and a batch's JOBS.json (`batch.py`).

Their names, defaults, help and checks live here so both accept exactly the same values.
"""

from __future__ import annotations

import argparse

DETECTORS = ("auto", "sfd", "opencv")


def _crf(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else -1
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 (lossless) to 51")
    return value


def add_detection_options(sp, d) -> None:
    """Face detection and device options (segments and sync); `d`: the SyncOptions defaults."""
    sp.add_argument("--detector", choices=DETECTORS, default=d.detector,
                    help="face detector: sfd (S3FD, what Wav2Lip was trained with; needs its weights), "
                         "opencv (Haar cascade, offline), auto = sfd if available else opencv")
    from .faces.speaker import CHOICES

    sp.add_argument("--face", choices=CHOICES, default=d.face,
                    help="which face to lip-sync when several are visible: speaker (the one whose mouth "
                         "moves with the clip's own sound; the largest when that is unclear), largest, left, "
                         f"right, center (default: {d.face})")
    sp.add_argument("--face-at", type=float, nargs=2, metavar=("X", "Y"),
                    help="lip-sync the face nearest this point (source pixels) at each face segment's first "
                         "face frame; overrides --face")
    sp.add_argument("--detect-every", type=int, default=d.detect_every, metavar="N",
                    help="run the detector on every N-th frame and track in between (default %(default)s; "
                         "1 = every frame)")
    sp.add_argument("--detect-max-every", type=int, default=None, metavar="N",
                    help="let the keyframe gap widen up to N frames while tracking holds (default: 5 for "
                         "opencv, 25 for sfd on CPU)")
    sp.add_argument("--detect-width", type=int, default=d.detect_width, metavar="PX",
                    help="detect on frames downscaled to this width (default %(default)s)")
    sp.add_argument("--min-segment", type=float, default=d.min_segment_seconds, metavar="SECONDS",
                    help="shorter face/no-face segments merge into their neighbours (default %(default)s)")
    sp.add_argument("--no-cache", action="store_true", help="detect again even if this file was analysed")
    sp.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=d.device,
                    help="auto: CUDA, then Apple MPS, then CPU")


def add_sync_options(y, d) -> None:
    """The sync options (also the option names and checks of a batch's JOBS.json, see batch.py)."""
    from .media import CODECS, X264_PRESETS
    from .media.encoder import AUTO_PRESET

    y.add_argument("--segments", default=d.segments,
                   help='auto (detect face/no-face parts), all (whole clip is a face part), or face ranges '
                        'in seconds like "31-60,69-84"')
    y.add_argument("--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                   help="fixed face box in pixels: skips detection")
    y.add_argument("--pads", type=int, nargs=4, default=list(d.pads), metavar=("T", "B", "L", "R"),
                   help="grow the detected box (top bottom left right; default 0 10 0 0: include the chin)")
    y.add_argument("--no-smooth", action="store_true", help="do not average boxes over 5 frames")
    y.add_argument("--blend", choices=("feather", "box"), default=d.blend,
                   help="feather: only the lower face with a soft edge (default); box: paste the whole box")
    y.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="frames per generator batch (default 32 on CPU, 128 on CUDA, 32 on MPS)")
    y.add_argument("--crf", type=_crf, default=d.crf, metavar="0-51",
                   help=f"H.264 quality of OUT: lower is better and bigger (default {d.crf})")
    y.add_argument("--codec", choices=tuple(CODECS), default=d.codec,
                   help="result encoding: h264 (default; --crf, --x264-preset), prores (ProRes 422 HQ, 10-bit, .mov) "
                        "or ffv1 (lossless, the source's chroma and bit depth, .mkv)")
    y.add_argument("--exact-size", action="store_true",
                   help="keep the source's exact size: an odd width or height that the codec's 4:2:0 cannot hold "
                        "is written in full chroma (H.264 yuv444p, FFV1 4:4:4) instead of padded by a pixel "
                        "(ProRes still pads an odd width); the Blender extension's results use it")
    y.add_argument("--x264-preset", choices=(AUTO_PRESET, *X264_PRESETS), default=d.preset, metavar="PRESET",
                   help=f"H.264 encoder speed: {AUTO_PRESET} (default: superfast up to 1280x720, ultrafast above, "
                        f"where x264 costs as much CPU as the generator), {', '.join(X264_PRESETS)}; slower "
                        "presets give smaller files at the same quality and take CPU from the generator")
    y.add_argument("--match", choices=("video", "audio"), default=d.match,
                   help="video: keep every frame, audio trimmed/padded (default); audio: cut or loop the "
                        "video to the audio's length")
    add_detection_options(y, d)


def options_from_args(args):
    from .sync import SyncOptions

    o = SyncOptions(detector=args.detector, face=args.face,
                    face_at=tuple(args.face_at) if args.face_at else None, detect_every=max(1, args.detect_every),
                    detect_max_every=args.detect_max_every,
                    detect_width=args.detect_width, min_segment_seconds=args.min_segment,
                    cache=not args.no_cache, device=args.device)
    if args.command == "sync":
        o.segments = args.segments
        o.box = tuple(args.box) if args.box else None
        o.pads = tuple(args.pads)
        o.smooth = not args.no_smooth
        o.blend = args.blend
        o.batch_size = args.batch_size
        o.match = args.match
        o.crf = args.crf
        o.preset = args.x264_preset
        o.codec = args.codec
        o.exact_size = args.exact_size
    return o

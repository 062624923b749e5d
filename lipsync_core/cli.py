"""`python -m lipsync_core`: a thin layer over lipsync_core.sync and lipsync_core.weights.

Exit codes: 0 done, 2 bad arguments or inputs (the message says what to do), 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .errors import Cancelled, LipsyncError

DETECTORS = ("auto", "sfd", "opencv")


def _crf(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else -1
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 (lossless) to 51")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .faces.speaker import CHOICES
    from .media import X264_PRESETS
    from .sync import SyncOptions

    d = SyncOptions()
    p = argparse.ArgumentParser(prog="python -m lipsync_core",
                                description="Lip-sync a video to new audio with Wav2Lip (face parts only).")
    sub = p.add_subparsers(dest="command", required=True)

    def detection_args(sp):
        sp.add_argument("--detector", choices=DETECTORS, default=d.detector,
                        help="face detector: sfd (S3FD, what Wav2Lip was trained with; needs its weights), "
                             "opencv (Haar cascade, offline), auto = sfd if available else opencv")
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

    s = sub.add_parser("segments", help="find face / no-face segments of a video")
    s.add_argument("video")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    detection_args(s)

    y = sub.add_parser("sync", help="lip-sync VIDEO to AUDIO")
    y.add_argument("video", help="the footage (any format ffmpeg reads)")
    y.add_argument("audio", help="the new audio (wav, mp3, m4a, or a video's sound)")
    y.add_argument("-o", "--output", required=True, help="output .mp4 (H.264 + AAC)")
    y.add_argument("--checkpoint", required=True, help="wav2lip.pth or wav2lip_gan.pth")
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
    y.add_argument("--x264-preset", choices=X264_PRESETS, default=d.preset, metavar="PRESET",
                   help=f"H.264 encoder speed: {', '.join(X264_PRESETS)} (default {d.preset}); slower presets "
                        "give smaller files at the same quality and take CPU from the generator")
    y.add_argument("--match", choices=("video", "audio"), default=d.match,
                   help="video: keep every frame, audio trimmed/padded (default); audio: cut or loop the "
                        "video to the audio's length")
    y.add_argument("--json-progress", action="store_true",
                   help="print progress as JSON lines (stage, done, total) instead of bars")
    detection_args(y)

    from .weights import add_subparser

    add_subparser(sub)
    return p


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
    return o


def _chosen_text(seg: dict) -> str:
    """", face 2 of 2 at x1,y1-x2,y2 (speaker, score 0.48)": the face a segment lip-syncs, for the table."""
    if seg.get("chosen") is None:
        return ""
    face = seg["faces"][seg["chosen"]]
    score = face.get("score")
    why = seg.get("fallback") or seg.get("choice", "")
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    return (f"   face {seg['chosen'] + 1} of {len(seg['faces'])} at {x1},{y1}-{x2},{y2} ({why}"
            + (f", score {score:.2f}" if score is not None else "") + ")")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None):  # weights subcommands
        try:
            return args.func(args)
        except LipsyncError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    from .progress import CancelToken, JsonProgress, TqdmProgress

    json_progress = getattr(args, "json_progress", False)
    progress = JsonProgress() if json_progress else TqdmProgress()
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    try:
        from .sync import find_segments, sync

        opts = options_from_args(args)
        if args.command == "segments":
            result = find_segments(args.video, opts, progress=progress, cancel=cancel)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(f"{args.video}: {result['frames']} frames at {result['fps']:g} fps")
                for seg in result["segments"]:
                    kind = "face   " if seg["face"] else "no face"
                    print(f"  {kind} {seg['start']:8.2f} - {seg['end']:8.2f} s   frames {seg['start_frame']}-"
                          f"{seg['end_frame']}{_chosen_text(seg)}")
            return 0
        result = sync(args.video, args.audio, args.output, args.checkpoint, opts, progress, cancel)
        if json_progress:
            progress.emit({"event": "result", **result})
        else:
            faces = sum(1 for s in result["segments"] if s["face"])
            print(f"wrote {result['output']}: {result['frames']} frames, {result['face_frames']} lip-synced in "
                  f"{faces} face segment(s), {result['seconds']:.1f} s on {result['device']}", file=sys.stderr)
        return 0
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (Cancelled, KeyboardInterrupt):
        print("cancelled: nothing was written", file=sys.stderr)
        return 130

"""`python -m lipsync_core`: a thin layer over lipsync_core.sync and lipsync_core.weights.

Exit codes: 0 done, 2 bad arguments or inputs (the message says what to do), 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .errors import Cancelled, LipsyncError
from .options import add_detection_options, add_sync_options, options_from_args


def build_parser() -> argparse.ArgumentParser:
    from .sync import SyncOptions

    d = SyncOptions()
    p = argparse.ArgumentParser(prog="python -m lipsync_core",
                                description="Lip-sync a video to new audio with Wav2Lip (face parts only).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segments", help="find face / no-face segments of a video")
    s.add_argument("video")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_detection_options(s, d)

    y = sub.add_parser("sync", help="lip-sync VIDEO to AUDIO")
    y.add_argument("video", help="the footage (any format ffmpeg reads)")
    y.add_argument("audio", help="the new audio (wav, mp3, m4a, or a video's sound)")
    y.add_argument("-o", "--output", required=True,
                   help="output file: .mp4 for H.264 (also .mov, .mkv, .m4v), .mov for ProRes, .mkv for FFV1")
    y.add_argument("--checkpoint", required=True, help="wav2lip.pth or wav2lip_gan.pth")
    y.add_argument("--json-progress", action="store_true",
                   help="print progress as JSON lines (stage, done, total) instead of bars")
    add_sync_options(y, d)

    from .batch_cli import add_subparser as add_batch_subparser
    from .weights import add_subparser

    add_subparser(sub)
    add_batch_subparser(sub)
    return p


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

"""Lip-sync a video (`sync`) or a job's clips (`sync_clips`), and find face segments (`find_segments`):
decode -> detect/track -> mel -> generator -> composite -> encode, as streams (`ClipRenderer` renders a clip).

Two passes over the video, both streamed: a cheap analysis pass (downscaled frames, detection on keyframes,
cached per file) gives one box per frame, a few bytes each; the render pass decodes full frames, batches the
face frames through the generator and writes every frame to the encoder in order. Memory is bounded by the
batch size, not by the clip's length.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import audio as A
from .errors import LipsyncError
from .progress import CancelToken, Progress
from .segments import Segment, all_face, parse_ranges, segments_from_presence, segments_to_dict

IMG = 96  # the generator's face size


@dataclass
class SyncOptions:
    segments: str = "auto"  # "auto" | "all" | "31-60,69-84" (face ranges in seconds)
    box: tuple[int, int, int, int] | None = None  # fixed face box x1 y1 x2 y2: skips detection
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right (the reference's order)
    smooth: bool = True
    detector: str = "auto"
    face: str = "largest"  # which face to lip-sync: speaker | largest | left | right | center
    face_at: tuple[float, float] | None = None  # or the face nearest this point (source pixels): overrides `face`
    blend: str = "feather"  # feather | box
    device: str = "auto"
    batch_size: int | None = None  # None: per device
    match: str = "video"  # video: keep every frame; audio: cut/loop the video to the audio (reference)
    detect_width: int = 480  # analysis pass decodes at most this wide
    detect_every: int = 5  # detector on every n-th frame, tracked in between (exact at face/no-face changes)
    detect_max_every: int | None = None  # widest keyframe gap while tracking holds (None: per detector)
    min_segment_seconds: float = 0.5
    max_gap_seconds: float = 0.4  # a face lost for up to this long inside a face run is bridged
    cache: bool = True
    crf: int = 18  # x264 quality: lower is better and bigger (0-51)
    # x264 speed/size trade: "superfast" leaves more CPU to the generator, which shares the cores with the
    # encoder, at the same quality for bigger files (figures: README, bench)
    preset: str = "superfast"


@dataclass
class StageClock:
    """Seconds spent per stage; the benchmark reads it, the result reports it."""

    seconds: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


# ---------------------------------------------------------------------------------------------- analysis


def analyze_faces(video: str, opts: SyncOptions, info=None, progress: Progress | None = None,
                  cancel: CancelToken | None = None, clock: StageClock | None = None, all_faces: bool = False):
    """One FaceTrack for the whole video: from the cache when the same file was analysed before.

    all_faces: also follow every face (for --face speaker / --face-at) in the same decoding pass, and return
    (FaceTrack, FaceSet); the one-face track then follows the largest face."""
    from .faces import cache
    from .faces.detectors import get_detector
    from .faces.speaker import RULES, mouth_motion
    from .faces.track import AllFaces, track_faces
    from .media import FrameReader, probe

    info = info or probe(video)
    progress = progress or Progress()
    width = min(opts.detect_width, info.width)
    width -= width % 2
    height = max(2, int(round(info.height * width / info.width / 2)) * 2)
    scale = width / info.width
    select = opts.face if opts.face in RULES and opts.face_at is None else "largest"
    settings = {"detector": opts.detector, "width": width, "every": opts.detect_every, "face": select,
                "max_every": opts.detect_max_every, "version": cache.CACHE_VERSION}
    track = faceset = None
    if opts.cache:
        track = cache.load_track(video, settings)
        if track is not None and len(track.boxes) != info.frames:
            track = None
        if all_faces:
            faceset = cache.load_faceset(video, settings)
            if faceset is not None and faceset.frames != info.frames:
                faceset = None
        if track is not None and (faceset is not None or not all_faces):
            progress.log("face detection: reused the cached result for this file")
            return (track, faceset) if all_faces else track
    t0 = time.perf_counter()
    detector = get_detector(opts.detector, device=opts.device, log=progress.log)
    follower = AllFaces(detector, scale, original_size=(info.width, info.height), cancel=cancel,
                        mouth=mouth_motion) if all_faces and faceset is None else None
    with FrameReader(video, size=(width, height), info=info) as frames:
        stream = frames if follower is None else _fed_to(frames, follower.feed)
        if track is None:
            track = track_faces(stream, detector, scale=scale, detect_every=opts.detect_every,
                                max_every=opts.detect_max_every, select=select,
                                original_size=(info.width, info.height), total=info.frames, progress=progress,
                                cancel=cancel)
        for _ in stream:  # the one-face track came from the cache: only every face is followed
            pass
    if follower is not None:
        faceset = follower.result()
    if clock is not None:
        clock.add("detect", t0)
    if opts.cache:
        cache.save_track(video, settings, track)
        if follower is not None:
            cache.save_faceset(video, settings, faceset)
    return (track, faceset) if all_faces else track


def _fed_to(frames, feed):
    """The frames, each also handed to `feed` (one decoding pass serves two followers)."""
    for f in frames:
        feed(f)
        yield f


def face_choice(opts: SyncOptions):
    """The FaceChoice the options ask for (`face_at` overrides `face`)."""
    from .faces.speaker import parse_choice

    return parse_choice(opts.face, opts.face_at)


def own_sound(video: str, info):
    """The clip's own sound as `sound(start, end)` -> loudness per frame of [start, end), or None without sound."""
    from .faces.speaker import loudness

    if not getattr(info, "has_audio", False):
        return None

    def sound(start: int, end: int):
        try:
            wav = A.load_audio(video, offset=start / info.fps, duration=(end - start) / info.fps)
        except LipsyncError:
            return None
        return loudness(wav, A.SAMPLE_RATE, info.fps, end - start)

    return sound


def choose_faces(video: str, info, opts: SyncOptions, segments: list[Segment], choice, progress: Progress,
                 cancel: CancelToken | None, clock: StageClock | None):
    """Segments (face segments end where their chosen face leaves), boxes (N, 4) float of the chosen faces (NaN
    elsewhere) and the per face segment report, for a choice that needs every face (speaker, point)."""
    from .faces import speaker

    track, faceset = analyze_faces(video, opts, info, progress, cancel, clock, all_faces=True)
    t0 = time.perf_counter()
    sound = own_sound(video, info) if choice.mode == "speaker" else None
    segs, rows, reports = speaker.choose_faces(segments, track.boxes, faceset, choice, sound,
                                               switch_frames=max(2, int(round(speaker.SWITCH_SECONDS * info.fps))))
    if clock is not None:
        clock.add("choose", t0)
    warning = speaker.fallback_warning(reports)
    if warning:
        progress.log(warning)
    return segs, rows, reports


def presence(track) -> np.ndarray:
    return ~np.isnan(track.boxes[:, 0])


def find_segments(video: str, opts: SyncOptions | None = None, start_frame: int = 0, end_frame: int | None = None,
                  progress: Progress | None = None, cancel: CancelToken | None = None) -> dict:
    """Face / no-face segments of frames [start_frame, end_frame) (source frames), as the CLI's JSON."""
    from .media import probe

    opts = opts or SyncOptions()
    progress = progress or Progress()
    info = probe(video)
    start, end = _check_range(info, start_frame, end_frame)
    choice = face_choice(opts)
    track = analyze_faces(video, opts, info, progress, cancel)
    segs = _auto_segments(presence(track)[start:end], info.fps, opts)
    segs = [Segment(s.start_frame + start, s.end_frame + start, s.face) for s in segs]
    reports = []
    if choice.needs_all_faces:
        segs, _, reports = choose_faces(video, info, opts, segs, choice, progress, cancel, None)
    out = segments_to_dict(segs, info.fps, info.frames)
    by_start = {r.start_frame: r for r in reports}
    for seg in out["segments"]:  # which faces each face segment shows and which one is lip-synced
        r = by_start.get(seg["start_frame"])
        if r is not None:
            seg.update({"faces": r.faces, "chosen": r.chosen, "choice": r.choice, "fallback": r.fallback})
    out["start_frame"], out["end_frame"] = start, end
    return out


def _auto_segments(has_face: np.ndarray, fps: float, opts: SyncOptions) -> list[Segment]:
    return segments_from_presence(has_face, min_frames=max(1, int(round(opts.min_segment_seconds * fps))),
                                  max_gap=int(round(opts.max_gap_seconds * fps)))


def _check_range(info, start: int, end: int | None) -> tuple[int, int]:
    end = info.frames if end is None else end
    if not (0 <= start < end <= info.frames):
        raise LipsyncError(f"frame range {start}-{end} is outside the video ({info.frames} frames): "
                           "choose a range inside the clip")
    return start, end


# ------------------------------------------------------------------------------------------------ render


class ClipRenderer:
    """Renders clips: the loaded generator and compositor, reused for every clip of a job. `render` streams one
    clip's frames through crop -> generator -> blend -> encoder."""

    def __init__(self, checkpoint: str, opts: SyncOptions, progress: Progress | None = None):
        import torch

        from .composite import Compositor
        from .device import cpu_has_native_bf16, pick_device, pick_dtype
        from .inference import FaceGenerator, default_batch_size
        from .model import load_model

        self.opts = opts
        self.progress = progress or Progress()
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(self.device)
        model = load_model(checkpoint, device=self.device)
        self.compositor = Compositor(opts.blend)
        # only the face rows the blend reads are generated (the lower half for feather)
        self.generator = FaceGenerator(model, self.device, self.dtype, first_row=self.compositor.first_row_used())
        del model  # the generator holds a folded copy
        self.batch_size = opts.batch_size or default_batch_size(self.device)
        # CPU precision is measured, not assumed: bf16 is faster where the CPU has native bf16, but
        # whether it keeps every output pixel within 1/255 of fp32 depends on the weights. The first batch
        # runs both ways and decides (LIPSYNC_PRECISION skips the check).
        self._try_bf16 = (self.device.type == "cpu" and self.dtype == torch.float32
                          and not os.environ.get("LIPSYNC_PRECISION") and cpu_has_native_bf16())
        self.progress.log(f"generator on {self.device} ({str(self.dtype).replace('torch.', '')}), "
                          f"batch {self.batch_size}")

    def _predict(self, mels, crops, clock):
        t0 = time.perf_counter()
        out = self.generator.predict(mels, crops)
        if self._try_bf16:
            self._try_bf16 = False
            self._choose_bf16(mels, crops, out)
        clock.add("generator", t0)
        return out

    def _choose_bf16(self, mels, crops, reference: np.ndarray) -> None:
        import torch

        self.generator.dtype = torch.bfloat16
        fast = self.generator.predict(mels, crops)
        worst = int(np.abs(fast.astype(np.int16) - reference).max())
        if worst <= 1:
            self.dtype = torch.bfloat16
            self.progress.log(f"bf16 matches fp32 within {worst}/255 on these weights: using bf16")
        else:
            self.generator.dtype = torch.float32
            self.progress.log(f"bf16 moved pixels by up to {worst}/255 on these weights: keeping fp32")

    def render(self, video: str, info, frames: np.ndarray, boxes: np.ndarray, mel: np.ndarray,
               audio_path: str, audio_start: float, output: str, cancel: CancelToken | None = None,
               clock: StageClock | None = None) -> dict:
        """Write `output`: source frames `frames` (indices, in order) with the mouth redone where boxes >= 0.

        boxes: (len(frames), 4) int, -1 rows pass through. mel: for this clip, frame k uses mel chunk k.
        """
        from .media import VideoEncoder, encoded_size

        cancel = cancel or CancelToken()
        clock = clock or StageClock()
        n = len(frames)
        progress = self.progress
        progress.start("sync", n)
        pool = ThreadPoolExecutor(max_workers=1)  # generator runs while the main thread decodes/blends
        pending = None  # (future, [(frame, box) ...]) of the batch being generated
        buf: list = []  # [(k, frame, box|None)] waiting for the next batch, in output order
        n_face = batch_faces = 0

        def flush_pending(enc):
            nonlocal pending
            if pending is None:
                return
            fut, items = pending
            pending = None
            t0 = time.perf_counter()
            faces = fut.result()
            t0 = clock.add("wait", t0)  # main thread idle: the generator is the bottleneck
            fi = 0
            for _, frame, box in items:
                if box is not None:
                    self.compositor.paste(frame, faces[fi], box)
                    fi += 1
            t0 = clock.add("blend", t0)
            for _, frame, _ in items:
                enc.write(frame)
            clock.add("encode", t0)
            progress.advance("sync", len(items))

        def submit(enc):
            nonlocal pending, buf
            if not buf:
                return
            items, buf = buf, []
            t0 = time.perf_counter()
            face_items = [(k, f, b) for k, f, b in items if b is not None]
            if face_items:
                crops = np.empty((len(face_items), IMG, IMG, 3), np.uint8)
                for i, (_, f, b) in enumerate(face_items):
                    crops[i] = _crop96(f, b)
                mels = A.mel_chunk_at(mel, np.array([k for k, _, _ in face_items]), info.fps)
                clock.add("crop", t0)
                fut = pool.submit(self._predict, mels, crops, clock)
            else:
                fut = pool.submit(lambda: None)
            flush_pending(enc)  # finish the previous batch while this one runs
            pending = (fut, items)

        try:
            contiguous = bool(n) and int(frames[-1]) - int(frames[0]) == n - 1
            with VideoEncoder(output, info.width, info.height, info.fps_rational, audio_path=audio_path,
                              audio_start=audio_start, n_frames=n, crf=self.opts.crf,
                              preset=self.opts.preset, color_space=info.color_space) as enc:
                for k, frame in enumerate(_frames_in_order(video, info, frames, contiguous, clock)):
                    cancel.check()
                    box = boxes[k]
                    has = box[0] >= 0
                    buf.append((k, frame, tuple(int(v) for v in box) if has else None))
                    n_face += has
                    batch_faces += has
                    # a full batch of faces, or enough frames buffered (long no-face runs): keeps memory bounded
                    if batch_faces >= self.batch_size or len(buf) >= 2 * self.batch_size:
                        submit(enc)
                        batch_faces = 0
                submit(enc)
                flush_pending(enc)
                t0 = time.perf_counter()
            clock.add("encode", t0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            progress.finish("sync")
        # H.264 (yuv420p) holds only even sizes: an odd source gets one extra column / row at the right / bottom
        # edge. The picture starts at the file's pixel (0, 0); an editor crops `pad` to line it up with its source.
        out_w, out_h = encoded_size(info.width, info.height)
        return {"output": output, "frames": n, "face_frames": int(n_face), "size": [info.width, info.height],
                "pad": [out_w - info.width, out_h - info.height]}


def _frames_in_order(video, info, frames: np.ndarray, contiguous: bool, clock: StageClock):
    """Decode the requested source frames in order; a looped clip (--match audio) re-opens the stream."""
    from .media import FrameReader

    if contiguous:
        runs = [(int(frames[0]), int(frames[-1]) + 1)]
    else:  # split into increasing runs (a loop restarts at 0)
        breaks = np.nonzero(np.diff(frames) != 1)[0] + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(frames, breaks)]
    for s, e in runs:
        with FrameReader(video, start_frame=s, end_frame=e, info=info) as reader:
            t0 = time.perf_counter()
            for frame in reader:
                t0 = clock.add("decode", t0)
                yield frame
                t0 = time.perf_counter()


def _crop96(frame: np.ndarray, box) -> np.ndarray:
    import cv2

    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (IMG, IMG))


# --------------------------------------------------------------------------------------------- top level


def plan_boxes(video: str, info, opts: SyncOptions, face_segments: list[Segment], progress: Progress,
               cancel: CancelToken | None, clock: StageClock | None, choice=None,
               report: list | None = None) -> np.ndarray:
    """One box per source frame (int32 (N,4), -1 where the frame keeps its picture).

    choice: the FaceChoice (default: the options'); report: gets the per face segment choices (speaker, point)."""
    from .faces.track import FaceTrack, face_boxes, fixed_boxes

    boxes = np.full((info.frames, 4), -1, np.int32)
    if not face_segments:
        return boxes
    choice = choice or face_choice(opts)
    max_gap = int(round(opts.max_gap_seconds * info.fps))
    if opts.box is not None:
        every = fixed_boxes(info.frames, opts.box, info.width, info.height)
    elif choice.needs_all_faces:
        segs, rows, reports = choose_faces(video, info, opts, face_segments, choice, progress, cancel, clock)
        if report is not None:
            report.extend(r.to_dict() for r in reports)
        every = np.full((info.frames, 4), -1, np.int32)
        for s in segs:  # bridged and smoothed within each choice: never across a change of face
            part = FaceTrack(rows[s.start_frame:s.end_frame], np.zeros(s.frames), info.width, info.height)
            every[s.start_frame:s.end_frame] = face_boxes(part, pads=opts.pads, smooth=opts.smooth, max_gap=max_gap)
    elif choice.mode != opts.face or opts.face_at is not None:
        track = analyze_faces(video, dataclasses.replace(opts, face=choice.mode, face_at=None), info, progress,
                              cancel, clock)
        every = face_boxes(track, pads=opts.pads, smooth=opts.smooth, max_gap=max_gap)
    else:
        track = analyze_faces(video, opts, info, progress, cancel, clock)
        every = face_boxes(track, pads=opts.pads, smooth=opts.smooth,
                           max_gap=int(round(opts.max_gap_seconds * info.fps)))
    for seg in face_segments:
        part = every[seg.start_frame : seg.end_frame]
        found = part[:, 0] >= 0
        if not found.any():
            raise LipsyncError(
                f"no face was found in {seg.start_frame / info.fps:.2f}-{seg.end_frame / info.fps:.2f} s "
                f"(frames {seg.start_frame}-{seg.end_frame}): mark that range as no-face, give the face box with "
                "--box, or try --detector sfd / a larger --detect-width")
        if not found.all():
            progress.log(f"{int((~found).sum())} frames in {seg.start_frame}-{seg.end_frame} have no face and keep "
                         "their picture")
        boxes[seg.start_frame : seg.end_frame] = part
    return boxes


def resolve_segments(video: str, info, opts: SyncOptions, progress: Progress, cancel, clock) -> list[Segment]:
    spec = opts.segments if isinstance(opts.segments, str) else None
    if spec is None:
        return list(opts.segments)
    spec = spec.strip().lower()
    if spec == "all" or (spec == "auto" and opts.box is not None):
        return all_face(info.frames)
    if spec == "auto":
        track = analyze_faces(video, opts, info, progress, cancel, clock)
        return _auto_segments(presence(track), info.fps, opts)
    return parse_ranges(opts.segments, info.fps, info.frames)


def sync(video: str, audio: str, output: str, checkpoint: str, opts: SyncOptions | None = None,
         progress: Progress | None = None, cancel: CancelToken | None = None) -> dict:
    """Lip-sync `video` to `audio` into `output` (H.264 + AAC). Returns a report (segments, timings...)."""
    from .media import probe, probe_audio

    opts = opts or SyncOptions()
    progress = progress or Progress()
    cancel = cancel or CancelToken()
    clock = StageClock()
    t_start = time.perf_counter()
    _check_output(output, [video, audio, checkpoint])
    _check_encoding(opts)
    info = probe(video)
    if probe_audio(audio).duration < 0.05:
        raise LipsyncError(f"{audio} has no sound to sync to: give a file with speech in it")
    _check_checkpoint(checkpoint)
    face_choice(opts)  # a bad face choice fails before the model loads
    explicit = isinstance(opts.segments, str) and opts.segments.strip().lower() not in ("auto", "all")
    # editor ranges are checked before the model loads; auto segments need detection, which comes after
    segments = parse_ranges(opts.segments, info.fps, info.frames) if explicit else None
    renderer = ClipRenderer(checkpoint, opts, progress)  # a bad checkpoint fails here, before any long work

    segments = segments or resolve_segments(video, info, opts, progress, cancel, clock)
    face_segs = [s for s in segments if s.face]
    choices: list = []
    boxes = plan_boxes(video, info, opts, face_segs, progress, cancel, clock, report=choices)

    t0 = time.perf_counter()
    if opts.match == "audio":
        # the reference: one output frame per mel chunk of the whole audio; video cut or looped to it
        wav = A.load_audio(audio)
        mel = A.melspectrogram(wav)
        n_out = len(A.chunk_starts(mel.shape[1], info.fps))
        frames = np.arange(n_out) % info.frames
    else:
        n_out = info.frames
        wav = A.load_audio(audio, duration=n_out / info.fps)
        mel = A.melspectrogram(wav)
        frames = np.arange(n_out)
    clock.add("mel", t0)
    result = renderer.render(video, info, frames, boxes[frames], mel, audio, 0.0, output, cancel, clock)
    total = time.perf_counter() - t_start
    seg = segments_to_dict(segments, info.fps, info.frames)
    # "frames" stays the output's count (it differs from the source's with --match audio)
    result.update({"fps": seg["fps"], "segments": seg["segments"], "source_frames": info.frames})
    if choices:
        result["face_choices"] = choices
    result.update({"device": str(renderer.device), "dtype": str(renderer.dtype).replace("torch.", ""),
                   "seconds": total, "timings": dict(clock.seconds)})
    return result


def sync_clips(video: str, audio: str, checkpoint: str, clips: list[dict], opts: SyncOptions | None = None,
               progress: Progress | None = None, cancel: CancelToken | None = None) -> dict:
    """The Blender worker's job: several clips of one video, each with its own slice of the audio.

    clip: {"start_frame", "end_frame" (source frames, end exclusive), "audio_start" (seconds in the audio
    file for the clip's first frame), "output", "face" (lip-sync it, or only replace its sound), optional
    "face_choice" (which face: "speaker" | "largest" | "left" | "right" | "center" | {"point": [x, y]};
    default: the options' face / face_at)}.
    """
    from .faces.speaker import parse_choice
    from .media import probe, probe_audio

    opts = opts or SyncOptions()
    progress = progress or Progress()
    cancel = cancel or CancelToken()
    clock = StageClock()
    _check_encoding(opts)
    info = probe(video)
    probe_audio(audio)
    _check_checkpoint(checkpoint)
    for c in clips:
        _check_range(info, int(c["start_frame"]), int(c["end_frame"]))
        _check_output(c["output"], [video, audio, checkpoint])
    default = face_choice(opts)
    chosen = [parse_choice(c["face_choice"]) if c.get("face_choice") is not None else default for c in clips]
    renderer = ClipRenderer(checkpoint, opts, progress)
    clip_boxes: list = [None] * len(clips)
    clip_reports: list = [[] for _ in clips]
    for choice in dict.fromkeys(chosen):  # clips that choose alike share one planning pass
        mine = [k for k, ch in enumerate(chosen) if ch == choice]
        face_segs = [Segment(int(clips[k]["start_frame"]), int(clips[k]["end_frame"]), True)
                     for k in mine if clips[k].get("face", True)]
        rep: list = []
        planned = plan_boxes(video, info, opts, face_segs, progress, cancel, clock, choice, rep)
        for k in mine:
            s, e = int(clips[k]["start_frame"]), int(clips[k]["end_frame"])
            clip_boxes[k] = planned[s:e] if clips[k].get("face", True) else np.full((e - s, 4), -1, np.int32)
            clip_reports[k] = [r for r in rep if s <= r["start_frame"] < e]
    results, written = [], []
    try:
        for c in clips:
            s, e = int(c["start_frame"]), int(c["end_frame"])
            dur = (e - s) / info.fps
            wav = A.load_audio(audio, offset=float(c.get("audio_start", 0.0)), duration=dur)
            mel = A.melspectrogram(wav)
            r = renderer.render(video, info, np.arange(s, e), clip_boxes[len(results)], mel, audio,
                              float(c.get("audio_start", 0.0)), c["output"], cancel, clock)
            written.append(c["output"])
            r.update({"start_frame": s, "end_frame": e})
            if clip_reports[len(results)]:
                r["face_choices"] = clip_reports[len(results)]
            results.append(r)
    except BaseException:
        for path in written:  # all or nothing: a failed or cancelled job leaves no outputs behind
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    return {"clips": results, "fps": info.fps, "timings": dict(clock.seconds)}


def _check_output(output: str, inputs: list[str]) -> None:
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise LipsyncError(f"the output folder {folder} does not exist: create it or choose another -o path")
    out = os.path.abspath(output)
    if any(os.path.exists(p) and os.path.abspath(p) == out for p in inputs):
        raise LipsyncError(f"the output {output} would overwrite an input: choose another -o path")


def _check_encoding(opts: SyncOptions) -> None:
    from .media import X264_PRESETS

    if opts.preset not in X264_PRESETS:
        raise LipsyncError(f"unknown x264 preset {opts.preset!r}: use one of {', '.join(X264_PRESETS)}")
    if not (isinstance(opts.crf, int) and 0 <= opts.crf <= 51):
        raise LipsyncError(f"crf {opts.crf!r} is out of range: use a whole number from 0 (lossless) to 51")


def _check_checkpoint(path: str) -> None:
    if not path:
        raise LipsyncError("no checkpoint given: pass --checkpoint PATH to wav2lip.pth or wav2lip_gan.pth "
                           "(see `python -m lipsync_core weights list`)")
    if not os.path.isfile(path):
        raise LipsyncError(f"checkpoint not found: {path}. Download it with "
                           "`python -m lipsync_core weights download wav2lip_gan` or give its path")

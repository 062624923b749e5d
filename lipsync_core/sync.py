"""Lip-sync a video (`sync`) or a job's clips (`sync_clips`), and find face segments (`find_segments`):
decode -> detect/track -> mel -> generator -> composite -> encode, as streams (`ClipRenderer` renders a clip).

Two passes over the video, both streamed: a cheap analysis pass (downscaled frames, detection on keyframes,
cached per file) gives one box per frame, a few bytes each; the render pass decodes full frames, batches the
face frames through the generator and writes every frame to the encoder in order. Memory is bounded by the
batch size, not by the clip's length.
"""

from __future__ import annotations

import dataclasses
import functools
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
from .yuv420 import Yuv420

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
    # x264 speed/size trade; "auto": superfast up to 1280x720, ultrafast above (media.encoder.x264_preset_for)
    preset: str = "auto"
    # the result's encoding (media.encoder.CODECS): "h264" (.mp4), "prores" (422 HQ, .mov), "ffv1" (lossless, .mkv)
    codec: str = "h264"
    # the result has the source's exact size: an odd size H.264 / FFV1 cannot hold in 4:2:0 is written in full
    # chroma (yuv444p) instead of padded (the add-on's results replace movies pixel for pixel; ProRes still pads)
    exact_size: bool = False


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


def find_segments_many(clips: list[dict], opts: SyncOptions | None = None, progress: Progress | None = None,
                       cancel: CancelToken | None = None) -> dict:
    """`find_segments` for several ranges of several files in one process (each file analysed once, cached):
    clip {"video", "start_frame", "end_frame", optional "face_choice"} -> {"clips": [find_segments' answer, ...]}."""
    progress = progress or Progress()
    out = []
    for i, c in enumerate(clips):
        video = str(c.get("video") or "")
        if not video or not os.path.isfile(video):
            raise LipsyncError(f"a clip's video is missing: {video or '(none)'}")
        out.append(find_segments(video, clip_options(opts, c), int(c.get("start_frame") or 0), c.get("end_frame"),
                                 _CutProgress(progress, i + 1, len(clips)), cancel))
    return {"clips": out}


def clip_options(opts: SyncOptions | None, clip: dict) -> SyncOptions:
    """The options with a clip's own "face_choice" ("speaker", "largest", ... or {"point": [x, y]}) applied."""
    from dataclasses import replace

    from .faces.speaker import parse_choice

    opts = opts or SyncOptions()
    if clip.get("face_choice") is None:
        return opts
    choice = clip["face_choice"]
    parse_choice(choice)  # refuses a bad value with a message
    if isinstance(choice, dict):
        return replace(opts, face_at=tuple(float(v) for v in choice["point"]))
    return replace(opts, face=str(choice), face_at=None)


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
        from .composite import Compositor
        from .device import FP32, faster_precisions, pick_device, pick_precision
        from .inference import FaceGenerator, default_batch_size
        from .media.encoder import codec_of, is_lossless
        from .model import load_model

        self.opts = opts
        self.progress = progress or Progress()
        self.device = pick_device(opts.device)
        forced = pick_precision(self.device)
        model = load_model(checkpoint, device=self.device)
        self.compositor = Compositor(opts.blend)
        # only the face rows the blend reads are generated (the lower half for feather); every run starts in fp32
        self.generator = FaceGenerator(model, self.device, forced or FP32,
                                       first_row=self.compositor.first_row_used())
        del model  # the generator holds a folded copy
        self.batch_size = opts.batch_size or default_batch_size(self.device)
        self.precision: dict = {"chosen_by": "LIPSYNC_PRECISION" if forced else "default"}
        self._candidates = []  # faster precisions still to be judged on the first batch (precision.py)
        if forced is None and is_lossless(opts.codec, opts.crf):
            # nothing in a lossless result hides a difference: exact fp32
            self.precision = {"chosen_by": "lossless output"}
            codec = codec_of(opts.codec)
            self.progress.log(f"precision: fp32 ({codec.label}{' at crf 0' if codec.name == 'h264' else ''} "
                              "is lossless)")
        elif forced is None:
            # CUDA fp16 and native-bf16 CPUs: kept only if the first batch shows them below what the encoding
            # does anyway; that batch itself runs in fp32
            self._candidates = faster_precisions(self.device)
        self.progress.log(f"generator on {self.device} ({self.generator.precision.name}), batch {self.batch_size}")

    @property
    def dtype(self) -> str:
        """The precision's name: fp32, bf16, fp16, bf16-decoder or fp16-decoder."""
        return self.generator.precision.name

    def _predict(self, mels, crops, clock, judge_with=None):
        t0 = time.perf_counter()
        out = self.generator.predict(mels, crops)
        t0 = clock.add("generator", t0)
        if self._candidates and judge_with is not None:
            candidates, self._candidates = self._candidates, []
            self._choose_precision(candidates, mels, crops, out, *judge_with)
            clock.add("precision", t0)
        return out

    def _choose_precision(self, candidates, mels, crops, exact, items, encode, colour, encoding: str) -> None:
        """Judge the faster precisions on this batch, fastest first (precision.judge), and keep the first that
        passes, or fp32, for the rest of the run."""
        from .device import FP32
        from .precision import judge

        if isinstance(colour, Yuv420):  # judged in BGR, as the decoder shows the frames (the BGR path's measure)
            items = _bgr_windows(colour, items)
            encode, colour = functools.partial(encode, frame_format_="bgr24"), None
        frames = [f for _, f, _ in items]
        boxes = [b for _, _, b in items]
        encoded = []  # the encoder's round trip of the fp32 frames: the same for every candidate
        tried = []
        for candidate in candidates:
            self.generator.precision = candidate
            try:
                fast_out = self.generator.predict(mels, crops)
            finally:
                self.generator.precision = FP32
            verdict = judge(frames, boxes, exact, fast_out, self.compositor, encode, colour, encoded)
            tried.append({"precision": candidate.name, "kept": verdict.keep_fast, **verdict.as_dict()})
            self.progress.log(verdict.describe(candidate.name, encoding))
            if verdict.keep_fast:
                self.generator.precision = candidate
                break
        self.precision = {"chosen_by": "first batch", "tried": tried}

    def render(self, video: str, info, frames: np.ndarray, boxes: np.ndarray, mel: np.ndarray,
               audio_path: str, audio_start: float, output: str, cancel: CancelToken | None = None,
               clock: StageClock | None = None) -> dict:
        """Write `output`: source frames `frames` (indices, in order) with the mouth redone where boxes >= 0.

        boxes: (len(frames), 4) int, -1 rows pass through. mel: for this clip, frame k uses mel chunk k.
        """
        from .media import VideoEncoder, encoded_size
        from .media.encoder import codec_of, output_pix_fmt, x264_preset_for

        codec = codec_of(self.opts.codec)
        frame_format, colour = frame_format_for(codec, info, self.opts.exact_size)
        # the preset for the source's size, also for the precision check's small windows
        preset = x264_preset_for(self.opts.preset, info.width, info.height)
        enc_opts = {"crf": self.opts.crf, "preset": preset, "color_space": info.color_space,
                    "codec": codec.name, "frame_format": frame_format, "source_pix_fmt": info.pix_fmt,
                    "color_range": info.color_range, "exact_size": self.opts.exact_size}
        encoding = codec.label + (f" crf {self.opts.crf} {preset}" if codec.name == "h264" else "")

        def encode_roundtrip(frames_, frame_format_=frame_format):
            from .media import encode_roundtrip as roundtrip

            return roundtrip(frames_, info.fps_rational, **dict(enc_opts, frame_format=frame_format_))

        cancel = cancel or CancelToken()
        clock = clock or StageClock()
        n = len(frames)
        progress = self.progress
        progress.start("sync", n)
        pool = ThreadPoolExecutor(max_workers=1)  # generator runs while the main thread decodes/blends
        # crops and pastes of a batch's frames, side by side (a converting 4:2:0 paste weighs more than a BGR one)
        workers = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
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
            pasted = [(frame, box) for _, frame, box in items if box is not None]
            # frames are pasted in parallel (OpenCV and numpy release the GIL); each thread writes its own frame
            if pasted:
                list(workers.map(lambda fb, face: self.compositor.paste(fb[0], face, fb[1], colour), pasted, faces))
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

                def crop(i):
                    crops[i] = _crop96(face_items[i][1], face_items[i][2], colour)

                list(workers.map(crop, range(len(face_items))))
                mels = A.mel_chunk_at(mel, np.array([k for k, _, _ in face_items]), info.fps)
                clock.add("crop", t0)
                judge_with = ((face_items, encode_roundtrip, colour, encoding)
                              if self._candidates else None)
                fut = pool.submit(self._predict, mels, crops, clock, judge_with)
            else:
                fut = pool.submit(lambda: None)
            flush_pending(enc)  # finish the previous batch while this one runs
            pending = (fut, items)

        try:
            contiguous = bool(n) and int(frames[-1]) - int(frames[0]) == n - 1
            with VideoEncoder(output, info.width, info.height, info.fps_rational, audio_path=audio_path,
                              audio_start=audio_start, n_frames=n, **enc_opts) as enc:
                for k, frame in enumerate(_frames_in_order(video, info, frames, contiguous, clock, frame_format)):
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
            workers.shutdown(wait=True, cancel_futures=True)
            progress.finish("sync")
        # 4:2:0 holds only even sizes (4:2:2 even widths): an odd source gets one extra column / row at the right /
        # bottom edge (unless exact_size chose full chroma). The picture starts at the file's pixel (0, 0); an
        # editor crops `pad` to line it up.
        keep = (info.width, info.height) if self.opts.exact_size else None
        out_w, out_h = encoded_size(info.width, info.height, output_pix_fmt(codec.name, info.pix_fmt, keep))
        return {"output": output, "frames": n, "face_frames": int(n_face), "size": [info.width, info.height],
                "pad": [out_w - info.width, out_h - info.height]}


def _frames_in_order(video, info, frames: np.ndarray, contiguous: bool, clock: StageClock,
                     pix_fmt: str = "bgr24"):
    """Decode the requested source frames in order; a looped clip (--match audio) re-opens the stream."""
    from .media import FrameReader

    if contiguous:
        runs = [(int(frames[0]), int(frames[-1]) + 1)]
    else:  # split into increasing runs (a loop restarts at 0)
        breaks = np.nonzero(np.diff(frames) != 1)[0] + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(frames, breaks)]
    for s, e in runs:
        with FrameReader(video, start_frame=s, end_frame=e, info=info, pix_fmt=pix_fmt) as reader:
            t0 = time.perf_counter()
            for frame in reader:
                t0 = clock.add("decode", t0)
                yield frame
                t0 = time.perf_counter()


def _bgr_windows(colour: Yuv420, items) -> list:
    """The precision check's frames from 4:2:0 ones: BGR of one same-sized window around each face box (with room
    for precision.ENCODE_MARGIN), boxes moved into it; converting whole 1080p frames cost more than the check."""
    from .precision import ENCODE_MARGIN, MEASURE_FRAMES

    items = items[:MEASURE_FRAMES]
    pad = 2 * ENCODE_MARGIN
    hh = min(colour.height, max(int(b[3] - b[1]) for _, _, b in items) + 2 * pad)
    ww = min(colour.width, max(int(b[2] - b[0]) for _, _, b in items) + 2 * pad)
    out = []
    for k, frame, box in items:
        x1, y1, x2, y2 = (int(v) for v in box)
        oy = min(max(0, (y1 - pad) // 2 * 2), colour.height - hh)
        ox = min(max(0, (x1 - pad) // 2 * 2), colour.width - ww)
        out.append((k, colour.region_bgr(frame, oy, oy + hh, ox, ox + ww), (x1 - ox, y1 - oy, x2 - ox, y2 - oy)))
    return out


def frame_format_for(codec, info, exact_size: bool = False):
    """How frames cross the pipes for this result, and the conversion the face pipeline uses on them:
    - ProRes / FFV1: the source's own Y'CbCr at 16 bits ("yuv444p16le", colour.YuvColour), so the pixels outside
      the mouth keep their samples and bit depth;
    - H.264 of an 8-bit 4:2:0 source of even size: its own planes ("yuv420p", yuv420.Yuv420): half the bytes of
      BGR, no conversion outside the face crop and the mouth, every other sample passes through;
    - otherwise (10-bit or 4:2:2 sources, odd sizes, full-chroma results): BGR ("bgr24", None)."""
    from .colour import YuvColour
    from .media.encoder import output_pix_fmt

    if codec.faithful:
        return "yuv444p16le", YuvColour(info.color_space, info.color_range)
    keep = (info.width, info.height) if exact_size else None
    if (info.pix_fmt == "yuv420p" and not info.width % 2 and not info.height % 2
            and output_pix_fmt(codec.name, info.pix_fmt, keep) == "yuv420p"):
        return "yuv420p", Yuv420(info.width, info.height, info.color_space, info.color_range)
    return "bgr24", None


def _crop96(frame: np.ndarray, box, colour=None) -> np.ndarray:
    """The generator's 96x96 BGR uint8 input; a (3, H, W) Y'CbCr frame (with its colour.YuvColour) is
    converted in the box only, a 4:2:0 frame (with its yuv420.Yuv420) only where the resize reads."""
    import cv2

    x1, y1, x2, y2 = box
    if isinstance(colour, Yuv420):
        return colour.resized_bgr(frame, box, IMG)
    if colour is not None:
        return cv2.resize(colour.to_bgr8(frame[:, y1:y2, x1:x2]), (IMG, IMG))
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
         progress: Progress | None = None, cancel: CancelToken | None = None,
         renderer: ClipRenderer | None = None) -> dict:
    """Lip-sync `video` to `audio` into `output` (opts.codec: H.264, ProRes or FFV1). Returns a report.

    `renderer`: a ClipRenderer already loaded from `checkpoint` with these options (a batch reuses one)."""
    from .media import probe, probe_audio

    opts = opts or SyncOptions()
    progress = progress or Progress()
    cancel = cancel or CancelToken()
    clock = StageClock()
    t_start = time.perf_counter()
    _check_encoding(opts)
    _check_output(output, [video, audio, checkpoint], opts.codec)
    info = probe(video)
    if probe_audio(audio).duration < 0.05:
        raise LipsyncError(f"{audio} has no sound to sync to: give a file with speech in it")
    _check_checkpoint(checkpoint)
    face_choice(opts)  # a bad face choice fails before the model loads
    explicit = isinstance(opts.segments, str) and opts.segments.strip().lower() not in ("auto", "all")
    # editor ranges are checked before the model loads; auto segments need detection, which comes after
    segments = parse_ranges(opts.segments, info.fps, info.frames) if explicit else None
    renderer = renderer or ClipRenderer(checkpoint, opts, progress)  # a bad checkpoint fails here, before any long work

    segments = segments or resolve_segments(video, info, opts, progress, cancel, clock)
    face_segs = [s for s in segments if s.face]
    if not face_segs:  # not an error (a cut may have no face), but rarely what someone asking for lip sync wants
        progress.log("warning: no face was found in any frame, so the result is the video with the new audio and "
                     "nothing lip-synced. If there is a face: try --detector sfd (python -m lipsync_core weights "
                     "download s3fd), raise --detect-width for small faces, or give --box X1 Y1 X2 Y2")
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
    result.update({"device": str(renderer.device), "dtype": renderer.dtype,
                   "precision": renderer.precision,
                   "seconds": total, "timings": dict(clock.seconds)})
    return result


def sync_clips(video: str, audio: str, checkpoint: str, clips: list[dict], opts: SyncOptions | None = None,
               progress: Progress | None = None, cancel: CancelToken | None = None,
               renderer: ClipRenderer | None = None) -> dict:
    """The Blender worker's job: several clips of one video, each with its own slice of the audio.

    clip: {"start_frame", "end_frame" (source frames, end exclusive), "audio_start" (seconds in the audio
    file for the clip's first frame), "output", "face" (lip-sync it, or only replace its sound), optional
    "face_choice" (which face: "speaker" | "largest" | "left" | "right" | "center" | {"point": [x, y]};
    default: the options' face / face_at)}.
    `renderer`: as for sync().
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
        _check_output(c["output"], [video, audio, checkpoint], opts.codec)
    default = face_choice(opts)
    chosen = [parse_choice(c["face_choice"]) if c.get("face_choice") is not None else default for c in clips]
    renderer = renderer or ClipRenderer(checkpoint, opts, progress)
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
        _remove_files(written)  # all or nothing: a failed or cancelled job leaves no outputs behind
        raise
    return {"clips": results, "fps": info.fps, "timings": dict(clock.seconds)}


def _remove_files(paths: list[str]) -> None:
    """Remove what a job wrote, ignoring what is already gone."""
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _check_output(output: str, inputs: list[str], codec: str = "h264") -> None:
    from .media.encoder import check_output_name

    check_output_name(output, codec)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise LipsyncError(f"the output folder {folder} does not exist: create it or choose another -o path")
    out = os.path.abspath(output)
    if any(os.path.exists(p) and os.path.abspath(p) == out for p in inputs):
        raise LipsyncError(f"the output {output} would overwrite an input: choose another -o path")


def _check_encoding(opts: SyncOptions) -> None:
    from .media import X264_PRESETS
    from .media.encoder import AUTO_PRESET, codec_of

    codec_of(opts.codec)
    if opts.preset != AUTO_PRESET and opts.preset not in X264_PRESETS:
        raise LipsyncError(f"unknown x264 preset {opts.preset!r}: use {AUTO_PRESET} (the default) or one of "
                           f"{', '.join(X264_PRESETS)}")
    if not (isinstance(opts.crf, int) and 0 <= opts.crf <= 51):
        raise LipsyncError(f"crf {opts.crf!r} is out of range: use a whole number from 0 (lossless) to 51")


def _check_checkpoint(path: str) -> None:
    if not path:
        raise LipsyncError("no checkpoint given: pass --checkpoint PATH to wav2lip.pth or wav2lip_gan.pth "
                           "(see `python -m lipsync_core weights list`)")
    if not os.path.isfile(path):
        raise LipsyncError(f"checkpoint not found: {path}. Download it with "
                           "`python -m lipsync_core weights download wav2lip_gan` or give its path")


# ----------------------------------------------------------------------------------------------- the edit


class _CutProgress(Progress):
    """Progress of one cut inside a job of many: stages read "cut 3 of 12: sync" (done/total stay the cut's)."""

    def __init__(self, inner: Progress, index: int, count: int) -> None:
        self.inner, self.prefix = inner, f"cut {index} of {count}: "

    def start(self, stage, total):
        self.inner.start(self.prefix + stage, total)

    def advance(self, stage, n=1):
        self.inner.advance(self.prefix + stage, n)

    def finish(self, stage):
        self.inner.finish(self.prefix + stage)

    def log(self, message):
        self.inner.log(self.prefix + message)


def _gain(volume, n: int) -> np.ndarray | float:
    """A part's volume: one number, or one per video frame of the part (keyframed), linear in between."""
    if not isinstance(volume, list | tuple):
        return float(volume)
    v = np.asarray(volume, np.float32)
    if len(v) == 1 or n == 0:
        return float(v[0]) if len(v) else 1.0
    pos = np.arange(n, dtype=np.float64) * len(v) / n  # sample -> frame position
    return np.interp(pos, np.arange(len(v)), v).astype(np.float32)


def mix_dub(parts: list[dict], seconds: float, sr: int = A.SAMPLE_RATE) -> np.ndarray:
    """What plays under a cut: each part {"file", "from" (seconds in the file), "at" (seconds into the cut),
    "seconds", "volume" (a number, or one per video frame of the part)} decoded at `sr` mono, scaled and summed
    into `seconds` of silence."""
    n = int(round(seconds * sr))
    mix = np.zeros(n, np.float32)
    for p in parts:
        at = int(round(float(p["at"]) * sr))
        if at >= n:
            continue
        dur = min(float(p["seconds"]), (n - at) / sr)
        wav = A.load_audio(str(p["file"]), sr=sr, offset=float(p.get("from", 0.0)), duration=dur)
        full = int(round(float(p["seconds"]) * sr))  # the envelope spans the whole part, even if cut short here
        gain = _gain(p.get("volume", 1.0), full)
        wav = wav * (gain[: len(wav)] if isinstance(gain, np.ndarray) else gain)
        lo = max(at, 0)
        wav = wav[lo - at : lo - at + n - lo]
        mix[lo : lo + len(wav)] += wav
    return mix


def _write_wav(path: str, samples: np.ndarray, sr: int) -> None:
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def _face_ranges(clip: dict, start: int, end: int, track, fps: float, opts: SyncOptions) -> list[Segment]:
    """The clip's segments (source frames inside [start, end)): detected ("auto"), the whole clip ("all"), or
    given, where a segment with `face: null` shows a face when it does on at least half of its frames."""
    spec = clip.get("segments", "all")
    if spec == "all":
        return [Segment(start, end, True)]
    if spec == "auto":
        segs = _auto_segments(presence(track)[start:end], fps, opts)
        return [Segment(s.start_frame + start, s.end_frame + start, s.face) for s in segs]
    out = []
    for row in spec:
        s, e = max(int(row["start_frame"]), start), min(int(row["end_frame"]), end)
        if e <= s:
            continue
        face = row.get("face")
        if face is None:
            face = bool(track is not None and presence(track)[s:e].mean() >= 0.5)
        out.append(Segment(s, e, bool(face)))
    return out


def sync_edit(checkpoint: str, clips: list[dict], opts: SyncOptions | None = None,
              progress: Progress | None = None, cancel: CancelToken | None = None,
              renderer: ClipRenderer | None = None) -> dict:
    """The add-on's job for a whole edit: many clips from many source files, one model load.

    clip: {"video", "start_frame", "end_frame" (source frames, end exclusive), "output", "segments" ("auto",
    "all" or [{"start_frame", "end_frame", "face": true|false|null}]), "dub" ([{"file", "from", "at",
    "seconds", "volume"}]: what plays under the clip), "sync_ranges" ([[s, e], ...] source frames where the dub
    plays; the mouth is redone only there, on frames showing a face), optional "face_choice" (as in
    sync_clips)}. Each output holds every frame of its
    range; frames outside face ranges keep their picture. Face detection runs once per source file.
    `renderer`: as for sync() (a batch's cut jobs reuse one).
    """
    from .faces.track import face_boxes
    from .media import probe, probe_audio

    opts = opts or SyncOptions()
    progress = progress or Progress()
    cancel = cancel or CancelToken()
    clock = StageClock()
    _check_encoding(opts)
    _check_checkpoint(checkpoint)
    progress.start("checking the inputs", len(clips))  # the first event: the press sees the engine is up
    infos: dict[str, object] = {}
    sounds: set[str] = set()
    for c in clips:
        video = str(c.get("video") or "")
        if not video or not os.path.isfile(video):
            raise LipsyncError(f"a clip's video is missing: {video or '(none)'}")
        if video not in infos:
            infos[video] = probe(video)
        _check_range(infos[video], int(c["start_frame"]), int(c["end_frame"]))
        for part in c.get("dub") or []:
            if str(part["file"]) not in sounds:  # a dub file serves many clips: read its header once
                probe_audio(str(part["file"]))
                sounds.add(str(part["file"]))
        _check_output(c["output"], [video, checkpoint] + [str(p["file"]) for p in c.get("dub") or []])
        progress.advance("checking the inputs")
    if renderer is None:
        progress.start("loading the model", None)
        renderer = ClipRenderer(checkpoint, opts, progress)
    tracks: dict[str, object] = {}
    boxes_of: dict[str, np.ndarray] = {}

    def boxes_for(video: str, where: Progress) -> np.ndarray:
        if video not in boxes_of:
            info = infos[video]
            if opts.box is not None:
                from .faces.track import fixed_boxes

                boxes_of[video] = fixed_boxes(info.frames, opts.box, info.width, info.height)
            else:
                track = track_for(video, where)
                boxes_of[video] = face_boxes(track, pads=opts.pads, smooth=opts.smooth,
                                             max_gap=int(round(opts.max_gap_seconds * info.fps)))
        return boxes_of[video]

    def track_for(video: str, where: Progress = progress):
        if video not in tracks:
            tracks[video] = analyze_faces(video, opts, infos[video], where, cancel, clock)
        return tracks[video]

    results, written, temps = [], [], []
    try:
        for i, c in enumerate(clips):
            video = str(c["video"])
            info = infos[video]
            s, e = int(c["start_frame"]), int(c["end_frame"])
            sub = _CutProgress(progress, i + 1, len(clips))
            renderer.progress = sub
            needs_track = c.get("segments", "all") != "all" and opts.box is None
            segs = _face_ranges(c, s, e, track_for(video, sub) if needs_track else None, info.fps, opts)
            want = np.zeros(e - s, bool)
            for seg in segs:
                if seg.face:
                    want[seg.start_frame - s : seg.end_frame - s] = True
            dubbed = np.zeros(e - s, bool)
            for lo, hi in c.get("sync_ranges", [[s, e]]):
                dubbed[max(int(lo), s) - s : max(min(int(hi), e), s) - s] = True
            want &= dubbed
            clip_boxes = np.full((e - s, 4), -1, np.int32)
            choices: list = []
            if want.any():
                copts = clip_options(opts, c)
                if c.get("face_choice") is not None and opts.box is None and copts != opts:
                    face_segs = [Segment(g.start_frame, g.end_frame, True) for g in segs if g.face]
                    every = plan_boxes(video, info, copts, face_segs, sub, cancel, clock, report=choices)[s:e]
                else:
                    every = boxes_for(video, sub)[s:e]
                clip_boxes[want] = every[want]
                missing = int((want & (every[:, 0] < 0)).sum())
                if missing:
                    sub.log(f"{missing} frames of a face segment have no face found and keep their picture")
            cancel.check()
            t0 = time.perf_counter()
            seconds = (e - s) / info.fps
            mel = A.melspectrogram(mix_dub(c.get("dub") or [], seconds))
            mux = f"{c['output']}.dub.wav"  # the dub as heard, muxed into the output for review
            temps.append(mux)
            _write_wav(mux, mix_dub(c.get("dub") or [], seconds, sr=48000), 48000)
            clock.add("mel", t0)
            r = renderer.render(video, info, np.arange(s, e), clip_boxes, mel, mux, 0.0, c["output"], cancel, clock)
            written.append(c["output"])
            if choices:
                r["face_choices"] = choices
            r.update({"video": video, "start_frame": s, "end_frame": e, "fps": info.fps,
                      "segments": [{"start_frame": g.start_frame, "end_frame": g.end_frame, "face": g.face}
                                   for g in segs]})
            results.append(r)
    except BaseException:
        _remove_files(written)  # all or nothing: a failed or cancelled job leaves no outputs behind
        raise
    finally:
        renderer.progress = progress
        _remove_files(temps)
    return {"clips": results, "timings": dict(clock.seconds)}

"""Made media for the tests, the demo and the bench, generated with ffmpeg, espeak-ng and scikit-image.

Kept small (320x240, a few seconds) so the suite stays quick on two cores.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from lipsync_core.media import ffmpeg_exe

W, H = 320, 240


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def astronaut_frames(n: int, w: int = W, h: int = H, motion: float = 4.0) -> np.ndarray:
    """n BGR frames (n, h, w, 3) uint8 of the astronaut photo's face with a gentle drift.

    The source's face (about x 150-290, y 40-200 in the 512x512 photo) lands roughly in the middle.
    """
    import cv2
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        dx = motion * np.sin(2 * np.pi * i / 50.0)
        dy = motion * 0.5 * np.cos(2 * np.pi * i / 50.0)
        # crop a 4:3 window around the face, shifted a little each frame, scaled to w x h
        x0, y0, cw = 60 + dx, 0 + dy, 320
        ch = cw * h / w
        m = np.array([[w / cw, 0, -x0 * w / cw], [0, h / ch, -y0 * h / ch]], np.float32)
        frames[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames


def astronaut_moving_frames(n: int, w: int = W, h: int = H, tilt: float = 20.0) -> np.ndarray:
    """n BGR frames of the astronaut's face moving as a speaker's head does: tilting +-`tilt` degrees (2 s a
    swing at 25 fps), sliding across the frame and back, and coming closer and going back."""
    import cv2
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    centre = (225.0, 124.0)  # the face's middle in the 512x512 photo
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        angle = tilt * np.sin(2 * np.pi * i / 50)
        zoom = h / 300 * (1.0 + 0.3 * np.sin(2 * np.pi * i / 90))
        m = cv2.getRotationMatrix2D(centre, angle, zoom)
        target = (w * (0.5 + 0.2 * np.sin(2 * np.pi * i / 120)), h * (0.45 + 0.05 * np.cos(2 * np.pi * i / 70)))
        m[:, 2] += np.array(target) - m @ np.array([*centre, 1.0])
        frames[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames


def noface_frames(n: int, w: int = W, h: int = H) -> np.ndarray:
    """n BGR frames with no face: a moving colour gradient with a few rectangles."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (xx / w * 200 + i) % 256
        frames[i, ..., 1] = (yy / h * 200) % 256
        frames[i, ..., 2] = 90
        x = 20 + (i * 3) % (w - 80)
        frames[i, 60:120, x : x + 60] = (30, 200, 240)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: str = "25", audio: Path | None = None) -> Path:
    """Encode BGR frames as H.264 (+ AAC from `audio`, cut to the video) at a rational fps like '30000/1001'."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", fps, "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-af", "apad", "-shortest"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12", "-preset", "veryfast", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def tone_wav(path: Path, seconds: float, freq: float = 440.0, sr: int = 44100) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={sr}:duration={seconds}", "-ac", "1", str(path))
    return path


def speech_wav(path: Path, text: str = "Hello editors. This line was replaced, and the lips follow the new words.",
               seconds: float | None = None) -> Path:
    """Spoken English via espeak-ng (resampled to 16 kHz mono); a chirpy tone when espeak-ng is missing."""
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    raw = path.with_suffix(".raw.wav")
    if espeak:
        subprocess.run([espeak, "-w", str(raw), text], check=True, capture_output=True)
    else:
        _ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:duration=4:beep_factor=4", str(raw))
    extra = ["-af", f"apad=whole_dur={seconds}", "-t", str(seconds)] if seconds else []
    _ffmpeg("-i", str(raw), "-ar", "16000", "-ac", "1", *extra, str(path))
    raw.unlink(missing_ok=True)
    return path


# ffmpeg filters that make a still-standing speaker move like a real one
TILT = "rotate='0.3*sin(2*PI*t/3.3)+0.1*sin(2*PI*t/1.1)':fillcolor=0x404040"  # up to +-23 degrees, uneven
PAN = ("zoompan=z='1.35+0.3*sin(on/17)':x='(iw-iw/zoom)/2*(1+sin(on/11))':y='(ih-ih/zoom)/2*(1+cos(on/13))'"
       ":d=1:s={w}x{h}:fps=25")  # the face slides across the frame and back, closer and further


def glasses(eye_y: float, eye_h: float, x1: float, x2: float, x3: float, tint: float = 0.45) -> str:
    """An ffmpeg filter that draws glasses (tinted lenses, thick dark rims, a bridge) over a face that stays
    about in place: eye line at `eye_y`..`eye_y + eye_h`, lenses from x1 to x2 and x2 to x3 (frame fractions)."""
    out = []
    for a, b in ((x1, x2), (x2, x3)):
        box = f"x=iw*{a}:y=ih*{eye_y}:w=iw*{b - a - 0.01:.3f}:h=ih*{eye_h}"
        out += [f"drawbox={box}:color=black@{tint}:t=fill", f"drawbox={box}:color=black:t=6"]
    out.append(f"drawbox=x=iw*{x2 - 0.01:.3f}:y=ih*{eye_y + 0.02:.3f}:w=iw*0.01:h=ih*0.012:color=black:t=fill")
    return ",".join(out)


def moved_face_then_noface(path: Path, source: Path, size: str, vf: str, face_frames: int,
                           noface_frames: int = 25) -> Path:
    """`face_frames` frames of `source` (WxH `size`) through the filter `vf`, then a cut to `noface_frames` of
    testsrc2 (no face)."""
    _ffmpeg("-i", str(source), "-f", "lavfi", "-i", f"testsrc2=s={size}:r=25", "-filter_complex",
            f"[0:v]{vf},trim=end_frame={face_frames},setpts=PTS-STARTPTS,format=yuv420p,setsar=1[a];"
            f"[1:v]trim=end_frame={noface_frames},format=yuv420p,setsar=1[n];[a][n]concat=n=2:v=1[v]",
            "-map", "[v]", "-c:v", "libx264", "-crf", "16", "-preset", "veryfast", str(path))
    return path


def face_noface_face_clip(path: Path, n_face1: int = 40, n_noface: int = 30, n_face2: int = 40,
                          fps: str = "25", audio: Path | None = None) -> Path:
    frames = np.concatenate([astronaut_frames(n_face1), noface_frames(n_noface),
                             astronaut_frames(n_face2)[::-1]])
    return write_video(path, frames, fps=fps, audio=audio)


def deep_frames(n: int, w: int = W, h: int = H) -> np.ndarray:
    """astronaut_frames as 16-bit BGR (n, h, w, 3) uint16 with detail below 8 bits (a fine ramp), so a file made
    from them uses its 10 bits and an 8-bit detour shows."""
    frames = astronaut_frames(n, w, h).astype(np.int32) * 257
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx * 7 + yy * 3) % 256 - 128)[None, :, :, None]
    return np.clip(frames + ramp, 0, 65535).astype(np.uint16)


def write_deep_video(path: Path, frames: np.ndarray, pix_fmt: str = "yuv422p10le", vcodec: str = "prores_ks",
                     fps: str = "25") -> Path:
    """Encode 16-bit BGR frames (deep_frames) as `vcodec` in `pix_fmt` (e.g. a 10-bit ProRes or FFV1 source)."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr48le",
           "-s", f"{w}x{h}", "-r", fps, "-i", "-", "-pix_fmt", pix_fmt, "-c:v", vcodec, str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def syllables(n: int, seed: int = 0) -> np.ndarray:
    """A speech-like loudness per frame (0..1) for n frames: bursts of 3-8 frames with pauses between."""
    rng = np.random.default_rng(seed)
    env = np.zeros(n)
    i = int(rng.integers(2, 6))
    while i < n:
        k = int(rng.integers(3, 9))
        env[i:i + k] = np.sin(np.linspace(0, np.pi, k)) * rng.uniform(0.5, 1.0)
        i += k + int(rng.integers(2, 8))
    return env


def two_faces_one_speaking(path: Path, speaker: str = "left", seconds: float = 4.0, seed: int = 0,
                           sound: bool = True) -> Path:
    """Two astronaut faces side by side (480x240, 25 fps); the `speaker` one ("left" / "right") opens its mouth
    (the chin and lips pulled down) with a syllable envelope that also drives the sound (a 220 Hz voice-like
    buzz, mono), so it is the face whose mouth follows the clip's own sound."""
    import cv2

    n = int(round(seconds * 25))
    face = astronaut_frames(n, 240, 240, motion=1.0)
    other = astronaut_frames(n, 240, 240, motion=1.5)[:, :, ::-1]  # mirrored: a second person
    env = syllables(n, seed)
    talk = face.copy()
    for i in range(n):  # the mouth and chin (about y 96-132, x 95-150) stretched down by up to 8 px
        drop = 8.0 * env[i]
        y0, y1, x0, x1 = 96, 132, 95, 150
        region = talk[i, y0:y1, x0:x1]
        grown = cv2.resize(region, (x1 - x0, int(round((y1 - y0) + drop))), interpolation=cv2.INTER_LINEAR)
        talk[i, y0:y1, x0:x1] = grown[: y1 - y0]
    left, right = (talk, other) if speaker == "left" else (other, talk[:, :, ::-1])
    frames = np.concatenate([left, right], axis=2)
    audio = None
    if sound:
        sr = 16000
        t = np.arange(int(seconds * sr)) / sr
        amp = np.interp(t, (np.arange(n) + 0.5) / 25, env)
        voice = np.sign(np.sin(2 * np.pi * 220 * t)) * 0.3 + np.sin(2 * np.pi * 660 * t) * 0.2
        wav = (voice * amp * 0.8 * 32767).astype(np.int16)
        audio = path.with_suffix(".voice.wav")
        import wave

        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(wav.tobytes())
    try:
        return write_video(path, frames, audio=audio)
    finally:
        if audio is not None:
            audio.unlink(missing_ok=True)

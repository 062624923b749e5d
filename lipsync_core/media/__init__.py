"""Media in and out through ffmpeg: find the binaries (`ffmpeg`), describe a file (`probe`), stream frames out
(`reader`) and into an H.264 + AAC file (`encoder`)."""

from .encoder import X264_PRESETS, VideoEncoder, encoded_size
from .ffmpeg import ffmpeg_exe, ffprobe_exe, run_ffmpeg
from .probe import AudioInfo, VideoInfo, probe, probe_audio
from .reader import FrameReader

__all__ = ["X264_PRESETS", "AudioInfo", "FrameReader", "VideoEncoder", "VideoInfo", "encoded_size", "ffmpeg_exe",
           "ffprobe_exe", "probe", "probe_audio", "run_ffmpeg"]

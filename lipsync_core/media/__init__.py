"""Media in and out through ffmpeg: find the binaries (`ffmpeg`), describe a file (`probe`), stream frames out
(`reader`) and into a result file (`encoder`: H.264, ProRes or FFV1)."""

from .encoder import CODECS, X264_PRESETS, VideoEncoder, encode_roundtrip, encoded_size, output_pix_fmt
from .ffmpeg import ffmpeg_exe, ffprobe_exe, run_ffmpeg
from .probe import AudioInfo, VideoInfo, probe, probe_audio
from .reader import FrameReader

__all__ = ["CODECS", "X264_PRESETS", "AudioInfo", "FrameReader", "VideoEncoder", "VideoInfo", "encode_roundtrip",
           "encoded_size", "ffmpeg_exe", "ffprobe_exe", "output_pix_fmt", "probe", "probe_audio", "run_ffmpeg"]

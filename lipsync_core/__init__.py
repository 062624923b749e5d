"""lipsync_core: a streaming Wav2Lip lip-sync engine.

Never imports bpy. Heavy modules (torch, cv2, librosa) are imported by the submodules that need them,
so `import lipsync_core` stays cheap for the Blender side and for `--help`.
"""

__version__ = "0.1.0"

from .errors import Cancelled, LipsyncError  # noqa: E402,F401

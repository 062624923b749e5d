"""Face detection, tracking and the detection cache (see docs/CONTRACTS.md).

Submodules import torch/cv2 lazily where they can, so importing this package stays cheap.
"""

from .cache import load_track, save_track  # noqa: F401
from .detectors import DETECTOR_NAMES, DETECTORS, Detector, get_detector  # noqa: F401
from .track import FaceTrack, face_boxes, fixed_boxes, track_faces  # noqa: F401

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHARED_MEDIA = ROOT.parent / "shared" / "media"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def shared_media():
    if not (SHARED_MEDIA / "talking_head_a.mp4").exists():
        pytest.skip(f"real footage not found at {SHARED_MEDIA} (see shared/media/README.md)")
    return SHARED_MEDIA

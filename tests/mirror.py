"""A local weights mirror for tests: http.server on 127.0.0.1 serving a random-weight wav2lip.pth, named in
LIPSYNC_WEIGHTS_MIRRORS (the real download code runs; the internet is never reached)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_wav2lip(tmp_path: Path, checkpoint, monkeypatch):
    """Generator for a pytest fixture: yields the served folder, shuts the server down afterwards."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(checkpoint, served / "wav2lip.pth")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRRORS", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()

"""Checkpoint registry, download (local HTTP server on 127.0.0.1 and a fake opener), verify, CLI commands."""

import argparse
import dataclasses
import hashlib
import http.server
import io
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from lipsync_core import weights as w
from lipsync_core.errors import LipsyncError
from tools.random_weights import shared_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    """The bytes of a random-weight checkpoint in the official layout (~145 MB)."""
    return shared_checkpoint(tmp_path_factory, "official").read_bytes()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict  # "/name" -> bytes
    log: list  # (mode, path, Range header) per request


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<file>. Modes: ok (honours Range), norange (ignores it), short (sends the first half as if
    it were everything), flip (whole length, some bytes changed), cut (promises everything, sends half, closes),
    stall (sleeps past the client's timeout), gone (404)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        _, mode, name = self.path.split("/", 2)
        rng = self.headers.get("Range")
        self.server.log.append((mode, name, rng))
        data = self.server.files.get("/" + name)
        if mode == "gone" or data is None:
            self.send_error(404, "Not Found")
            return
        if mode == "stall":
            time.sleep(1.5)
        if mode == "short":
            data = data[: len(data) // 2]
        if mode == "flip":
            mid = len(data) // 2
            data = data[:mid] + bytes(b ^ 0xFF for b in data[mid: mid + 64]) + data[mid + 64:]
        start = 0
        if rng and mode in ("ok", "cut", "flip"):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = memoryview(data)[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            body = body[: len(body) // 2]
        try:
            for i in range(0, len(body), 1 << 20):
                self.wfile.write(body[i: i + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        if mode == "cut":
            self.close_connection = True


@pytest.fixture(scope="module")
def server(blob):
    srv = Server(("127.0.0.1", 0), Handler)
    srv.files = {"/wav2lip.pth": blob, "/hashed.pth": blob}
    srv.log = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def hashed(monkeypatch, blob):
    """A registry entry with a recorded size and sha256 (the random checkpoint's), like wav2lip_gan."""
    entry = dataclasses.replace(w.KNOWN["wav2lip_gan"], name="hashed", filename="hashed.pth", size=len(blob),
                                sha256=hashlib.sha256(blob).hexdigest(), urls=())
    monkeypatch.setitem(w.KNOWN, "hashed", entry)
    return entry


@pytest.fixture(autouse=True)
def no_user_mirrors(monkeypatch):
    monkeypatch.delenv("LIPSYNC_WEIGHTS_MIRRORS", raising=False)
    monkeypatch.delenv("LIPSYNC_CHECKPOINTS", raising=False)


# -- registry --------------------------------------------------------------------------------------------


def test_registry():
    assert set(w.KNOWN) == {"wav2lip", "wav2lip_gan", "s3fd"}
    s3fd = w.KNOWN["s3fd"]
    assert s3fd.filename == "s3fd-619a316812.pth" and s3fd.sha256.startswith(s3fd.sha256_prefix)
    assert s3fd.urls[0].endswith("/" + s3fd.filename)  # face-alignment's own address first
    for entry in w.KNOWN.values():
        assert len(entry.urls) >= 2 and all(u.startswith("https://") for u in entry.urls)
        assert entry.sha256 is None or len(entry.sha256) == 64
    assert "non-commercial" in w.KNOWN["wav2lip"].licence and "BSD-3" in s3fd.licence
    with pytest.raises(LipsyncError, match="known ones are wav2lip, wav2lip_gan, s3fd"):
        w.get("wav2lip_hd")


def test_default_dir_and_mirrors(monkeypatch, tmp_path):
    assert w.default_dir() == ROOT / "checkpoints"  # running from the checkout
    monkeypatch.setenv("LIPSYNC_CHECKPOINTS", str(tmp_path))
    assert w.default_dir() == tmp_path and w.path_for("s3fd") == tmp_path / "s3fd-619a316812.pth"

    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRRORS", "https://a.example/w/, https://b.example")
    urls = w.mirrors_for("wav2lip_gan")
    assert urls[:2] == ["https://a.example/w/wav2lip_gan.pth", "https://b.example/wav2lip_gan.pth"]
    assert urls[2:] == list(w.KNOWN["wav2lip_gan"].urls)

    mirrors = tmp_path / "m.json"
    mirrors.write_text('{"s3fd": ["https://c.example/x.pth"], "*": ["https://d.example"]}')
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRRORS", str(mirrors))
    assert w.mirrors_for("s3fd")[:2] == ["https://c.example/x.pth", "https://d.example/s3fd-619a316812.pth"]
    monkeypatch.delenv("LIPSYNC_WEIGHTS_MIRRORS")
    (tmp_path / "mirrors.json").write_text('{"wav2lip": ["https://e.example/w.pth"]}')
    assert w.mirrors_for("wav2lip")[0] == "https://e.example/w.pth"
    (tmp_path / "mirrors.json").write_text("[not json")
    with pytest.raises(LipsyncError, match="mirrors file"):
        w.mirrors_for("wav2lip")


# -- download over HTTP ----------------------------------------------------------------------------------


def test_full_download(server, tmp_path, blob):
    seen = []
    path = w.download("wav2lip", tmp_path, urls=[f"{server.url}/ok/wav2lip.pth"],
                      progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "wav2lip.pth" and path.read_bytes() == blob
    assert not (tmp_path / "wav2lip.pth.part").exists()
    assert seen[-1] == (len(blob), len(blob)) and len(seen) > 10
    # Present and valid: nothing is fetched again.
    assert w.download("wav2lip", tmp_path, opener=pytest.fail) == path


def test_resume_with_range(server, tmp_path, blob, hashed):
    part = tmp_path / "hashed.pth.part"
    part.write_bytes(blob[: len(blob) // 2])
    server.log.clear()
    path = w.download("hashed", tmp_path, urls=[f"{server.url}/ok/hashed.pth"])
    assert path.read_bytes() == blob and not part.exists()
    assert server.log == [("ok", "hashed.pth", f"bytes={len(blob) // 2}-")]


def test_server_ignoring_range_starts_over(server, tmp_path, blob, hashed):
    (tmp_path / "hashed.pth.part").write_bytes(b"\0" * 1000)  # would corrupt the file if appended to
    server.log.clear()
    path = w.download("hashed", tmp_path, urls=[f"{server.url}/norange/hashed.pth"])
    assert path.read_bytes() == blob
    assert server.log == [("norange", "hashed.pth", "bytes=1000-")]


def test_bad_leftover_part_gets_one_clean_retry(server, tmp_path, blob):
    # No recorded hash for wav2lip: a wrong first half is only caught by the structure check after resuming.
    (tmp_path / "wav2lip.pth.part").write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    server.log.clear()
    path = w.download("wav2lip", tmp_path, urls=[f"{server.url}/ok/wav2lip.pth"])
    assert path.read_bytes() == blob
    assert [r for _, _, r in server.log] == ["bytes=1004-", None]


def test_truncated_and_corrupt_downloads_are_refused(server, tmp_path, hashed):
    for mode, why in (("short", "a different file"), ("flip", "sha256")):
        with pytest.raises(LipsyncError, match=why):
            w.download("hashed", tmp_path, urls=[f"{server.url}/{mode}/hashed.pth"])
        assert not (tmp_path / "hashed.pth").exists() and not (tmp_path / "hashed.pth.part").exists()
    # Without a recorded hash the structure check still catches a truncated file.
    with pytest.raises(LipsyncError, match="truncated or corrupt"):
        w.download("wav2lip", tmp_path, urls=[f"{server.url}/short/wav2lip.pth"])
    assert not (tmp_path / "wav2lip.pth").exists() and not (tmp_path / "wav2lip.pth.part").exists()


def test_interrupted_download_resumes_from_the_next_mirror(server, tmp_path, blob, hashed):
    server.log.clear()
    path = w.download("hashed", tmp_path, urls=[f"{server.url}/cut/hashed.pth", f"{server.url}/ok/hashed.pth"])
    assert path.read_bytes() == blob
    (mode1, _, r1), (mode2, _, r2) = server.log
    assert (mode1, r1, mode2) == ("cut", None, "ok") and r2 == f"bytes={len(blob) // 2}-"


def test_all_mirrors_failing(server, tmp_path, hashed):
    dead = "http://127.0.0.1:9/hashed.pth"  # discard port: nothing listens
    urls = [f"{server.url}/gone/hashed.pth", dead, f"{server.url}/stall/hashed.pth", f"{server.url}/cut/hashed.pth"]
    t0 = time.monotonic()
    with pytest.raises(LipsyncError) as err:
        w.download("hashed", tmp_path, urls=urls, timeout=0.5)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert "Could not download hashed.pth" in text
    assert f"{server.url}/gone/hashed.pth: HTTP 404" in text
    assert f"{dead}: cannot connect" in text
    assert "stall/hashed.pth: no answer within 0.5 s (timed out)" in text
    assert "cut/hashed.pth: connection closed after" in text
    assert str(tmp_path / "hashed.pth") in text  # says where to put a hand-downloaded file
    assert not (tmp_path / "hashed.pth").exists()
    assert (tmp_path / "hashed.pth.part").exists()  # kept: the next run resumes it


# -- download through a fake opener -----------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __init__(self, data, status, headers):
        super().__init__(data)
        self.status = status
        self.headers = headers


def fake_opener(blob, requests, honour_range=True):
    def opener(request, timeout):
        assert timeout == w.DEFAULT_TIMEOUT
        rng = request.get_header("Range")
        requests.append((request.full_url, rng))
        if "broken" in request.full_url:
            raise urllib.error.URLError("Name or service not known")
        if rng and honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            return FakeResponse(blob[start:], 206, {"Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"})
        return FakeResponse(blob, 200, {"Content-Length": str(len(blob))})

    return opener


def test_fake_opener(tmp_path, blob, hashed):
    requests = []
    (tmp_path / "hashed.pth.part").write_bytes(blob[:12345])
    path = w.download("hashed", tmp_path, urls=["https://broken.example/h.pth", "https://fine.example/h.pth"],
                      opener=fake_opener(blob, requests), progress=lambda d, t: None)
    assert path.read_bytes() == blob
    assert requests == [("https://broken.example/h.pth", "bytes=12345-"),
                        ("https://fine.example/h.pth", "bytes=12345-")]


def test_fake_opener_wrong_size_is_refused_early(tmp_path, blob, hashed):
    requests = []
    with pytest.raises(LipsyncError, match="a different file"):
        w.download("hashed", tmp_path, urls=["https://x.example/h.pth"], opener=fake_opener(blob[:-1], requests),
                   progress=lambda d, t: None)
    assert not (tmp_path / "hashed.pth").exists()


# -- verify and the CLI ------------------------------------------------------------------------------------


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="lipsync")
    w.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_verify(tmp_path_factory, tmp_path, blob, hashed):
    path = shared_checkpoint(tmp_path_factory, "official")
    report = w.verify(path)  # unknown file name: accepted as a generator by structure
    assert report.ok and report.name is None and report.sha256 == hashlib.sha256(blob).hexdigest()
    assert w.verify(path, "hashed").ok
    gan = w.verify(path, "wav2lip_gan")  # right structure, not the recorded file
    assert not gan.ok and gan.structure_ok and gan.size_ok is False and gan.sha256_ok is False
    s3fd = w.verify(path, "s3fd")
    assert not s3fd.structure_ok and "not the S3FD face detector" in s3fd.problems[-1]
    with pytest.raises(LipsyncError, match="does not exist"):
        w.verify(tmp_path / "missing.pth")


def test_verify_command(tmp_path_factory, tmp_path, blob, capsys):
    path = shared_checkpoint(tmp_path_factory, "official")
    assert run_cli(["weights", "verify", str(path), "--name", "wav2lip"]) == 0
    out = capsys.readouterr().out
    assert "structure:  ok" in out and "result:     OK" in out and "not recorded" in out

    bad = tmp_path / "wav2lip.pth"
    bad.write_bytes(blob[: len(blob) // 3])
    assert run_cli(["weights", "verify", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "structure:  BAD" in out and "re-download" in out

    assert run_cli(["weights", "verify", str(tmp_path / "nope.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_list_and_download_commands(server, tmp_path, capsys, monkeypatch):
    (tmp_path / "s3fd-619a316812.pth").write_bytes(b"x")
    assert run_cli(["weights", "list", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert rows["s3fd"].rstrip().endswith("yes") and rows["wav2lip"].rstrip().endswith("no")
    assert "436 MB" in rows["wav2lip_gan"] and "non-commercial" in rows["wav2lip_gan"]
    # found where the engine would find it: the reference's name for S3FD in the same folder
    (tmp_path / "s3fd-619a316812.pth").rename(tmp_path / "s3fd.pth")
    assert run_cli(["weights", "list", "--dest", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["s3fd"].rstrip().endswith(f"yes: {tmp_path / 's3fd.pth'}")

    assert run_cli(["weights", "download", "wav2lip", "--dest", str(tmp_path),
                    "--url", f"{server.url}/ok/wav2lip.pth"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "wav2lip.pth") in out and "non-commercial" in out

    assert run_cli(["weights", "download", "wav2lip_gan", "--dest", str(tmp_path),
                    "--url", f"{server.url}/gone/wav2lip_gan.pth"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["weights", "download", "wav2lip_hd"])

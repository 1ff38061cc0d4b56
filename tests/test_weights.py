"""dcl weights: URL -> local file mapping, offline resolution, and downloads from a local HTTP
server (full, resumed with a Range request, interrupted, checksummed, failing)."""
import hashlib
import http.server
import os
import socket
import threading

import pytest

from dcl import weights
from dcl.cli import main
from dcl.io import InputError

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server(http.server.ThreadingHTTPServer):
    supports_range = True
    cut_next_response = False  # send half the body, then drop the connection (once)

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests = []


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if not self.path.startswith("/files/"):
            self.send_error(404, "Not Found")
            return
        start = 0
        if server.supports_range and self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_next_response:
            server.cut_next_response = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(weights.time, "sleep", lambda seconds: None)  # no back-off waits in tests
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(server, path="/files/models/model_final.pth"):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


# --------------------------------------------------------------------------- mapping and resolution

def test_local_paths(tmp_path):
    assert weights.local_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl", tmp_path) == \
        tmp_path / "detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert weights.local_path("https://example.org/a/b/model.pth?x=1#sha256=" + SHA, tmp_path) == \
        tmp_path / "example.org/a/b/model.pth"
    assert weights.local_path("https://cloud.tsinghua.edu.cn/f/25b641d7ea2f4b34ac82/?dl=1", tmp_path) == \
        tmp_path / "cloud.tsinghua.edu.cn/f/25b641d7ea2f4b34ac82/checkpoint.pth"
    for bad in ("https://example.org/../../etc/passwd.pth", "ftp://example.org/x.pth", "weights/x.pth"):
        with pytest.raises(InputError):
            weights.local_path(bad, tmp_path)
    with pytest.raises(InputError, match="#sha256="):
        weights.local_path("https://example.org/x.pth#md5=00", tmp_path)


def test_default_weights_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    assert weights.default_weights_dir() == weights.Path("weights")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path))
    assert weights.default_weights_dir() == tmp_path
    assert weights.default_weights_dir("elsewhere") == weights.Path("elsewhere")


def test_resolve_is_offline(tmp_path):
    spec = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert weights.resolve("work_dirs/x/model_final.pth", tmp_path) == "work_dirs/x/model_final.pth"
    assert weights.resolve("", tmp_path) == ""
    with pytest.raises(InputError) as error:
        weights.resolve(spec, tmp_path)
    assert f"on a machine with internet run: dcl weights download {spec} --weights-dir {tmp_path}" in str(error.value)
    target = weights.local_path(spec, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert weights.resolve(spec, tmp_path) == str(target)


def test_detectron2_urls():
    assert weights.download_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == \
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"


# --------------------------------------------------------------------------- downloads

def test_download_then_reuse(server, tmp_path):
    path = weights.download(url(server) + "#sha256=" + SHA, tmp_path)
    assert path == tmp_path / f"127.0.0.1:{server.server_address[1]}/files/models/model_final.pth"
    assert path.read_bytes() == PAYLOAD
    assert path.with_name("model_final.pth.sha256").read_text().split()[0] == SHA
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_final.pth", "model_final.pth.lock",
                                                             "model_final.pth.sha256"]
    requests = len(server.requests)
    assert weights.download(url(server), tmp_path) == path  # present: no request
    assert len(server.requests) == requests


@pytest.mark.parametrize("supports_range", [True, False])
def test_download_resumes_a_partial_file(server, tmp_path, supports_range):
    server.supports_range = supports_range
    target = weights.local_path(url(server), tmp_path)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(PAYLOAD[:1000])
    weights.download(url(server), tmp_path)
    assert target.read_bytes() == PAYLOAD
    assert server.requests == [("/files/models/model_final.pth", "bytes=1000-")]
    assert not target.with_name(target.name + ".part").exists()


def test_download_survives_a_dropped_connection(server, tmp_path):
    server.cut_next_response = True
    path = weights.download(url(server), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 2 and server.requests[1][1] is not None  # the retry resumed


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(InputError, match="does not match the expected"):
        weights.download(url(server) + "#sha256=" + "0" * 64, tmp_path)
    target = weights.local_path(url(server), tmp_path)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_http_errors_and_unreachable_hosts(server, tmp_path):
    with pytest.raises(InputError, match="HTTP 404"):
        weights.download(url(server, "/nothing/here.pth"), tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(InputError, match="download failed after 4 attempts"):
        weights.download(f"http://127.0.0.1:{closed_port}/x.pth", tmp_path)


def test_cli(server, tmp_path, capsys):
    assert main(["weights", "path", "detectron2://a/b.pkl", "--weights-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "detectron2/a/b.pkl")
    assert main(["weights", "download", url(server), "--weights-dir", str(tmp_path)]) == 0
    downloaded = capsys.readouterr().out.strip()
    with open(downloaded, "rb") as f:
        assert f.read() == PAYLOAD
    assert main(["weights", "download", url(server, "/missing.pth"), "--weights-dir", str(tmp_path)]) == 1
    assert "HTTP 404" in capsys.readouterr().err

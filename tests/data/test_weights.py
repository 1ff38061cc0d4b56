"""dcl weights: URL -> local file mapping, offline resolution, and downloads from a local HTTP
server (full, resumed with a Range request, interrupted, checksummed, failing)."""

import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import signal
import threading
import time

import pytest

from dcl.data import weights
from dcl.cli import main
from dcl.io import InputError
from instance_fixtures import default_sigint

# Starts as a pickle does (downloads that are not checkpoints are refused).
PAYLOAD = b"\x80\x02" + os.urandom(300_000)
HTML_ERROR = b"<html>404 Not Found</html>\n"  # 27 bytes, served with status 200
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
        if self.path.startswith("/html/"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(HTML_ERROR)))
            self.end_headers()
            self.wfile.write(HTML_ERROR)
            return
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
    assert (
        weights.local_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl", tmp_path)
        == tmp_path / "detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert (
        weights.local_path("https://example.org/a/b/model.pth?x=1#sha256=" + SHA, tmp_path)
        == tmp_path / "example.org/a/b/model.pth"
    )
    assert (
        weights.local_path("https://cloud.tsinghua.edu.cn/f/25b641d7ea2f4b34ac82/?dl=1", tmp_path)
        == tmp_path / "cloud.tsinghua.edu.cn/f/25b641d7ea2f4b34ac82/checkpoint.pth"
    )
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
    assert (
        weights.download_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
        == "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )


# --------------------------------------------------------------------------- downloads


def test_download_then_reuse(server, tmp_path):
    path = weights.download(url(server) + "#sha256=" + SHA, tmp_path)
    assert path == tmp_path / f"127.0.0.1:{server.server_address[1]}/files/models/model_final.pth"
    assert path.read_bytes() == PAYLOAD
    assert path.with_name("model_final.pth.sha256").read_text().split()[0] == SHA
    # No lock file outlives the download.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model_final.pth", "model_final.pth.sha256"]
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


def test_weights_path_of_a_malformed_url_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "dcl", "weights", "path", "http://[::1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["dcl weights: error: http://[::1: not a valid URL (Invalid IPv6 URL)"]


# --------------------------------------------------------------------------- integrity


def test_a_download_that_is_not_a_checkpoint_is_refused(server, tmp_path):
    with pytest.raises(InputError, match=r"the download \(27 bytes, starting b'<htm'\) is not a checkpoint"):
        weights.download(url(server, "/html/model.pth"), tmp_path)
    target = weights.local_path(url(server, "/html/model.pth"), tmp_path)
    assert list(target.parent.iterdir()) == []  # nothing stored, no lock left


def test_a_swapped_file_is_an_error_naming_it_on_every_later_use(server, tmp_path, capsys):
    path = weights.download(url(server), tmp_path)  # first use: digest recorded
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == SHA
    weights.verify(path)
    path.write_bytes(PAYLOAD[:-1] + b"!")  # corrupted (or swapped) after the download
    with pytest.raises(InputError, match=rf"{path}: SHA-256 .* differs from the one recorded"):
        weights.download(url(server), tmp_path)
    with pytest.raises(InputError, match="differs from the one recorded"):
        weights.resolve(url(server), tmp_path)
    assert main(["weights", "download", url(server), "--weights-dir", str(tmp_path)]) == 1
    assert str(path) in capsys.readouterr().err
    assert main(["weights", "download", "--force", url(server), "--weights-dir", str(tmp_path)]) == 0
    weights.verify(path)  # downloaded again: recorded again


def test_a_file_found_without_a_record_is_recorded_then_checked(tmp_path):
    spec = "detectron2://a/b.pkl"
    target = weights.local_path(spec, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x80\x02weights")
    weights.resolve(spec, tmp_path)  # trust on first use
    assert target.with_name("b.pkl.sha256").read_text().split()[0] == hashlib.sha256(b"\x80\x02weights").hexdigest()
    target.write_bytes(b"\x80\x02other")
    with pytest.raises(InputError, match="differs from the one recorded"):
        weights.resolve(spec, tmp_path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_only_plain_data_pickles_are_read(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(
        pickle.dumps(
            {"model": {"conv1.weight": np.ones((2, 3), np.float32), "n": [1, 2.5, "x"]}, "__author__": "me"}, protocol=2
        )
    )
    weights.check_plain_pickle(plain)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": RunsCode()}, protocol=2))
    with pytest.raises(InputError, match=r"evil.pkl is refused: it refers to posix.system"):
        weights.check_plain_pickle(evil)
    not_pickle = tmp_path / "text.pkl"
    not_pickle.write_text("hello")
    with pytest.raises(InputError, match="text.pkl is refused"):
        weights.check_plain_pickle(not_pickle)
    assert not (tmp_path / "pwned").exists()


def test_a_url_with_a_space_fails_at_once_and_leaves_nothing(tmp_path):
    """urllib refuses it: no retries (they took 14 s), no claim of a partial file, no lock file."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcl",
            "weights",
            "download",
            "https://example.invalid/a b.pkl",
            "--weights-dir",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert done.stderr.strip() == (
        "dcl weights: error: 'https://example.invalid/a b.pkl': a URL cannot contain spaces or control "
        "characters (write a space as %20)"
    )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --------------------------------------------------------------------------- interruptions and concurrency


class SlowHandler(Handler):
    """Serves /files/ in 10 kB pieces 0.05 s apart (1.5 s for the payload); while the server's
    ``gate`` is closed, a response stops after 100 kB (more than the client's 64 kB write chunk)
    until it opens (at most 60 s)."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 10_000):
            self.wfile.write(body[i : i + 10_000])
            self.wfile.flush()
            time.sleep(0.05)
            if i + 10_000 >= 100_000:
                self.server.gate.wait(timeout=60)


@pytest.fixture
def slow_server():
    srv = Server()
    srv.RequestHandlerClass = SlowHandler
    srv.gate = threading.Event()
    srv.gate.set()
    srv.handle_error = lambda request, address: None  # a client that went away mid-body
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def start_download(server, weights_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "dcl", "weights", "download", url(server), "--weights-dir", weights_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def files_in(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_download_leaves_no_lock_and_resumes(slow_server, tmp_path, stop):
    """Ctrl-C (one line, exit 130, naming the partial file, which is there) or kill -9: no lock file
    is left (there never is one: the .part file itself is locked); the next run resumes."""
    target = weights.local_path(url(slow_server), tmp_path)
    part = target.with_name(target.name + ".part")
    slow_server.gate.clear()  # the download cannot finish before the signal, however slow this machine
    process = start_download(slow_server, tmp_path)
    try:
        wait_for(lambda: part.is_file() and part.stat().st_size > 0)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        slow_server.gate.set()
    assert files_in(tmp_path) == [str(part.relative_to(tmp_path))]
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and PAYLOAD.startswith(part.read_bytes())
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"{url(slow_server)}: interrupted; the partial file {part} ({kept} bytes) is kept to resume"
        )
    else:
        assert process.returncode == -signal.SIGKILL
    slow_server.requests.clear()
    resumed = start_download(slow_server, tmp_path)
    assert resumed.wait(timeout=60) == 0
    assert target.read_bytes() == PAYLOAD
    assert slow_server.requests == [("/files/models/model_final.pth", f"bytes={kept}-")]
    assert files_in(tmp_path) == [
        str(p.relative_to(tmp_path)) for p in (target, target.with_name("model_final.pth.sha256"))
    ]


def test_concurrent_downloads_of_one_file_wait_for_each_other(slow_server, tmp_path):
    """One request; the second process says it waits, then finds the file; no lock file left."""
    first = start_download(slow_server, tmp_path)
    target = weights.local_path(url(slow_server), tmp_path)
    wait_for(lambda: target.with_name(target.name + ".part").is_file())
    second = start_download(slow_server, tmp_path)
    outputs = [process.communicate(timeout=60) for process in (first, second)]
    assert first.returncode == second.returncode == 0
    assert [out.strip() for out, _ in outputs] == [str(target)] * 2
    assert "waiting for another download" in outputs[1][1]
    assert len(slow_server.requests) == 1 and target.read_bytes() == PAYLOAD
    assert files_in(tmp_path) == [
        str(p.relative_to(tmp_path)) for p in (target, target.with_name("model_final.pth.sha256"))
    ]


def test_the_partial_file_is_named_only_when_there_is_one(server, tmp_path):
    """An unreachable host leaves nothing and claims no partial file; a server that drops every
    connection halfway leaves the partial file that the message names."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(InputError) as error:
        weights.download(f"http://127.0.0.1:{closed_port}/x.pth", tmp_path)
    assert "partial" not in str(error.value) and files_in(tmp_path) == []

    class AlwaysCut(Server):
        @property
        def cut_next_response(self):
            return True

        @cut_next_response.setter
        def cut_next_response(self, value):
            pass

    server.__class__ = AlwaysCut
    with pytest.raises(InputError, match="download failed after 4 attempts") as error:
        weights.download(url(server), tmp_path)
    part = weights.local_path(url(server), tmp_path).with_name("model_final.pth.part")
    size = part.stat().st_size
    assert f"the partial file {part} ({size} bytes) is kept and the next run resumes it" in str(error.value)
    assert files_in(tmp_path) == [str(part.relative_to(tmp_path))]


def test_the_log_says_what_is_downloaded_and_a_quoted_space_works(server, tmp_path):
    """The log names the download before it starts; %20 in a URL is a space in the file name."""
    spec = url(server, "/files/a%20b.pkl")
    done = subprocess.run(
        [sys.executable, "-m", "dcl", "weights", "download", spec, "--weights-dir", tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    target = weights.local_path(spec, tmp_path)
    assert target.name == "a b.pkl" and target.read_bytes() == PAYLOAD and done.stdout.strip() == str(target)
    assert done.stderr.splitlines()[0] == f"{spec}: downloading to {target}"
    assert server.requests[-1][0] == "/files/a%20b.pkl"

"""The download cache against real HTTP servers on 127.0.0.1 (issue 13, class 4): entries keyed by
the whole URL, file names that cannot leave the cache, timeouts, and downloads that are not
checkpoints."""

import http.server
import io
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import IMAGES

import nextpose
from nextpose import checkpoint
from nextpose.checkpoint import CheckpointError
from nextpose.cli import main


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` (with ``content_type``) at every path; counts the requests."""

    body = b""
    content_type = "application/octet-stream"
    status = 200
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    """``serve(body, ...)`` starts a server on 127.0.0.1 and returns (its base URL, requests)."""
    servers = []

    def start(body: bytes, content_type: str = "application/octet-stream", status: int = 200):
        requests: list[str] = []
        handler = type(
            "Handler",
            (_Server,),
            {"body": body, "content_type": content_type, "status": status, "requests": requests},
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _weights(seed: int) -> bytes:
    """A tiny-preset nextpose checkpoint, different for each seed."""
    torch.manual_seed(seed)
    config = nextpose.get_preset("tiny_coco_96x64").config
    buffer = io.BytesIO()
    model = nextpose.PoseNet(config.model)
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict()}, buffer)
    return buffer.getvalue()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_two_servers_with_the_same_file_name_are_two_cache_entries(serve, cache):
    first, second = _weights(1), _weights(2)
    url_a, asked_a = serve(first)
    url_b, asked_b = serve(second)
    path_a = checkpoint.resolve(f"{url_a}/model.pth", progress=False)
    path_b = checkpoint.resolve(f"{url_b}/model.pth", progress=False)
    assert path_a != path_b and path_a.name == path_b.name == "model.pth"
    assert path_a.read_bytes() == first and path_b.read_bytes() == second
    assert asked_a == ["/model.pth"] and asked_b == ["/model.pth"]  # the second server was asked
    # Cached from now on: neither server is asked again, each URL keeps its own file.
    assert checkpoint.resolve(f"{url_b}/model.pth", progress=False).read_bytes() == second
    assert checkpoint.resolve(f"{url_a}/model.pth", progress=False).read_bytes() == first
    assert len(asked_a) == len(asked_b) == 1
    a = nextpose.load(f"{url_a}/model.pth", progress=False).model.state_dict()
    b = nextpose.load(f"{url_b}/model.pth", progress=False).model.state_dict()
    assert not torch.equal(a["head.final_layer.weight"], b["head.final_layer.weight"])
    assert _files(cache) == sorted([path_a, path_b])


@pytest.mark.parametrize(
    "tail",
    [
        "x/..",
        "x/%2e%2e",
        "%2E%2E",
        "x/.",
        "",
        "..%2f..%2f..%2fescaped.pth",
        "..%5c..%5cescaped.pth",
        "a\\..\\..\\escaped.pth",
        "%2e%2e%2f%2e%2e%2fescaped.pth?x=/../../escaped.pth",
        "..%00escaped.pth",
        ".hidden.pth",
        "model%20v2%0a.pth",
    ],
)
def test_no_url_writes_outside_the_cache(serve, cache, tmp_path, tail):
    url, _ = serve(_weights(1))
    before = set(tmp_path.rglob("*"))
    try:
        path = checkpoint.resolve(f"{url}/{tail}", progress=False)
    except CheckpointError as e:
        assert "the URL does not end in a file name" in str(e)
    else:
        assert path.parent.parent == cache and path.is_file()
        assert path.name.endswith(".pth") and not path.name.startswith(".")
        assert "/" not in path.name and "\\" not in path.name and "\0" not in path.name
    outside = {p for p in set(tmp_path.rglob("*")) - before if cache not in (p, *p.parents)}
    assert not outside


def test_cache_path_names():
    a = checkpoint.cache_path("https://a.example/m/model.pth", "/c")
    b = checkpoint.cache_path("https://b.example/m/model.pth", "/c")
    assert a.parent != b.parent and a.name == b.name == "model.pth"
    assert a.parent.parent == Path("/c") and len(a.parent.name) == 16
    published = "https://h/res50_coco_256x192-ec54d7f3_20200708.pth"
    assert checkpoint.cache_path(published, "/c").name == "res50_coco_256x192-ec54d7f3_20200708.pth"
    assert checkpoint.cache_path("https://h/%2e%2e%2fx%2f..%2fw.pth", "/c").name == "w.pth"
    assert checkpoint.cache_path("https://h/a%5c..%5cw.pth", "/c").name == "w.pth"
    assert checkpoint.cache_path("https://h/w%3Fx%3D1.pth", "/c").name == "w_x_1.pth"
    for bad in ("https://h/", "https://h/..", "https://h/%2e%2e", "https://h/a/%2E%2E/"):
        with pytest.raises(CheckpointError, match="does not end in a file name"):
            checkpoint.cache_path(bad, "/c")


@pytest.fixture
def silent_server():
    """A server that accepts connections (the kernel does, into the listen queue) and never
    answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_a_server_that_never_answers_times_out(silent_server, cache, monkeypatch, capsys):
    monkeypatch.setenv("NEXTPOSE_DOWNLOAD_TIMEOUT", "1")
    url = f"{silent_server}/tiny-0123abcd_20200727.pth"
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        checkpoint.resolve(url, progress=False)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert f"could not download {url} (the server sent nothing for 1 s)" in message
    assert "Try again later" in message and "NEXTPOSE_DOWNLOAD_TIMEOUT" in message
    assert "--checkpoint PATH" in message
    assert not _files(cache)
    start = time.monotonic()
    code = main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--checkpoint", url])
    assert code == 2 and time.monotonic() - start < 10
    assert "the server sent nothing for 1 s" in capsys.readouterr().err


def test_timeout_argument_and_setting(silent_server, cache, monkeypatch):
    monkeypatch.delenv("NEXTPOSE_DOWNLOAD_TIMEOUT", raising=False)
    assert checkpoint.download_timeout() == checkpoint.DEFAULT_DOWNLOAD_TIMEOUT
    monkeypatch.setenv("NEXTPOSE_DOWNLOAD_TIMEOUT", " 5, 120 ")
    assert checkpoint.download_timeout() == (5.0, 120.0)
    for bad in ("soon", "0", "-1", "nan", "inf", "1,2,3", "1,"):
        monkeypatch.setenv("NEXTPOSE_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(CheckpointError, match="NEXTPOSE_DOWNLOAD_TIMEOUT="):
            checkpoint.resolve(f"{silent_server}/w.pth", progress=False)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"sent nothing for 0\.5 s"):
        checkpoint.download(f"{silent_server}/w.pth", progress=False, timeout=(5, 0.5))
    assert time.monotonic() - start < 5


def _foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.txt", "weights are in the release page")
        archive.writestr("model/config.json", "{}")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "what"),
    [
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html", "an HTML page"),
        (b'{"error": "not found"}', "application/json", "a JSON document"),
        (b"Access denied\n", "text/plain", "a text file"),
        (_foreign_zip(), "application/zip", r"a zip archive of other files \(README\.txt, "),
    ],
)
def test_a_download_that_is_not_a_checkpoint(serve, cache, body, content_type, what, capsys):
    url, _ = serve(body, content_type)
    for tail in ("tiny-0123abcd_20200727.pth", "model.pth"):
        with pytest.raises(CheckpointError, match=rf"{url}/{tail}: the server sent {what}") as err:
            nextpose.load("tiny_coco_96x64", f"{url}/{tail}", progress=False)
        message = str(err.value)
        assert "it was discarded" in message and "weights_only" not in message
    assert not _files(cache)
    code = main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--checkpoint", f"{url}/m.pth"])
    err = capsys.readouterr().err
    assert code == 2 and "the server sent" in err and "weights_only" not in err


def test_http_errors_name_the_status(serve, cache):
    url, _ = serve(b"<html>gone</html>", "text/html", status=404)
    with pytest.raises(CheckpointError, match=r"could not download .*/w\.pth \(HTTP error 404"):
        checkpoint.resolve(f"{url}/w.pth", progress=False)
    assert not _files(cache)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\n<!doctype html>\n<html lang='en'><head><title>404</title>", "an HTML page"),
        (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "an XML or HTML"),
        (_foreign_zip(), "a zip archive of other files"),
        (b"\x1f\x8b\x08\x00" + bytes(64), "a gzip-compressed file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(64), "a JPEG image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    ],
)
def test_local_files_that_are_not_checkpoints_say_what_they_are(tmp_path, content, what):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    expected = rf"w\.pth: not a readable PyTorch checkpoint \(it is {what}"
    with pytest.raises(CheckpointError, match=expected) as err:
        checkpoint.read(path)
    assert "weights_only" not in str(err.value)


def test_a_file_in_the_old_cache_layout_is_not_used_but_named(serve, cache, tiny_checkpoint):
    """nextpose before the URL-keyed cache kept ``<cache>/<name>``: such a file is never used
    for a URL (it may have come from another server); the URL is downloaded again, and when
    that fails the message points at the old file."""
    old = cache / "tiny.pth"
    cache.mkdir()
    old.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(CheckpointError) as err:
        checkpoint.resolve("http://127.0.0.1:9/tiny.pth", progress=False)
    assert f"a copy from an earlier download may be at {old}" in str(err.value)
    body = _weights(3)
    url, asked = serve(body)
    path = checkpoint.resolve(f"{url}/tiny.pth", progress=False)
    assert asked == ["/tiny.pth"] and path.parent.parent == cache and path.read_bytes() == body
    assert old.read_bytes() == tiny_checkpoint.read_bytes()  # left as it was


def test_new_files_honour_the_umask(tmp_path, serve, cache):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    checkpoint.save(tmp_path / "a.pth", {"w": torch.zeros(1)})
    checkpoint.save_safetensors(tmp_path / "a.safetensors", {"w": torch.zeros(1)})
    url, _ = serve(_weights(1))
    downloaded = checkpoint.resolve(f"{url}/m.pth", progress=False)
    for path in (tmp_path / "a.pth", tmp_path / "a.safetensors", downloaded):
        assert path.stat().st_mode & 0o777 == expected, path

"""``nextpose serve`` against a real server process on 127.0.0.1 (tiny model): records as
``nextpose predict`` writes them for the same images and boxes, with the crops of concurrent
requests batched together; every kind of bad request answered 4xx with a JSON error, the
server still serving; a full queue answered 503; SIGTERM finishing the requests in flight."""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DET_FILE, IMAGES

import nextpose
from nextpose.cli import main
from nextpose.options import auto_backend

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SRC = Path(nextpose.__file__).parent.parent
STOPPED = -signal.SIGTERM  # uvicorn finishes, then re-raises the signal: the exit SIGTERM asks for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``nextpose serve`` in a child process, stopped with SIGTERM."""

    def __init__(self, checkpoint: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        command = [sys.executable, "-m", "nextpose", "serve", str(checkpoint), "--port",
                   str(self.port), *options]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited: {self.process.stdout.read()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        pytest.fail("the server did not start within 120 s")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out


def test_warm_up_builds_the_network_for_both_flip_settings(tiny_checkpoint):
    """warm_up makes the first real call fast: the onnxruntime sessions of both flip settings
    (one graph each) exist before any image, and the seconds it took come back."""
    pytest.importorskip("onnxruntime")
    estimator = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    seconds = estimator.warm_up()
    assert seconds > 0 and set(estimator.network._sessions) == {True, False}


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--max-batch", "8", "--max-wait-ms", "300", "--max-body-mb", "1")
    yield s
    code, out = s.stop()
    assert code == STOPPED, out
    assert re.search(r"network ready \(\w+\) in [0-9.]+ s", out), out  # before /healthz


def detections(per_image: int = 3) -> dict[str, list]:
    """The sample's detector boxes, xyxy + score, the best few per image."""
    by_id: dict[int, list] = {}
    for det in json.loads(DET_FILE.read_text()):
        x, y, w, h = det["bbox"]
        by_id.setdefault(det["image_id"], []).append([x, y, x + w, y + h, det["score"]])
    return {p.name: by_id[int(p.stem)][:per_image] for p in IMAGES}


def post(server, path: Path, **fields):
    files = {"image": (path.name, path.read_bytes(), "image/jpeg")}
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    return requests.post(server.url + "/v1/poses", files=files, data=data, timeout=60)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Equal records; keypoint scores to 1e-7 (absolute; 1e-6 relative): the network's kernels
    sum in another order for another batch size, which moves a heatmap maximum in its last
    float32 bits (as between ``predict`` and ``predict_many``). Positions, boxes and names are
    bit-identical."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "keypoints"} == {
            k: v for k, v in w.items() if k != "keypoints"
        }
        gk, wk = np.array(g["keypoints"]), np.array(w["keypoints"])
        np.testing.assert_array_equal(gk[:, :2], wk[:, :2])
        np.testing.assert_allclose(gk[:, 2], wk[:, 2], rtol=1e-6, atol=1e-7)


def predicted(checkpoint: Path, tmp_path, boxes: dict | None, *options: str) -> list[dict]:
    """What ``nextpose predict`` writes for the sample's four images."""
    out = tmp_path / "predict.json"
    args = ["predict", str(checkpoint), str(IMAGES[0].parent), "--out", str(out), *options]
    if boxes is not None:
        (tmp_path / "boxes.json").write_text(json.dumps(boxes))
        args += ["--boxes", str(tmp_path / "boxes.json")]
    assert main([*args, "--no-progress"]) == 0
    return json.loads(out.read_text())


def test_concurrent_requests_give_predicts_records_and_share_batches(
    server, tiny_checkpoint, tmp_path
):
    boxes = detections()
    want = predicted(tiny_checkpoint, tmp_path, boxes)
    before = requests.get(server.url + "/v1/stats").json()
    start = threading.Barrier(len(IMAGES))

    def ask(path: Path):
        start.wait()  # all at once: their crops wait together for a batch
        return post(server, path, boxes=boxes[path.name])

    with ThreadPoolExecutor(len(IMAGES)) as pool:
        answers = list(pool.map(ask, IMAGES))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    got = [record for a in answers for record in a.json()]
    assert_same_records(got, want)
    after = requests.get(server.url + "/v1/stats").json()
    batches = after["batches"] - before["batches"]
    crops = after["crops"] - before["crops"]
    assert crops == sum(len(b) for b in boxes.values())
    assert crops / batches > 1  # requests' crops went through the network together


def test_a_small_load_none_lost_none_failed_batched(server):
    """8 clients x 3 requests each (a bounded version of benchmarks/bench_serve.py): every one
    answered 200 with its person, and the crops shared batches."""
    boxes = detections(per_image=1)
    before = requests.get(server.url + "/v1/stats").json()
    start = threading.Barrier(8)

    def client(c: int) -> list:
        start.wait()
        paths = [IMAGES[(c + r) % len(IMAGES)] for r in range(3)]
        return [(p, post(server, p, boxes=boxes[p.name])) for p in paths]

    with ThreadPoolExecutor(8) as pool:
        answers = [a for per_client in pool.map(client, range(8)) for a in per_client]
    after = requests.get(server.url + "/v1/stats").json()
    assert len(answers) == 24 and all(a.status_code == 200 for _, a in answers)
    for p, a in answers:  # each answer is its own image's person (boxes are float32 inside)
        (record,) = a.json()
        np.testing.assert_array_equal(np.float32(record["bbox"]), np.float32(boxes[p.name][0][:4]))
    assert after["answered"] - before["answered"] == 24
    assert after["crops"] - before["crops"] == 24
    assert (after["crops"] - before["crops"]) / (after["batches"] - before["batches"]) > 1


def test_whole_image_coco_format_no_flip_and_raw_body(server, tiny_checkpoint, tmp_path):
    want = predicted(tiny_checkpoint, tmp_path, None, "--format", "coco", "--no-flip")
    got = []
    for path in IMAGES:
        answer = requests.post(
            server.url + "/v1/poses",
            data=path.read_bytes(),
            params={"format": "coco", "flip": "false", "name": path.name},
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        got += answer.json()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["image_id"] == w["image_id"] and g["file_name"] == w["file_name"]
        assert g["bbox"] == w["bbox"]
        gk, wk = np.array(g["keypoints"]).reshape(-1, 3), np.array(w["keypoints"]).reshape(-1, 3)
        np.testing.assert_array_equal(gk[:, :2], wk[:, :2])
        np.testing.assert_allclose(gk[:, 2], wk[:, 2], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g["score"], w["score"], rtol=1e-6)


def test_decode_dark_per_request_gives_predicts_dark_records(server, tiny_checkpoint, tmp_path):
    boxes = detections(per_image=2)
    # The server's network is the MSRA model's (auto); a DARK request runs where predict's
    # --decode dark runs (auto: eager on a CPU), not on the MSRA model's backend
    want = predicted(tiny_checkpoint, tmp_path, boxes, "--decode", "dark")
    got = [r for p in IMAGES for r in post(server, p, boxes=boxes[p.name], decode="dark").json()]
    assert_same_records(got, want)
    msra = [r for p in IMAGES for r in post(server, p, boxes=boxes[p.name]).json()]
    assert [r["keypoints"] for r in msra] != [r["keypoints"] for r in got]  # another decoding


def splitting_threshold(records: list[dict]) -> float:
    """A threshold on the page slider's 0.01 grid that some of the records' scores pass and
    some do not (the random weights' scores are small; which ones depends on the seed)."""
    scores = np.array([s for r in records for _, _, s in r["keypoints"]])
    grid = np.arange(100) / 100
    passing = (scores[None] > grid[:, None]).sum(1)
    threshold = float(grid[np.abs(passing - len(scores) / 2).argmin()])
    assert (scores > threshold).any() and (scores <= threshold).any(), scores
    return threshold


def test_score_threshold_marks_the_visible_keypoints(server):
    threshold = splitting_threshold(post(server, IMAGES[0]).json())
    answer = post(server, IMAGES[0], score_threshold=str(threshold))
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()
    assert record["visible"] == [k[2] > threshold for k in record["keypoints"]]
    assert any(record["visible"]) and not all(record["visible"])


def test_health_models_and_page(server):
    assert requests.get(server.url + "/healthz").json()["status"] == "ok"
    (model,) = requests.get(server.url + "/v1/models").json()["models"]
    assert model["input_size"] == {"width": 64, "height": 96}
    assert model["keypoints"] == list(nextpose.COCO_KEYPOINTS.names)
    auto = auto_backend(torch.device("cpu"), "fp32")  # what --backend auto resolves to here
    assert (model["backend"], model["precision"], model["device"]) == (auto, "fp32", "cpu")
    assert model["max_batch"] == 8 and model["max_wait_ms"] == 300
    page = requests.get(server.url + "/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG declaring ``width`` x ``height`` pixels (a decompression bomb's
    header: refused from it, so no pixel data is needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


BAD_REQUESTS = {
    "not an image": (dict(data=b"GIF89a? not really"), 415, "not a readable image"),
    "empty body": (dict(data=b""), 400, "no image"),
    "body too large": (dict(data=b"\xff" * (2**20 + 10)), 413, "larger than the limit"),
    "bad boxes JSON": (dict(params={"boxes": "[[1, 2"}), 400, "not valid JSON"),
    "boxes not a list": (dict(params={"boxes": '{"a": 1}'}), 422, "JSON list"),
    "boxes of the wrong shape": (dict(params={"boxes": "[[1, 2, 3]]"}), 422, "not 4 or 5 num"),
    "boxes as strings": (
        dict(params={"boxes": '[["1", "2", "30", "40"]]'}),
        422,
        r'box 0 \["1", "2", "30", "40"\] is',
    ),
    "boxes as booleans": (
        dict(params={"boxes": "[[true, false, 30, 40]]"}), 422, r"box 0 \[true, false, 30, 40\] is"
    ),
    "score beyond float32": (dict(params={"boxes": "[[0, 0, 10, 10, 1e300]]"}), 422, "range"),
    "boxes nested too deeply": (  # a form field: a URL that long is refused before the app
        dict(files={"image": ("a.jpg", IMAGES[0].read_bytes())}, data={"boxes": "[" * 50000}),
        400,
        "nested too deeply",
    ),
    "a number of 5000 digits": (
        dict(params={"boxes": "[[0, 0, 10, 1" + "0" * 5000 + "]]"}), 400, "not valid JSON"
    ),
    "too many boxes": (dict(params={"boxes": json.dumps([[0, 0, 9, 9]] * 101)}), 422, "at most"),
    "image_id with two signs": (dict(params={"image_id": "--5"}), 422, "image_id must be"),
    "image_id of other digits": (dict(params={"image_id": "\u00b2"}), 422, "image_id must be"),
    "image_id of 5000 digits": (dict(params={"image_id": "9" * 5000}), 422, "at most 18 digits"),
    "inverted box": (dict(params={"boxes": "[[50, 50, 10, 10]]"}), 422, "x2 < x1"),
    "box outside the image": (
        dict(params={"boxes": "[[700, 10, 800, 90]]"}), 422, "entirely outside the 640 x 425"
    ),
    "non-finite box": (dict(params={"boxes": "[[0, 0, NaN, 5]]"}), 422, "finite"),
    "bad flip": (dict(params={"flip": "maybe"}), 422, "flip must be true or false"),
    "bad decode": (dict(params={"decode": "udp"}), 422, "decode must be one of"),
    "bad threshold": (dict(params={"score_threshold": "inf"}), 422, "finite number"),
    "unknown format": (dict(params={"format": "yaml"}), 422, "format must be one of"),
    "unknown field": (dict(params={"boxs": "[]"}), 422, "unknown fields"),
    "a field given twice": (
        dict(files={"image": ("a.jpg", IMAGES[0].read_bytes())},
             data={"flip": ["true", "false"]}),
        422,
        "field 'flip' is given twice",
    ),
    "a query parameter given twice": (
        dict(params=[("flip", "true"), ("flip", "false")]), 422, "'flip' is given twice"
    ),
    "a field also given as a query parameter": (
        dict(files={"image": ("a.jpg", IMAGES[0].read_bytes())}, data={"boxes": "[]"},
             params={"boxes": "[[0, 0, 9, 9]]"}),
        422,
        "both as a query parameter and a form field",
    ),
    "boxes sent as a file": (
        dict(files={"image": ("a.jpg", IMAGES[0].read_bytes()), "boxes": ("b.json", b"[]")},
             data={}),
        422,
        "field 'boxes' must be text, not a file",
    ),
    "two images": (
        dict(files=[("image", ("a.jpg", IMAGES[0].read_bytes())),
                    ("image", ("b.jpg", IMAGES[1].read_bytes()))], data={}),
        422,
        "field 'image' is given twice",
    ),
    "bad multipart": (
        dict(data=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        422,
        "file field 'image'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_json_error(server, kind):
    import re

    request, status, message = BAD_REQUESTS[kind]
    request = dict(request)
    if "data" not in request:
        request["data"] = IMAGES[0].read_bytes()
    answer = requests.post(server.url + "/v1/poses", timeout=60, **request)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == status and re.search(message, body["error"]), body
    assert requests.get(server.url + "/healthz").ok  # the server lives on


def test_a_body_over_the_limit_is_answered_413_to_a_client_still_sending(server):
    """The 413 reaches a client that sends its whole body before reading (declared length, or
    chunked without one): the server reads and drops the rest, not resetting the connection."""
    body = b"\xff" * (3 * 2**20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        raw.sendall(b"POST /v1/poses HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        time.sleep(0.3)  # the server has answered from the headers and would have closed
        for i in range(0, len(body), 2**16):
            raw.sendall(body[i : i + 2**16])
        answer = b""
        while chunk := raw.recv(2**16):
            answer += chunk
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert "larger than the limit" in json.loads(text)["error"]

    def chunks():
        for i in range(0, len(body), 2**16):
            yield body[i : i + 2**16]

    answer = requests.post(server.url + "/v1/poses", data=chunks(), timeout=60)
    assert answer.status_code == 413 and "larger than the limit" in answer.json()["error"]
    assert requests.get(server.url + "/healthz").ok


def test_ragged_boxes_odd_names_head_and_media_type_case(server):
    """Boxes with and without a score mix as in ``predict --boxes``; a file name of non-ASCII
    digits is a name, not an id; HEAD answers the GET routes; a media type ignores case."""
    image = IMAGES[0].read_bytes()
    mixed = requests.post(
        server.url + "/v1/poses",
        data=image,
        params={"boxes": "[[280, 44, 499, 391, 0.98], [10, 20, 200, 300]]", "name": "\u2460.jpg"},
        timeout=60,
    )
    assert mixed.status_code == 200, mixed.text
    one = requests.post(server.url + "/v1/poses", data=image, timeout=60,
                        params={"boxes": "[[10, 20, 200, 300, 1.0]]"}).json()  # fmt: skip
    assert [r["bbox_score"] for r in mixed.json()] == [pytest.approx(0.98), 1.0]
    assert mixed.json()[1]["keypoints"] == one[0]["keypoints"]
    for route in ("/", "/healthz"):
        assert requests.head(server.url + route, timeout=10).status_code == 200
    upper = requests.post(
        server.url + "/v1/poses",
        files={"image": ("a.jpg", image, "image/jpeg")},
        timeout=60,
    ).request
    kind = upper.headers["Content-Type"].replace("multipart/form-data", "Multipart/Form-Data")
    answer = requests.post(server.url + "/v1/poses", data=upper.body, timeout=60,
                           headers={"Content-Type": kind})  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_too_many_pixels_is_refused_with_the_clis_limit(server):
    answer = requests.post(server.url + "/v1/poses", data=_png_header(20000, 15000), timeout=60)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == (
        "image: the image is 20000 x 15000 pixels, more than the limit of 268435456 "
        "(set NEXTPOSE_MAX_IMAGE_PIXELS to allow it, 0: no limit); not decoded"
    )


def test_bad_requests_beside_good_ones_do_not_affect_them(server):
    good = post(server, IMAGES[1]).json()
    start = threading.Barrier(6)

    def ask(i: int):
        start.wait()
        if i % 2:
            return requests.post(server.url + "/v1/poses", data=b"junk", timeout=60)
        return post(server, IMAGES[1])

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert [a.status_code for a in answers] == [200, 415] * 3
    for a in answers[::2]:
        assert_same_records(a.json(), good)


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--max-queue", "1", "--max-wait-ms", "3000", "--max-batch", "64")
    try:
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(post(s, IMAGES[0])))
        waiting.start()  # held for 3 s: its batch waits for more crops
        deadline = time.monotonic() + 30
        while requests.get(s.url + "/healthz").json()["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = post(s, IMAGES[1])
        waiting.join()
    finally:
        code, out = s.stop()
    assert second.status_code == 503 and second.headers["Retry-After"] == "1", second.text
    assert "--max-queue 1" in second.json()["error"]
    assert first[0].status_code == 200  # the waiting request was answered
    assert code == STOPPED, out


@pytest.mark.slow
def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--timeout", "1", "--max-wait-ms", "3000", "--max-batch", "64")
    try:
        late = post(s, IMAGES[0])  # its batch waits 3 s for more crops
        stats = requests.get(s.url + "/v1/stats").json()  # its place is free at once
        health = requests.get(s.url + "/healthz").json()
    finally:
        code, out = s.stop()
    assert late.status_code == 504 and "no answer within 1 s" in late.json()["error"], late.text
    assert health == {"status": "ok", "waiting": 0}
    assert stats["abandoned"] == 1 and stats["answered"] == 0 and stats["waiting"] == 0
    assert code == STOPPED, out


@pytest.mark.slow
def test_a_client_that_disconnects_gives_its_place_up(tiny_checkpoint):
    """A client closing its connection while its request waits is as one whose timeout
    passed: its place is freed at once (``abandoned``), and the server goes on."""
    s = Server(tiny_checkpoint, "--max-wait-ms", "4000", "--max-batch", "64")
    try:
        body = IMAGES[0].read_bytes()
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as raw:
            raw.sendall(b"POST /v1/poses HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            deadline = time.monotonic() + 30
            while requests.get(s.url + "/healthz").json()["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        gone = time.monotonic()  # its batch waits 4 s for more crops
        while (stats := requests.get(s.url + "/v1/stats").json())["abandoned"] < 1:
            assert time.monotonic() < gone + 2, stats
            time.sleep(0.05)
        assert stats["waiting"] == 0 and stats["answered"] == 0, stats
        after = post(s, IMAGES[1])
    finally:
        code, out = s.stop()
    assert after.status_code == 200, after.text
    assert code == STOPPED, out


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--max-wait-ms", "2000", "--max-batch", "64")
    answers: list = []
    clients = [threading.Thread(target=lambda p=p: answers.append(post(s, p))) for p in IMAGES]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 30
    while requests.get(s.url + "/healthz").json()["waiting"] < len(IMAGES):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code, out = s.stop()  # SIGTERM while all four wait for their batch
    for c in clients:
        c.join()
    assert code == STOPPED, out
    assert [a.status_code for a in answers] == [200] * len(IMAGES)
    assert all(len(a.json()) == 1 for a in answers)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_answering_503_without_tracebacks(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--timeout", "30")
    with socket.create_connection(("127.0.0.1", s.port)) as client:  # a body still coming
        client.sendall(b"POST /v1/poses HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        deadline = time.monotonic() + 30
        while requests.get(s.url + "/healthz").json()["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s.process.send_signal(signal.SIGINT)  # waits for the request (up to --timeout) ...
        time.sleep(1)
        s.process.send_signal(signal.SIGINT)  # ... or not: stop now
        client.settimeout(30)
        answer = b""
        while chunk := client.recv(4096):  # till the server closes the connection
            answer += chunk
    code, out = s.stop()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"the service stopped before answering" in answer
    assert "Traceback" not in out and "CancelledError" not in out, out
    assert "stopped at once" in out and code != 0


def test_serve_without_the_extra_names_it(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", str(tiny_checkpoint)]) == 2
    assert "needs the 'serve' extra: pip install \"nextpose[serve]\"" in capsys.readouterr().err


def _chromium() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def width_of(page) -> int:
    return page.evaluate("document.getElementById('canvas').width")


def height_of(page) -> int:
    return page.evaluate("document.getElementById('canvas').height")


@pytest.mark.slow
def test_the_page_draws_an_uploaded_image_and_lists_the_apis_keypoints(server):
    """Headless Chromium (Debian's, driven by Playwright: no browser download) uploads a
    sample image on the page: the canvas shows the image with the keypoints drawn in the
    skeleton's colours, the table lists the API's keypoints, the slider hides low scores and
    hovering a keypoint shows its score."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    want = post(server, IMAGES[0]).json()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("window.nextpose.model !== null")
            page.set_input_files("#file", str(IMAGES[0]))
            page.wait_for_function("window.nextpose.records.length > 0", timeout=60_000)
            assert page.evaluate("window.nextpose.records") == want
            rows = page.eval_on_selector_all(
                "#keypoints tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
            )
            names = list(nextpose.COCO_KEYPOINTS.names)
            listed = [(int(r[0]), r[1], float(r[2]), float(r[3]), float(r[4])) for r in rows]
            expected = [(n, names[i], x, y, s) for n, record in enumerate(want)
                        for i, (x, y, s) in enumerate(record["keypoints"])]  # fmt: skip
            assert [r[:2] for r in listed] == [e[:2] for e in expected]
            np.testing.assert_allclose(
                [r[2:] for r in listed], [e[2:] for e in expected], atol=0.0051
            )  # fmt: skip  (shown to 2 and 3 decimals)
            # The drawing: the image, and a dot of its side's colour on each shown keypoint.
            threshold = splitting_threshold(want)
            page.fill("#threshold", str(threshold))  # a range input: fill sets its value
            page.dispatch_event("#threshold", "input")
            # The canvas as a PNG (lossless; 1.2 M pixel values as a JSON list took 14 s).
            png = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
            hidden = page.eval_on_selector_all("#keypoints tbody tr.hidden", "rows => rows.length")
            # Hovering a keypoint shows its name and score: the best-scored one on the canvas
            # (a keypoint may lie outside the image).
            box = page.locator("#canvas").bounding_box()
            on_canvas = [i for i, (x, y, _) in enumerate(want[0]["keypoints"])
                         if 0 <= x < width_of(page) and 0 <= y < height_of(page)]  # fmt: skip
            best = max(on_canvas, key=lambda i: want[0]["keypoints"][i][2])
            x, y, score = want[0]["keypoints"][best]
            page.mouse.move(box["x"] + x * box["width"] / width_of(page),
                            box["y"] + y * box["height"] / height_of(page))  # fmt: skip
            tip = page.inner_text("#tip")
        finally:
            browser.close()
    assert not errors, errors
    assert tip == f"person 0, {names[best]}: score {score:.3f}"
    png = base64.b64decode(png.removeprefix("data:image/png;base64,"))
    rgba = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED),
                        cv2.COLOR_BGRA2RGBA)  # fmt: skip
    height, width = rgba.shape[:2]
    image = nextpose.read_image(IMAGES[0])
    assert (width, height) == (image.shape[1], image.shape[0])
    assert len(np.unique(rgba[..., :3].reshape(-1, 3), axis=0)) > 1000  # not blank: the photo
    colours = {(0, 200, 0), (255, 128, 0), (51, 153, 255)}
    shown = [(x, y) for r in want for x, y, s in r["keypoints"] if s > threshold]
    assert shown and hidden == sum(s <= threshold for r in want for _, _, s in r["keypoints"])
    on_colour = [tuple(rgba[round(y), round(x), :3]) in colours for x, y in shown
                 if 0 <= round(x) < width and 0 <= round(y) < height]  # fmt: skip
    assert on_colour and all(on_colour)


def test_a_failing_engine_run_fails_its_requests_only_and_the_batcher_goes_on(tiny_checkpoint):
    """A bug inside the engine (here an image source that raises) fails the requests it had
    taken, with that error; the batcher starts a new run and the next request is answered."""
    from nextpose.serve import Batcher

    estimator = nextpose.load(str(tiny_checkpoint))
    batcher = Batcher(estimator, max_wait=0.01)

    def broken():
        raise ZeroDivisionError("a bug in a source")

    try:
        with pytest.raises(ZeroDivisionError, match="a bug in a source"):
            batcher.submit(broken, None, True).result(60)
        image = nextpose.read_image(IMAGES[0])
        # answered at once, not after the failed run's reader gave up waiting for work (30 s)
        poses = batcher.submit(image, None, True).result(15)
    finally:
        batcher.close(60)
    np.testing.assert_array_equal(poses.keypoints, estimator.predict(image).keypoints)
    assert batcher.waiting == 0 and batcher.answered == 2


def test_a_network_that_fails_once_fails_its_batch_at_once(tiny_checkpoint):
    """A network error (a bug) fails the requests of its batch right away, and the next ones
    are answered in the order they came, by a new run (the failed run's reader, waiting for
    work, is woken rather than waited for)."""
    from nextpose.serve import Batcher

    estimator = nextpose.load(str(tiny_checkpoint))
    batcher = Batcher(estimator, max_wait=0.01)
    network, calls = batcher.engine.network, []
    keypoints = network.keypoints

    def fails_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("a bug in the network")
        return keypoints(*args, **kwargs)

    network.keypoints = fails_first
    image = nextpose.read_image(IMAGES[0])
    try:
        with pytest.raises(ZeroDivisionError, match="a bug in the network"):
            batcher.submit(image, None, True).result(15)  # not after 30 s
        futures = [batcher.submit(image[: 200 + 50 * i], None, True) for i in range(3)]
        got = [f.result(15) for f in futures]
    finally:
        batcher.close(60)
        del network.keypoints
    for i, poses in enumerate(got):
        want = estimator.predict(image[: 200 + 50 * i])
        np.testing.assert_array_equal(poses.keypoints, want.keypoints)


def test_an_engine_that_cannot_be_made_fails_its_requests_and_is_not_retried_in_a_loop(
    tiny_checkpoint, monkeypatch
):
    """A decoding whose engine cannot be made (a bug) fails the requests waiting for it with
    that error, at once, and is tried again only for the next request, not in a busy loop; the
    model's own decoding is still served."""
    from nextpose.serve import Batcher

    estimator = nextpose.load(str(tiny_checkpoint))
    batcher = Batcher(estimator, max_wait=0.01)
    tries = []

    def broken(decode):
        tries.append(decode)
        raise ZeroDivisionError("a bug making the engine")

    monkeypatch.setattr(estimator, "for_decode", broken)
    image = nextpose.read_image(IMAGES[0])
    try:
        for _ in range(2):
            with pytest.raises(ZeroDivisionError, match="a bug making the engine"):
                batcher.submit(image, None, True, decode="dark").result(15)
        time.sleep(0.3)  # a loop retrying it would have tried thousands of times by now
        assert len(tries) in (2, 3), tries  # once per request (and once at the start)
        poses = batcher.submit(image, None, True).result(15)
    finally:
        batcher.close(60)
    monkeypatch.undo()
    np.testing.assert_array_equal(poses.keypoints, estimator.predict(image).keypoints)
    assert batcher.waiting == 0 and batcher.answered == 3


def test_requests_abandoned_while_queued_are_not_computed(tiny_checkpoint):
    """A request whose future is cancelled (its client's timeout) while it still waits behind
    a busy network is skipped: its crops never run, the queue count comes back to zero, and
    the other requests get their poses."""
    from nextpose.serve import Batcher

    estimator = nextpose.load(str(tiny_checkpoint))
    network = estimator.network
    release, entered = threading.Event(), threading.Event()
    keypoints = network.keypoints

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return keypoints(*args, **kwargs)

    network.keypoints = held
    batcher = Batcher(estimator, max_batch=2, max_wait=0.0)
    image = nextpose.read_image(IMAGES[0])
    box = np.array([[10.0, 20.0, 150.0, 300.0, 0.9]])
    try:
        first = batcher.submit(image, box, True)
        assert entered.wait(60)  # the network is busy with the first request
        rest = [batcher.submit(image, box, True) for _ in range(10)]
        time.sleep(0.5)  # the engine has read ahead what it can
        for future in rest[5:]:
            assert future.cancel()
        assert batcher.waiting == 6  # their places in the queue are free at once
        release.set()
        done = [f.result(60) for f in [first, *rest[:5]]]
        deadline = time.monotonic() + 60
        while batcher.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        release.set()
        batcher.close(60)
        network.keypoints = keypoints
    stats = batcher.stats()
    assert stats["waiting"] == 0 and stats["answered"] == 6 and stats["abandoned"] == 5
    assert 6 <= stats["crops"] < 11  # those the engine had not read ahead were skipped
    want = estimator.predict(image, box).keypoints
    for poses in done:
        np.testing.assert_array_equal(poses.keypoints, want)


class ThreadServer:
    """``create_app`` served by uvicorn in a thread of this process (so that the test can
    patch the app's module), on a free port of 127.0.0.1."""

    def __init__(self, estimator, **options):
        import uvicorn

        from nextpose.serve import create_app
        from nextpose.serve.app import bind

        sockets = bind("127.0.0.1", 0)
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(estimator, **options), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets})
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def test_a_body_that_stops_arriving_is_answered_408(tiny_checkpoint):
    """A client that announces more body than it sends does not hold its connection for ever:
    after --timeout it gets 408, and the service goes on."""
    s = ThreadServer(nextpose.load(str(tiny_checkpoint)), timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as raw:
            raw.sendall(b"POST /v1/poses HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"\xff" * 10)  # fmt: skip
            start = time.monotonic()
            answer = raw.recv(65536).decode("latin-1")
            waited = time.monotonic() - start
            head, _, body = answer.partition("\r\n\r\n")
            length = re.search(r"(?i)content-length: (\d+)", head)
            while length and len(body.encode("latin-1")) < int(length.group(1)):
                body += raw.recv(65536).decode("latin-1")  # the body in a later segment
            answer = f"{head}\r\n\r\n{body}"
            raw.sendall(b"\xff")  # more, after the answer: the connection is closed all the same
            try:
                rest = raw.recv(65536)
            except ConnectionResetError:
                # the kernel's answer to a byte sent after the server closed: closed, too
                rest = b""
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "connection: close" in answer.lower() and rest == b""
        assert "did not arrive within 1 s" in answer and 0.5 < waited < 20
        assert post(s, IMAGES[0]).status_code == 200
    finally:
        s.stop()


def test_the_wait_for_a_decoder_counts_against_the_timeout(tiny_checkpoint, monkeypatch):
    """Requests stuck behind slow decodes get their 504 at --timeout, not after every decode
    before them."""
    from nextpose.serve import app as app_module

    real = app_module.decode_image

    def slow(*args, **kwargs):
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_image", slow)
    s = ThreadServer(nextpose.load(str(tiny_checkpoint)), timeout=1.0)
    try:
        with ThreadPoolExecutor(6) as pool:
            start = time.monotonic()
            answers = list(pool.map(lambda _: post(s, IMAGES[0]), range(6)))
            took = time.monotonic() - start
    finally:
        s.stop()
    codes = sorted(a.status_code for a in answers)
    assert codes[:2] == [200, 200] and set(codes[2:]) == {504}, codes
    assert took < 2.5  # not 6 x 0.8 s
    assert all("no answer within 1 s" in a.json()["error"] for a in answers if a.status_code == 504)


def test_max_queue_counts_requests_from_their_arrival_not_from_their_decode(
    tiny_checkpoint, monkeypatch
):
    """--max-queue bounds the requests the service holds, their bodies and images included:
    those beyond it are answered 503 before their bodies are decoded (while the decoders are
    busy nothing had reached the network's queue, which alone counted before)."""
    from nextpose.serve import app as app_module

    real, decoded = app_module.decode_image, []

    def slow(*args, **kwargs):
        decoded.append(1)
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_image", slow)
    s = ThreadServer(nextpose.load(str(tiny_checkpoint)), max_queue=3, max_wait_ms=1.0)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(s, IMAGES[0]), range(8)))
        health = requests.get(s.url + "/healthz").json()
        stats = requests.get(s.url + "/v1/stats").json()
    finally:
        s.stop()
    codes = [a.status_code for a in answers]
    assert sorted(codes) == [200] * 3 + [503] * 5, codes
    assert len(decoded) == 3  # the refused were never decoded
    busy = [a for a in answers if a.status_code == 503]
    assert all(a.headers["Retry-After"] == "1" and "--max-queue 3" in a.json()["error"]
               for a in busy)  # fmt: skip
    assert health == {"status": "ok", "waiting": 0}
    assert stats["waiting"] == stats["queued"] == 0 and stats["answered"] == 3


def test_a_client_gone_mid_body_is_no_error_of_the_service(tiny_checkpoint, caplog):
    s = ThreadServer(nextpose.load(str(tiny_checkpoint)))
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as raw:
            raw.sendall(b"POST /v1/poses HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"\xff" * 10)  # fmt: skip
        time.sleep(0.5)
        assert post(s, IMAGES[0]).status_code == 200
    finally:
        s.stop()
    assert "Exception in ASGI application" not in caplog.text


def test_a_port_taken_while_the_model_loaded_is_a_clear_error(tiny_checkpoint):
    """Two services bound to one port (each bound before the other listened): the one that
    starts second says so instead of a traceback."""
    from nextpose.serve import create_app, serve
    from nextpose.serve.app import bind

    first = bind("127.0.0.1", 0)
    port = first[0].getsockname()[1]
    second = bind("127.0.0.1", port)  # allowed: nobody listens yet
    first[0].listen()
    try:
        app = create_app(nextpose.load(str(tiny_checkpoint)))
        with pytest.raises(nextpose.InputError, match=f"cannot serve on 127.0.0.1:{port}: "):
            serve(app, sockets=second)
    finally:
        for sock in first + second:
            sock.close()


def test_bind_takes_every_address_of_the_host_and_bracketed_ipv6():
    from nextpose.serve.app import bind

    sockets = bind("localhost", 0)
    try:
        families = {s.family for s in sockets}
        infos = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
        want = {family for family, *_ in infos}
        assert families == want
    finally:
        for sock in sockets:
            sock.close()
    if socket.has_ipv6:
        try:
            sockets = bind("[::1]", 0)
        except nextpose.InputError:
            pytest.skip("no IPv6 loopback here")
        assert sockets[0].getsockname()[0] == "::1"
        sockets[0].close()


def test_images_are_decoded_two_at_a_time(tiny_checkpoint, monkeypatch):
    """Concurrent requests' images are decoded at most DECODES at a time (each may take up to
    ~1.6 GB), and every request is answered."""
    from nextpose.serve import app as app_module

    inside, most, lock = 0, 0, threading.Lock()
    real = app_module.decode_image

    def slow(*args, **kwargs):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(app_module, "decode_image", slow)
    s = ThreadServer(nextpose.load(str(tiny_checkpoint)), max_wait_ms=1.0)
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(s, IMAGES[0]), range(6)))
    finally:
        s.stop()
    assert [a.status_code for a in answers] == [200] * 6
    assert most == app_module.DECODES == 2


@pytest.mark.slow
def test_the_page_shows_the_webcam_poses(server):
    """The webcam button: Chromium's fake camera (a test pattern) through getUserMedia, each
    frame posted and drawn."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    fake = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", *fake])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("window.nextpose.model !== null")
            page.click("#camera")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('webcam: 1 person')",
                timeout=60_000,
            )
            shown = page.evaluate("[window.nextpose.records.length, canvas.width, canvas.height]")
            page.click("#camera")  # stops it
            label = page.inner_text("#camera")
        finally:
            browser.close()
    assert shown[0] == 1 and shown[1] > 0 and shown[2] > 0
    assert label == "Use the webcam"


@pytest.mark.slow
def test_without_boxes_the_servers_detector_finds_predicts_people(tiny_checkpoint, tmp_path):
    """``--detector NAME``: requests without boxes get the detector's people, as ``nextpose
    predict --detector`` finds them (a small torchvision detector with random weights whose
    person logit is raised, so that it finds people)."""
    import torch

    from nextpose.detection import build_detector_model

    small = "fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(0)
    model = build_detector_model(small, weights=None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    weights = tmp_path / "person.pth"
    torch.save(model.state_dict(), weights)
    options = ["--detector", small, "--detector-weights", str(weights), "--max-people", "3"]
    want = predicted(tiny_checkpoint, tmp_path, None, *options)
    s = Server(tiny_checkpoint, *options)
    try:
        (model_info,) = requests.get(s.url + "/v1/models").json()["models"]
        got = [record for path in IMAGES for record in post(s, path).json()]
    finally:
        s.stop()
    assert model_info["detector"] == small
    assert len(want) == 3 * len(IMAGES)
    assert_same_records(got, want)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [("--host", "", "empty host"), ("--port", "70000", "from 1 to 65535")],
)
def test_serve_options_that_would_expose_or_crash_are_refused(
    tiny_checkpoint, capsys, option, value, says
):
    from nextpose.cli import main

    with pytest.raises(SystemExit):
        main(["serve", str(tiny_checkpoint), option, value])
    assert says in capsys.readouterr().err
    assert main(["serve", str(tiny_checkpoint), "--timeout", "1e10"]) == 2
    assert "--timeout must be at most 86400" in capsys.readouterr().err
    for useless in (["--timeout", "1e-9"], ["--max-body-mb", "1e-9"]):  # all 504 or 413
        assert main(["serve", str(tiny_checkpoint), *useless]) == 2
        assert "--timeout at least 0.1 s, --max-body-mb at least 1 KiB" in capsys.readouterr().err


def test_a_port_in_use_is_said_before_the_model_loads(tiny_checkpoint, capsys, monkeypatch):
    """The port is bound first: one in use (or a host that is not this machine's) is a clear
    error, before any weights are read and without a "serving on" line."""
    from nextpose import predictor
    from nextpose.cli import main

    loads = []
    monkeypatch.setattr(predictor, "load", lambda *a, **k: loads.append(1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(tiny_checkpoint), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot serve on 127.0.0.1:{port}: Address already in use" in err, err
    assert "serving on" not in err and loads == []
    assert main(["serve", str(tiny_checkpoint), "--host", "no-such-host.invalid"]) == 2
    assert "error: --host no-such-host.invalid:" in capsys.readouterr().err
    assert loads == []


def test_serve_help_names_every_request_field(capsys):
    """`nextpose serve --help` lists each field a request may carry (the app refuses others)."""
    from nextpose.serve.app import FIELDS

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    description = text.split("POST an image", 1)[1].split("Needs pip install", 1)[0]
    missing = [f for f in FIELDS if not re.search(rf"\b{f}\b", description)]
    assert not missing, missing

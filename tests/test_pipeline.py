"""The streaming pipeline end to end: boxes files, a (random) torchvision detector, image folders,
a synthetic video, drawing, tracking and smoothing, robust image reading, the CLI."""

import itertools
import json
import struct
import threading
import time
from typing import ClassVar

import cv2
import numpy as np
import pytest
import torch
from conftest import COCO, DET_FILE, IMAGES

from nextpose import load, read_image
from nextpose.cli import main
from nextpose.data.images import VideoError, VideoReader, list_images
from nextpose.detection import PersonDetector, build_detector_model, load_detector
from nextpose.evaluation import rescore
from nextpose.pipeline import BoxTable, PosePipeline
from nextpose.tracking import OneEuro, OneEuroFilter, PoseTracker, box_iou

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"
VIDEO_FRAMES, VIDEO_FPS, VIDEO_SIZE = 8, 10.0, (320, 212)


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return load(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    """Random detector weights whose person logit is raised: it 'finds' people everywhere."""
    torch.manual_seed(0)
    model = build_detector_model(SMALL, weights=None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    path = tmp_path_factory.mktemp("detector") / "person.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def detector(detector_weights):
    return load_detector(SMALL, weights=detector_weights, max_people=3, min_size=160, max_size=240)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A short MP4 made here with OpenCV: a sample image sliding to the right."""
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    base = cv2.resize(cv2.imread(str(IMAGES[0])), VIDEO_SIZE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    assert writer.isOpened()
    for i in range(VIDEO_FRAMES):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    return path


@pytest.fixture
def folder(tmp_path):
    """Sample images in a tree, with a corrupt image, a text file and a hidden image."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "b10.jpg").write_bytes(IMAGES[0].read_bytes())
    (root / "b9.JPG").write_bytes(IMAGES[1].read_bytes())
    (root / "sub" / "c.png").write_bytes(cv2.imencode(".png", cv2.imread(str(IMAGES[2])))[1])
    (root / "broken.jpg").write_bytes(IMAGES[3].read_bytes()[:500])
    (root / "notes.txt").write_text("not an image")
    (root / ".cache" / "x.jpg").write_bytes(IMAGES[0].read_bytes())
    return root


def _assert_same_poses(got, expected):
    """Keypoints and boxes identical; scores to float32 rounding (the network's batch differs)."""
    np.testing.assert_array_equal(got.keypoints, expected.keypoints)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_array_equal(got.box_scores, expected.box_scores)


def test_boxes_file_gives_exactly_the_core_keypoints(estimator, tmp_path):
    table = BoxTable.read(DET_FILE)  # COCO detection results, 118 boxes
    frames = list(PosePipeline(estimator, boxes=table).run(COCO))
    assert [f.name for f in frames] == [p.name for p in IMAGES]
    assert [f.image_id for f in frames] == [int(p.stem) for p in IMAGES]
    assert sum(len(f) for f in frames) == 118
    for frame, path in zip(frames, IMAGES, strict=True):
        boxes = table.get((), int(path.stem))
        _assert_same_poses(frame.poses, estimator.predict(path, boxes))
        assert frame.keypoints.shape == (len(boxes), 17, 2)
        assert frame.scores.shape == (len(boxes), 17) and frame.boxes.shape == (len(boxes), 4)
    coco = frames[0].to_coco()
    assert coco[0]["image_id"] == 785 and coco[0]["file_name"] == IMAGES[0].name
    x, y, w, h = json.loads(DET_FILE.read_text())[0]["bbox"]
    np.testing.assert_allclose(coco[0]["bbox"], [x, y, w, h], rtol=1e-5)
    assert len(coco[0]["keypoints"]) == 51
    expected = rescore(frames[0].scores, frames[0].poses.box_scores)
    assert [r["score"] for r in coco] == pytest.approx(expected.tolist())

    # The {image: [[x1, y1, x2, y2, score], ...]} layout; an image without entry: whole image.
    boxes = {IMAGES[1].name: [[100, 50, 300, 300, 0.9], [10, 10, 60, 120]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    table = BoxTable.read(tmp_path / "boxes.json")
    pipeline = PosePipeline(estimator, boxes=table)
    frames = list(pipeline.run([str(p) for p in IMAGES[:2]]))
    given = table.get([IMAGES[1].name])
    np.testing.assert_array_equal(given[:, 4], np.float32([0.9, 1.0]))
    _assert_same_poses(frames[1].poses, estimator.predict(IMAGES[1], given))
    _assert_same_poses(frames[0].poses, estimator.predict(IMAGES[0]))
    _assert_same_poses(pipeline(IMAGES[1]), frames[1].poses)


def test_coco_boxes_follow_the_file_number_whatever_else_is_listed(estimator, tmp_path):
    """A file named otherwise among the inputs makes the output ids indexes, but each numbered
    file still gets its own detections (not a whole-image box, nor another image's boxes)."""
    table = BoxTable.read(DET_FILE)
    (tmp_path / "holiday.jpg").write_bytes(IMAGES[0].read_bytes())
    pipeline = PosePipeline(estimator, boxes=table)
    frames = list(pipeline.run([str(IMAGES[1]), str(IMAGES[0]), str(tmp_path / "holiday.jpg")]))
    assert [f.image_id for f in frames] == [0, 1, 2]
    for frame, path in zip(frames[:2], (IMAGES[1], IMAGES[0]), strict=True):
        assert len(frame) == len(table.get((), int(path.stem)))
        np.testing.assert_array_equal(
            frame.boxes, estimator.predict(path, table.get((), int(path.stem))).boxes
        )
    assert len(frames[2]) == 1  # no entry: one whole-image box
    assert len(pipeline(IMAGES[0])) == len(table.get((), int(IMAGES[0].stem)))


def test_single_images_and_arrays(estimator):
    pipeline = PosePipeline(estimator, flip=False)
    image = read_image(IMAGES[2])
    _assert_same_poses(pipeline(IMAGES[2]), estimator.predict(IMAGES[2], flip=False))
    _assert_same_poses(pipeline(image), estimator.predict(image, flip=False))
    gray = image[..., 1].copy()
    (frame,) = pipeline.run(gray)
    assert frame.name == "image0" and frame.image.shape == image.shape
    h, w = image.shape[:2]  # a short repr, not the arrays
    assert (
        repr(frame)
        == f"Frame('image0', image_id=0, {h}x{w} (h x w), Poses(1 person, 17 keypoints))"
    )
    assert repr(estimator).startswith(
        f"PoseEstimator({estimator.name}: 96x64 (h x w) input, 17 keypoints"
    )
    assert len(pipeline(image, boxes=np.zeros((0, 4)))) == 0


def test_detector_pipeline_on_a_folder_skips_the_corrupt_image(estimator, detector, folder):
    errors = []
    pipeline = PosePipeline(estimator, detector)
    frames = list(pipeline.run(folder, on_error=lambda name, e: errors.append((name, str(e)))))
    assert [f.name for f in frames] == ["b9.JPG", "b10.jpg", "sub/c.png"]  # natural order
    assert len(errors) == 1 and errors[0][0] == "broken.jpg"
    assert "not a readable image" in errors[0][1]
    assert [f.index for f in frames] == [0, 1, 3]  # broken.jpg was 2; notes.txt is not listed
    for frame in frames:
        assert 1 <= len(frame) <= 3 and (frame.poses.box_scores >= 0.5).all()
        boxes = np.concatenate([frame.boxes, frame.poses.box_scores[:, None]], axis=1)
        _assert_same_poses(frame.poses, estimator.predict(frame.image, boxes))
        drawn = frame.draw()
        assert drawn.shape == frame.image.shape and (drawn != frame.image).any()
    assert len(pipeline(folder / "b10.jpg")) >= 1


def test_video_with_tracking_and_smoothing(estimator, detector, video):
    raw = list(PosePipeline(estimator, detector).run(video))
    smooth = list(PosePipeline(estimator, detector, smooth=True).run(str(video)))
    assert [f.frame for f in raw] == list(range(VIDEO_FRAMES))
    assert [f.time for f in raw] == pytest.approx([i / VIDEO_FPS for i in range(VIDEO_FRAMES)])
    assert all(f.fps == VIDEO_FPS and f.name == "walk.mp4" and f.track_ids is None for f in raw)
    assert all(f.image.shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3) for f in raw)
    for a, b in zip(raw, smooth, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert b.track_ids is not None and len(b.track_ids) == len(b)
        np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(raw[0].keypoints, smooth[0].keypoints)  # filters start here
    assert any(
        not np.array_equal(a.keypoints, b.keypoints) for a, b in zip(raw, smooth, strict=True)
    )
    assert smooth[0].to_coco()[0]["frame"] == 0 and "track_id" in smooth[0].to_coco()[0]
    assert [f.frame for f in PosePipeline(estimator).run(video, max_frames=3)] == [0, 1, 2]
    with pytest.raises(VideoError, match="no such video file"):
        list(PosePipeline(estimator).run(video.with_name("missing.mp4")))


def test_pipeline_from_names_and_camera_index(tiny_checkpoint, detector_weights, tmp_path):
    pipeline = PosePipeline.load(
        str(tiny_checkpoint),
        SMALL,
        detector_weights=detector_weights,
        detector_options={"max_people": 1},
        smooth=True,
    )
    assert pipeline.track and pipeline.detector.max_people == 1
    poses = pipeline(IMAGES[1])
    assert len(poses) == 1 and poses.keypoints.shape == (1, 17, 2)
    whole = PosePipeline.load(str(tiny_checkpoint), None)(IMAGES[1])
    h, w = read_image(IMAGES[1]).shape[:2]
    np.testing.assert_array_equal(whole.boxes, [[0, 0, w, h]])
    with pytest.raises(VideoError, match="camera 99"):  # digits naming no file: a camera
        list(pipeline.run("99"))


def test_memory_stays_bounded_and_stopping_early_ends_the_threads(estimator):
    pulled = []

    def endless():
        while True:
            pulled.append(1)
            yield np.full((64, 48, 3), len(pulled) % 255, np.uint8)

    before = threading.active_count()
    pipeline = PosePipeline(estimator.with_options(batch_size=4, read_threads=2))
    run = pipeline.run(endless())
    first = next(run)
    time.sleep(0.3)  # let the background stages run ahead as far as they may
    # One batch (4 frames of one person), 2 x 2 decoded ahead, 6 queue slots (3 per frame),
    # 2 in the hands of the stages.
    assert first.index == 0 and len(pulled) <= 4 + 4 + 2 + 2, len(pulled)
    run.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_failing_detector_fails_the_run(estimator):
    class Broken(torch.nn.Module):
        def forward(self, images):
            raise RuntimeError("detector exploded")

    pipeline = PosePipeline(estimator, PersonDetector(Broken()))
    with pytest.raises(RuntimeError, match="detector exploded"):
        list(pipeline.run(IMAGES[:2]))
    with pytest.raises(ValueError, match="not both"):
        PosePipeline(estimator, PersonDetector(Broken()), boxes={})


def test_cli_on_folder_and_video_with_detector(tiny_checkpoint, detector_weights, folder, video,
                                               tmp_path, capsys):  # fmt: skip
    out, lines, drawn = tmp_path / "poses.json", tmp_path / "frames.jsonl", tmp_path / "drawn"
    code = main(
        ["predict", str(tiny_checkpoint), str(folder), str(video), "--detector", SMALL,
         "--detector-weights", str(detector_weights), "--max-people", "2", "--smooth",
         "--out", str(out), "--jsonl", str(lines), "--draw", str(drawn)]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "broken.jpg: not a readable image" in err
    assert "1 of 5 inputs were skipped" in err
    records = json.loads(out.read_text())
    names = [r["image"] for r in records]
    assert set(names) == {"b9.JPG", "b10.jpg", "sub/c.png", "walk.mp4"}
    video_records = [r for r in records if r["image"] == "walk.mp4"]
    assert {r["frame"] for r in video_records} == set(range(VIDEO_FRAMES))
    for r in records:
        assert np.array(r["keypoints"]).shape == (17, 3) and isinstance(r["track_id"], int)
    frames = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(frames) == 3 + VIDEO_FRAMES
    assert sum(len(f["poses"]) for f in frames) == len(records)

    for name, source in [("b10.jpg", IMAGES[0]), ("b9.jpg", IMAGES[1]), ("sub/c.jpg", IMAGES[2])]:
        image, original = cv2.imread(str(drawn / name)), cv2.imread(str(source))
        assert image.shape == original.shape
        assert np.abs(image.astype(int) - original).max() > 100  # something was drawn
    reader = VideoReader(drawn / "walk.mp4")
    assert reader.size == VIDEO_SIZE and reader.fps == VIDEO_FPS
    frames = [image for _, _, image in reader]
    assert len(frames) == VIDEO_FRAMES and max(f.std() for f in frames) > 20


def test_cli_coco_format_with_coco_boxes(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "coco.json"
    args = ["predict", str(tiny_checkpoint), str(COCO), "--boxes", str(DET_FILE), "--format",
            "coco", "--out", str(out), "--no-flip"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert len(results) == 118
    assert {r["image_id"] for r in results} == {int(p.stem) for p in IMAGES}
    assert {r["file_name"] for r in results} == {p.name for p in IMAGES}
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 51 for r in results)
    (tmp_path / "notes.jpg").write_text("not an image")  # nothing readable: exit 1
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "notes.jpg")]) == 1
    assert "notes.jpg: not a readable image" in capsys.readouterr().err
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "nothing.jpg")]) == 2
    assert "nothing.jpg: no such file or folder (an input)" in capsys.readouterr().err


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an EXIF block holding only the orientation tag after the JPEG's SOI marker."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_images_are_read_robustly(tmp_path):
    gray = np.tile(np.arange(0, 200, 5, dtype=np.uint8), (30, 1))  # (30, 40)
    (tmp_path / "gray.png").write_bytes(_png(gray))
    assert (read_image(tmp_path / "gray.png") == gray[..., None]).all()

    bgra = np.zeros((30, 40, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 200, 50, 128  # blue, some red, half transparent
    (tmp_path / "rgba.png").write_bytes(_png(bgra))
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (30, 40, 3) and (rgb[0, 0] == [50, 0, 200]).all()

    deep = np.full((30, 40), 40000, np.uint16)
    (tmp_path / "deep.png").write_bytes(_png(deep))
    assert (read_image(tmp_path / "deep.png") == 40000 >> 8).all()

    left_dark = np.full((20, 40, 3), 255, np.uint8)
    left_dark[:, :20] = 0
    jpeg = cv2.imencode(".jpg", left_dark)[1].tobytes()
    (tmp_path / "rotated.jpg").write_bytes(_with_exif_orientation(jpeg, 6))  # 90 deg clockwise
    upright = read_image(tmp_path / "rotated.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[:20].mean() < 30 and upright[20:].mean() > 225  # the left half is now on top


def test_list_images_is_recursive_natural_and_skips_hidden(folder):
    assert [p.relative_to(folder).as_posix() for p in list_images(folder)] == [
        "b9.JPG",
        "b10.jpg",
        "broken.jpg",
        "sub/c.png",
    ]
    assert len(list_images(folder, recursive=False)) == 3


def test_one_euro_removes_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(90) / 30.0
    still = np.full((90, 1, 2), 100.0) + rng.normal(0, 2.0, (90, 1, 2))
    f = OneEuroFilter(OneEuro())
    out = np.stack([f(x, ti, scale=200) for x, ti in zip(still, t, strict=True)])
    assert np.abs(out[30:] - 100).std() < 0.4 * np.abs(still[30:] - 100).std()

    moving = np.stack([np.full((1, 2), 300.0 * ti) for ti in t])  # 1.5 person sizes / s
    f = OneEuroFilter(OneEuro())
    out = np.stack([f(x, ti, scale=200) for x, ti in zip(moving, t, strict=True)])
    assert np.abs(out[30:] - moving[30:]).max() < 15  # lag below 0.05 s of motion


def test_tracker_keeps_ids_of_moving_people():
    def poses(boxes):
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        n = len(boxes)
        centre = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
        zeros = np.zeros((n, 2), np.float32)
        from nextpose.structures import Poses

        return Poses(np.repeat(centre, 17, 1), np.ones((n, 17)), boxes, np.ones(n), zeros, zeros)

    tracker = PoseTracker(max_missed=1)
    ids, _ = tracker.update(poses([[0, 0, 50, 100], [200, 0, 250, 100]]), 0.0)
    assert ids.tolist() == [0, 1]
    ids, _ = tracker.update(poses([[210, 0, 260, 100], [5, 0, 55, 100], [400, 0, 450, 90]]), 0.1)
    assert ids.tolist() == [1, 0, 2]
    ids, _ = tracker.update(poses([[10, 0, 60, 100]]), 0.2)  # 1 and 2 missed once
    ids, _ = tracker.update(poses([[10, 0, 60, 100]]), 0.3)  # ... twice: ended
    ids, _ = tracker.update(poses([[215, 0, 265, 100], [10, 0, 60, 100]]), 0.4)
    assert ids.tolist() == [3, 0]
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == 1 / 3


def test_drawing_hides_low_scores(estimator):
    image = read_image(IMAGES[0])
    poses = estimator.predict(image, [[100, 50, 300, 400]])
    hidden = poses.draw(image, score_threshold=float(poses.scores.max()), boxes=False)
    assert (hidden == image).all()
    shown = poses.draw(image, score_threshold=-1, boxes=False)
    assert shown.shape == image.shape and (shown != image).any()


class FakeCamera:
    """cv2.VideoCapture of a 200 fps camera: frame i is an image of grey level i; the capture
    notes in which threads it is read and released."""

    frames = 120
    threads: ClassVar[set[int]] = set()
    released: ClassVar[list[int]] = []

    def __init__(self, index, *args):
        self.read_count = 0

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 96,
                cv2.CAP_PROP_FRAME_HEIGHT: 128}.get(prop, -1.0)  # fmt: skip

    def read(self):
        FakeCamera.threads.add(threading.get_ident())
        if self.read_count >= self.frames:
            return False, None
        time.sleep(0.005)
        self.read_count += 1
        return True, np.full((128, 96, 3), self.read_count - 1, np.uint8)

    def release(self):
        FakeCamera.released.append(threading.get_ident())


def test_a_camera_is_estimated_at_its_newest_frame(estimator, monkeypatch):
    """The estimator runs on the newest frame each time: frames it could not keep up with are
    dropped, the last one never is, and the capture is read and released in one thread.
    With every_frame, each frame is estimated in order."""
    from nextpose.data import images

    monkeypatch.setattr(images.cv2, "VideoCapture", FakeCamera)
    FakeCamera.threads, FakeCamera.released = set(), []
    pipeline = PosePipeline(estimator, detector=None)
    pipeline(np.zeros((128, 96, 3), np.uint8))  # the network is built before the camera starts
    seen = []
    for frame in pipeline.run(0):
        assert frame.image[0, 0, 0] == frame.index  # the image of that frame
        seen.append(frame.index)
        time.sleep(0.02)  # 4x slower than the camera
    assert seen == sorted(set(seen)) and seen[-1] == FakeCamera.frames - 1
    assert 1 < len(seen) < FakeCamera.frames / 2, f"estimated {seen}"
    assert len(FakeCamera.threads) == 1 and FakeCamera.released
    assert set(FakeCamera.released) <= FakeCamera.threads
    assert threading.get_ident() not in FakeCamera.threads

    every = [frame.index for frame in pipeline.run(0, every_frame=True)]
    assert every == list(range(FakeCamera.frames))


def test_stopping_a_camera_early_releases_it(estimator, monkeypatch):
    from nextpose.data import images

    monkeypatch.setattr(images.cv2, "VideoCapture", FakeCamera)
    FakeCamera.threads, FakeCamera.released = set(), []
    before = threading.active_count()
    for frame in PosePipeline(estimator, detector=None).run(0):
        if frame.index > 3:
            break
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == before and FakeCamera.released


def test_a_live_mjpeg_stream_is_estimated_at_its_newest_frame(estimator, caplog):
    """An HTTP MJPEG camera (no length: live) from a local server at 50 fps, estimated slower
    than it sends: frames are dropped, the newest is taken; a video file over HTTP is not live."""
    import http.server

    sent = 150

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for i in range(sent):
                    jpeg = cv2.imencode(".jpg", np.full((128, 96, 3), i, np.uint8))[1].tobytes()
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     b"%d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))  # fmt: skip
                    time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/video"
    try:
        reader = VideoReader(url, timeout_s=10)
        assert reader.is_live and reader.frame_count is None
        reader.close()
        pipeline = PosePipeline(estimator, detector=None)
        pipeline(np.zeros((128, 96, 3), np.uint8))
        seen = []
        for frame in pipeline.run(url):
            seen.append(frame.index)
            assert abs(int(frame.image[0, 0, 0]) - frame.index) <= 2  # that frame's image (JPEG)
            time.sleep(0.08)  # 4x slower than the camera
    finally:
        server.shutdown()
    assert seen == sorted(set(seen)) and seen[-1] == sent - 1
    assert 1 < len(seen) < sent / 2, f"estimated {seen}"
    dropped = f"{url}: {sent - len(seen)} frames were dropped"
    assert dropped in caplog.text and "--every-frame" in caplog.text


class StalledStream:
    """A VideoReader of a live stream that sends one frame, then nothing for ``stall`` s."""

    source, is_stream, stall = "rtsp://stalled", True, 1.5

    def __init__(self):
        self.closed = threading.Event()

    def __iter__(self):
        yield 0, 0.0, np.zeros((4, 4, 3), np.uint8)
        time.sleep(self.stall)  # a read waiting for the network
        yield 1, 1.0, np.zeros((4, 4, 3), np.uint8)

    def close(self):
        self.closed.set()


def test_closing_a_stalled_stream_wakes_its_reader_at_once():
    from nextpose.sources import NewestFrames

    frames = NewestFrames(StalledStream())
    got, ended = [], threading.Event()

    def consume():
        got.extend(number for number, _, _ in frames)
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    closing = threading.Thread(target=frames.close)
    closing.start()
    assert ended.wait(0.5), "the consumer waited for the stalled read"
    closing.join()
    assert got == [0] and frames.reader.closed.is_set()  # released once its read returned


def test_an_abandoned_live_iterator_stops_its_capture():
    from nextpose.sources import NewestFrames

    class Endless(StalledStream):  # a camera that never ends
        def __iter__(self):
            for number in itertools.count():
                yield number, number / 10, np.zeros((4, 4, 3), np.uint8)
                time.sleep(0.1)

    frames = NewestFrames(Endless())
    iterator = iter(frames)
    assert next(iterator)[0] == 0
    del iterator  # closed by the garbage collector: its thread stops after the next read
    assert frames.reader.closed.wait(2), "the capture is read on for nobody"


def test_poses_index_iterate_and_compare_as_a_sequence_of_people(estimator):
    """An integer (Python's or NumPy's) selects one person and an index past the end raises
    IndexError, so iterating ends; == compares the arrays (found by a user-pass review: the
    loop never ended, ``poses[np.int64(0)]`` dropped the person axis, == raised)."""
    poses = estimator.predict(IMAGES[0], [[0, 0, 100, 100], [10, 10, 200, 200], [5, 5, 50, 90]])
    people = list(poses)
    assert [len(p) for p in people] == [1, 1, 1]
    for i, person in enumerate(people):
        assert person == poses[i] == poses[np.int64(i)] == poses[i - 3]
        np.testing.assert_array_equal(person.keypoints, poses.keypoints[i : i + 1])
    assert poses[np.argmax(poses.box_scores)].keypoints.shape == (1, 17, 2)
    for bad in (3, -4, np.int32(7)):
        with pytest.raises(IndexError, match="of 3"):
            poses[bad]
    with pytest.raises(TypeError, match="not a bool"):
        poses[True]
    assert poses[[2, 0]] == poses[np.array([2, 0])] and poses[0] != poses[1]
    record = poses[np.int64(0)].to_coco(np.int64(785))[0]
    assert json.loads(json.dumps(record))["image_id"] == 785
    assert poses.to_records(IMAGES[0])[0]["image"] == str(IMAGES[0])
    with pytest.raises(TypeError, match="image_id must be an integer"):
        poses.to_coco("785")


def test_python_inputs_of_the_wrong_kind_are_refused_naming_them(estimator):
    """Flags that are not bools, a file name where a list is taken, drawing on what is not an
    image, a pipeline's boxes that are not a table, a callable's image: named errors, not a
    truthy string taken as True or a traceback from OpenCV (found by a user-pass review)."""
    image = read_image(IMAGES[0])
    poses = estimator.predict(image, [[10, 10, 200, 300]])
    with pytest.raises(ValueError, match="flip must be True, False or None, not 'false'"):
        estimator.predict(image, flip="false")
    with pytest.raises(ValueError, match="device_crops must be True or False"):
        estimator.with_options(device_crops="no")
    with pytest.raises(ValueError, match="bbox_format must be one of"):
        estimator.predict(image, bbox_format="bogus")
    with pytest.raises(ValueError, match="predict_many takes a list of images, not one str"):
        estimator.predict_many(str(IMAGES[0]))
    assert estimator.warm_up(False) >= 0
    with pytest.raises(TypeError, match=r"\(H, W, 3\) uint8 RGB array, not str"):
        poses.draw(str(IMAGES[0]))
    with pytest.raises(ValueError, match=r"got float32 \(425, 640, 3\)"):
        poses.draw(image.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="2 labels for 1 people"):
        poses.draw(image, labels=["a", "b"])
    with pytest.raises(TypeError, match=r"a \{image name: boxes\} dict, not list"):
        PosePipeline(estimator, boxes=[[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="got NoneType"):
        estimator.predict(lambda: None)
    with pytest.raises(ValueError, match="got a float32 array"):
        estimator.predict(lambda: image.astype(np.float32))
    np.testing.assert_array_equal(estimator.predict(lambda: image).keypoints,
                                  estimator.predict(image).keypoints)  # fmt: skip
    with pytest.raises(ValueError, match="CUDA is not available"):
        load(estimator.name, device=0) if torch.cuda.device_count() == 0 else pytest.skip()


def test_boxes_as_a_detectors_tensors(estimator):
    """Boxes straight from a detector (a tensor requiring grad, bf16) give the poses of the
    same numbers as a list, in predict and in a pipeline's table."""
    image = read_image(IMAGES[0])
    box = [[10.0, 20.0, 150.0, 300.0, 0.5]]
    want = estimator.predict(image, box)
    graded = torch.tensor(box, requires_grad=True) * 1
    assert estimator.predict(image, graded) == want
    assert estimator.predict(image, torch.tensor(box).bfloat16()).boxes.dtype == np.float32
    table = PosePipeline(estimator, boxes={"a.jpg": graded}).boxes
    np.testing.assert_array_equal(table.get(["a.jpg"]), np.array(box, np.float32))


def test_a_model_of_another_architecture_than_its_config_is_refused(estimator):
    from nextpose import PoseEstimator, get_preset
    from nextpose.errors import ConfigError

    other = get_preset("resnext50_coco_256x192").config
    with pytest.raises(ConfigError, match=r"blocks=\(1, 1, 1, 1\) \(config: \(3, 4, 6, 3\)\)"):
        PoseEstimator(estimator.model, other)
    with pytest.raises(ConfigError, match="not the one the config describes"):
        PoseEstimator(estimator.model, estimator.config).model = _resnext50(other)


def _resnext50(config):
    from nextpose.model import PoseNet

    with torch.device("meta"):
        return PoseNet(config.model)

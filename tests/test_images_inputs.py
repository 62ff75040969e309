"""What users pass as images (issue 14): arrays, PIL images, glob patterns, stream URLs."""

import numpy as np
import pytest
from conftest import IMAGES
from PIL import Image
from robust_files import encode

from nextpose.data import images
from nextpose.data.images import (
    ImageError,
    Input,
    VideoReader,
    as_rgb_image,
    expand_inputs,
    is_stream_url,
    is_video_file,
    read_image,
)
from nextpose.errors import InputError

# -- arrays and PIL images -----------------------------------------------------------------------


def test_arrays_of_every_accepted_shape():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.stack([gray, gray + 1, gray + 2], axis=2)
    assert as_rgb_image(rgb) is rgb  # no copy
    np.testing.assert_array_equal(as_rgb_image(gray), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(as_rgb_image(gray[..., None]), as_rgb_image(gray))
    rgba = np.concatenate([rgb, np.zeros_like(gray)[..., None]], axis=2)
    np.testing.assert_array_equal(as_rgb_image(rgba), rgb)  # alpha dropped, not composited


@pytest.mark.parametrize(
    "value, match",
    [
        (np.zeros((4, 4, 3), np.float32), r"got a float32 array \(values 0\.\.1\? multiply"),
        (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
        (np.zeros((0, 4, 3), np.uint8), r"the image is empty"),
        (
            [[1, 2], [3, 4]],
            r"expected a file path, a NumPy uint8 array .* PIL image; got list",
        ),
    ],
)
def test_anything_else_is_an_image_error_naming_the_source(value, match):
    with pytest.raises(ImageError, match=match) as err:
        as_rgb_image(value, source="frame 7")
    assert str(err.value).startswith("frame 7: ")


def _pil_file(tmp_path, image: Image.Image, name: str):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_a_pil_image_converts_as_opencv_reads_the_same_file(tmp_path, mode):
    """For each mode, the PIL image and the PNG file Pillow writes from it give the same RGB
    pixels (the file read by OpenCV in colour mode, as the reference reads files)."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 255, (30, 40, 4), np.uint8), "RGBA")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (30, 40), np.uint16))
        assert image.mode == "I;16"
    elif mode == "P":
        image = rgba.convert("RGB").quantize(50)
    else:
        image = rgba.convert(mode)
    path = _pil_file(tmp_path, image, "x.png")
    np.testing.assert_array_equal(as_rgb_image(Image.open(path)), read_image(path))


def test_a_truncated_lazily_loaded_pil_image_is_an_image_error(tmp_path):
    path = tmp_path / "cut.png"
    data = encode(".png", np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: the PIL image \(RGB\) cannot be read"):
        as_rgb_image(Image.open(path), source=str(path))


def test_pillow_is_not_needed(monkeypatch):
    """PIL images are recognised through sys.modules only (a user holding one has imported
    Pillow): as_rgb_image never imports it."""
    import sys

    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)
    assert as_rgb_image(np.zeros((2, 2, 3), np.uint8)).shape == (2, 2, 3)
    with pytest.raises(ImageError, match="got object"):
        as_rgb_image(object())
    assert "PIL.Image" not in sys.modules


# -- inputs: globs, streams, cameras -------------------------------------------------------------


def test_glob_patterns_expand_in_natural_order(tmp_path):
    for name in ["frame10.jpg", "frame2.jpg", "frame1.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "frame3.jpg").write_bytes(b"x")
    found = expand_inputs([str(tmp_path / "frame*.jpg")])
    assert [i.value.name for i in found] == ["frame1.jpg", "frame2.jpg", "frame10.jpg"]
    assert all(i.kind == "image" and i.text == str(tmp_path / "frame*.jpg") for i in found)
    deep = expand_inputs([str(tmp_path / "**" / "*.jpg")])
    assert [i.value.name for i in deep] == ["frame1.jpg", "frame2.jpg", "frame10.jpg", "frame3.jpg"]


def test_a_pattern_matching_nothing_is_an_error_naming_it(tmp_path):
    pattern = str(tmp_path / "*.png")
    with pytest.raises(InputError) as err:
        expand_inputs([pattern])
    assert str(err.value) == f"{pattern}: the pattern matches no files"


def test_an_existing_file_with_glob_characters_is_taken_literally(tmp_path):
    odd = tmp_path / "shot[1].jpg"
    odd.write_bytes(b"x")
    assert expand_inputs([str(odd)]) == [Input("image", odd, str(odd))]


def test_every_kind_is_classified_in_order(tmp_path):
    (tmp_path / "clips").mkdir()
    got = expand_inputs(
        ["rtsp://cam.local:554/live", str(tmp_path / "clips"), "walk.MP4", "0", 1, "a.jpg",
         "https://example.org/stream.m3u8", "HTTP://host/video.mp4"]
    )  # fmt: skip
    assert [i.kind for i in got] == [
        "stream", "folder", "video", "camera", "camera", "image", "stream", "stream"
    ]  # fmt: skip
    assert got[0].value == "rtsp://cam.local:554/live" and got[3].value == 0


@pytest.mark.parametrize(
    "text, stream",
    [("rtsp://10.0.0.2/h264", True), ("rtsps://x/y", True), ("http://x/v.mp4", True),
     ("https://x/live", True), ("rtmp://x/app", True), ("srt://x:9000", True),
     ("udp://@239.0.0.1:1234", True), ("file:///tmp/a.mp4", False), ("rtsp:/x", False),
     ("video.mp4", False), ("C:/clips/a.mp4", False)],
)  # fmt: skip
def test_stream_urls(text, stream):
    assert is_stream_url(text) is stream
    assert not (stream and is_video_file(text))  # a URL is never treated as a file


def test_a_path_object_is_never_a_stream():
    from pathlib import Path

    assert not is_stream_url(Path("rtsp://x/y"))


def test_video_reader_passes_a_stream_url_to_opencv_as_it_is(monkeypatch):
    calls = []

    class FakeCapture:
        def __init__(self, *args):
            calls.append(args)

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(images.cv2, "VideoCapture", FakeCapture)
    url = "rtsp://user:pw@cam.local:554/Streaming/Channels/101"
    with pytest.raises(images.VideoError, match=r"the stream cannot be opened .* within 5 s"):
        VideoReader(url, timeout_s=5)
    (source, api, params), = calls  # fmt: skip
    assert source == url and api == images.cv2.CAP_FFMPEG
    assert params == [images.cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000,
                      images.cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]  # fmt: skip


def test_an_http_video_stream_is_read(tmp_path):
    """A real HTTP stream from a local server, read by OpenCV's FFmpeg reader."""
    import functools
    import http.server
    import threading

    cv2 = images.cv2
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
        reader = VideoReader(url, timeout_s=10)
        assert reader.is_stream and not reader.is_live and reader.frame_count == 5  # a file
        frames = [image for _, _, image in reader]
    finally:
        server.shutdown()
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)


def test_missing_video_file():
    with pytest.raises(images.VideoError, match=r"nope\.mp4: no such video file"):
        VideoReader("nope.mp4")


def test_sample_images_unchanged_by_the_new_reader():
    import cv2

    for path in IMAGES:
        np.testing.assert_array_equal(read_image(path), cv2.imread(str(path))[..., ::-1])

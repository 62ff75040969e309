"""Bad and unusual image files, through read_image, PoseEstimator.predict, PosePipeline, the
predict CLI and the evaluation data loader (issue 7). Training images: test_robust_training.py."""

import json
import logging
import time

import cv2
import numpy as np
import pytest
from conftest import ANN_FILE, COCO, IMAGES
from robust_files import (
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    huge_png,
    image_copy,
    truncated,
    with_jpeg_size,
)

import nextpose
from nextpose.cli import main
from nextpose.data import images
from nextpose.data.images import ImageError, image_size, read_image
from nextpose.evaluation import evaluate
from nextpose.pipeline import PosePipeline


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return nextpose.load(tiny_checkpoint)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything reaches the decoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(images.cv2, "imdecode", refuse)


# -- read_image: each kind of file ---------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.jpg: no such image file"):
        read_image(tmp_path / "nope.jpg")


def test_directory_instead_of_a_file(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match=r"x\.jpg: is a directory"):
        read_image(tmp_path / "x.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: the image file is empty"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fraction", [0.002, 0.1, 0.5, 0.99])
def test_truncated_jpeg(tmp_path, fraction):
    path = tmp_path / "cut.jpg"
    path.write_bytes(truncated(IMAGES[0], fraction))
    with pytest.raises(ImageError, match=r"cut\.jpg: not a readable image \(corrupt, truncated"):
        read_image(path)


def test_truncated_jpeg_missing_only_its_end_marker(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(IMAGES[0].read_bytes()[:-2])
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(path)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_png(tmp_path, fraction):
    full = encode(".png", cv2.imread(str(IMAGES[1])))
    path = tmp_path / "cut.png"
    path.write_bytes(full[: int(len(full) * fraction)])
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image"):
        read_image(path)


def test_corrupt_jpeg_header(tmp_path):
    data = bytearray(IMAGES[0].read_bytes())
    data[2:400] = bytes(398)  # quantisation and Huffman tables gone
    (tmp_path / "corrupt.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt\.jpg: not a readable image"):
        read_image(tmp_path / "corrupt.jpg")


@pytest.mark.parametrize(
    "content", [b"just some text\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, bytes(range(256)) * 4]
)
def test_not_an_image(tmp_path, content):
    (tmp_path / "notes.jpg").write_bytes(content)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a readable image"):
        read_image(tmp_path / "notes.jpg")


def test_grayscale_png_and_jpeg_become_three_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))  # (30, 40)
    (tmp_path / "g.png").write_bytes(encode(".png", gray))
    (tmp_path / "g.jpg").write_bytes(encode(".jpg", gray))
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (30, 40, 3) and (rgb == gray[..., None]).all()
    rgb = read_image(tmp_path / "g.jpg")
    assert rgb.shape == (30, 40, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0].astype(int) - gray).max() <= 8  # JPEG loss only


def test_rgba_png_drops_alpha(tmp_path):
    bgra = np.zeros((30, 40, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 200, 10, 50, 0  # fully transparent
    (tmp_path / "a.png").write_bytes(encode(".png", bgra))
    rgb = read_image(tmp_path / "a.png")
    assert rgb.shape == (30, 40, 3) and (rgb == [50, 10, 200]).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_to_8_bit(tmp_path, channels):
    deep = np.full((30, 40, channels), 50000, np.uint16)
    deep[:10] = 1000
    (tmp_path / "d.png").write_bytes(encode(".png", deep.squeeze()))
    rgb = read_image(tmp_path / "d.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)
    assert (rgb[10:] == 50000 >> 8).all() and (rgb[:10] == 1000 >> 8).all()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    (tmp_path / "print.jpg").write_bytes(cmyk_jpeg((200, 60, 20)))
    rgb = read_image(tmp_path / "print.jpg")
    assert rgb.shape == (30, 40, 3)
    assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - [200, 60, 20]).max() < 6


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    stored = np.full((20, 40, 3), 255, np.uint8)
    stored[:, :20] = 0  # left half dark, as stored
    (tmp_path / "phone.jpg").write_bytes(exif_rotated_jpeg(stored, 6))  # 90° clockwise
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[:20].mean() < 30 and upright[20:].mean() > 225  # the left half is on top


def test_huge_png_is_refused_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png(20000, 20000))
    assert path.stat().st_size < 2000
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "bomb.png: the image is 20000 x 20000 pixels" in message
    assert f"limit of {images.MAX_IMAGE_PIXELS}" in message
    assert "NEXTPOSE_MAX_IMAGE_PIXELS" in message


def test_huge_jpeg_header_is_refused_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(with_jpeg_size(IMAGES[0].read_bytes(), 30000, 17000))
    with pytest.raises(ImageError, match=r"bomb\.jpg: the image is 30000 x 17000 pixels"):
        read_image(path)


def test_pixel_limit_is_adjustable(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 640 * 400)
    with pytest.raises(ImageError, match=r"640 x 425 pixels, more than the limit of 256000"):
        read_image(IMAGES[0])  # 640 x 425
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 0)  # no limit
    assert read_image(IMAGES[0]).shape == (425, 640, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm"])
def test_header_size_is_read_for_every_listed_format(ext):
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    data = encode(ext, image[..., 0] if ext == ".pgm" else image)
    assert image_size(data) == (53, 37)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00\x08"])
def test_header_size_of_cut_headers_is_unknown(data):
    assert image_size(data) is None  # never an exception: the decoder then decides


# -- the Python API ------------------------------------------------------------------------------


def test_predict_reports_the_bad_file(estimator, tmp_path):
    (tmp_path / "cut.jpg").write_bytes(truncated(IMAGES[0], 0.5))
    with pytest.raises(ImageError, match=r"cut\.jpg: not a readable image"):
        estimator.predict(tmp_path / "cut.jpg")


def test_predict_accepts_gray_and_rgba_arrays_and_refuses_others(estimator):
    gray = np.full((50, 40), 128, np.uint8)
    rgba = np.full((50, 40, 4), 128, np.uint8)
    a, b = estimator.predict(gray), estimator.predict(rgba)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    with pytest.raises(ValueError, match="uint8 RGB array"):
        estimator.predict(gray.astype(np.float32))
    with pytest.raises(ValueError, match=r"got shape \(50, 40, 2\)"):
        estimator.predict(np.zeros((50, 40, 2), np.uint8))


def _bad_folder(root):
    """A folder with two good images and one of each bad kind."""
    root.mkdir()
    image_copy(root, 0)
    image_copy(root, 1)
    (root / "cut.jpg").write_bytes(truncated(IMAGES[2], 0.5))
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "bomb.png").write_bytes(huge_png())
    (root / "cmyk.jpg").write_bytes(cmyk_jpeg((10, 200, 30)))  # unusual, but readable
    return root


BAD = {"cut.jpg", "empty.png", "text.jpg", "bomb.png"}


def test_pipeline_skips_bad_images_in_a_folder_and_counts_them(estimator, tmp_path, caplog):
    folder = _bad_folder(tmp_path / "photos")
    caplog.set_level(logging.WARNING, "nextpose")
    frames = list(PosePipeline(estimator).run(folder))
    assert sorted(f.name for f in frames) == sorted([IMAGES[0].name, IMAGES[1].name, "cmyk.jpg"])
    assert all(np.isfinite(f.keypoints).all() for f in frames)
    messages = [r.getMessage() for r in caplog.records]
    for name in BAD:
        assert any(name in m for m in messages), name
    assert messages[-1] == "4 of 7 images could not be read and were skipped"


def test_pipeline_on_error_handler_gets_every_bad_image(estimator, tmp_path):
    folder = _bad_folder(tmp_path / "photos")
    failed = []
    frames = list(PosePipeline(estimator).run(folder, on_error=lambda n, e: failed.append(n)))
    assert sorted(failed) == sorted(BAD) and len(frames) == 3


# -- the predict command -------------------------------------------------------------------------


def test_predict_cli_on_a_folder_with_bad_images(tiny_checkpoint, tmp_path, capsys):
    folder = _bad_folder(tmp_path / "photos")
    out = tmp_path / "poses.json"
    assert main(["predict", str(tiny_checkpoint), str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for name in BAD:
        assert f"warning: skipped {folder / name}" in err, name
    assert "20000 x 20000 pixels" in err
    assert "warning: 4 of 7 images could not be read" in err
    assert len(json.loads(out.read_text())) == 3


def test_predict_cli_exits_1_when_nothing_could_be_read(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "cut.jpg").write_bytes(truncated(IMAGES[0], 0.3))
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(tmp_path / "cut.jpg"), "--out", str(out)]
    assert main(args) == 1
    assert "1 of 1 images could not be read" in capsys.readouterr().err
    assert json.loads(out.read_text()) == []  # still a valid (empty) file


def test_predict_cli_on_a_folder_without_images(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "empty")]) == 1
    assert "warning: no images found in" in capsys.readouterr().err


def test_predict_cli_missing_input(tiny_checkpoint, tmp_path, capsys):
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "nope.jpg")]) == 1
    err = capsys.readouterr().err
    assert "nope.jpg: no such image file" in err and "1 of 1 images could not be read" in err


# -- the evaluation data loader ------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_skips_unreadable_images_and_counts_them(estimator, tmp_path, caplog, workers):
    folder = tmp_path / "val"
    for i in range(len(IMAGES)):
        image_copy(folder, i)
    (folder / IMAGES[1].name).write_bytes(truncated(IMAGES[1], 0.5))
    (folder / IMAGES[2].name).unlink()
    caplog.set_level(logging.WARNING, "nextpose")
    metrics = evaluate(estimator, ANN_FILE, folder, workers=workers, progress=False)
    assert set(metrics) >= {"AP", "AR"} and all(np.isfinite(list(metrics.values())))
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{IMAGES[1].name}: not a readable image" in m for m in messages)
    assert any(f"{IMAGES[2].name}: no such image file" in m for m in messages)
    assert any(m.startswith("2 images could not be read; their ") for m in messages)


def test_eval_cli_with_an_unreadable_image(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "val"
    for i in range(len(IMAGES)):
        image_copy(folder, i)
    (folder / IMAGES[3].name).write_text("oops")
    out = tmp_path / "eval"
    args = ["eval", str(tiny_checkpoint), "--images", str(folder), "--ann-file", str(ANN_FILE),
            "--gt-boxes", "--workers", "0", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "1 images could not be read" in capsys.readouterr().err
    assert (out / "metrics.json").is_file()
    ids = {r["image_id"] for r in json.loads((out / "keypoints.json").read_text())}
    assert int(IMAGES[3].stem) not in ids and len(ids) == 3


def test_sample_images_still_decode_identically():
    """The header check must not change what is decoded (the reference's bits)."""
    for path in COCO.glob("*.jpg"):
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(read_image(path), expected)

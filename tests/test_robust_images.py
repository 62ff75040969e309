"""Bad and unusual image files, through read_image, PoseEstimator.predict, PosePipeline, the
predict CLI and the evaluation data loader (issue 7). Training images: test_robust_training.py."""

import json
import logging
import shutil
import time

import cv2
import numpy as np
import pytest
from conftest import ANN_FILE, COCO, IMAGES, refused
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


def test_whole_image_box_of_an_exif_rotated_file_is_the_upright_image(tmp_path, estimator):
    """Deliberately not the reference, which takes the size Pillow reports before rotating."""
    (tmp_path / "phone.jpg").write_bytes(exif_rotated_jpeg(np.full((20, 40, 3), 90, np.uint8), 6))
    poses = estimator.predict(tmp_path / "phone.jpg")
    assert poses.boxes[:, :4].tolist() == [[0, 0, 20, 40]]
    assert len(estimator.predict(tmp_path / "phone.jpg", [])) == 0  # nobody: no poses


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
    with pytest.raises(ValueError, match="expected a NumPy uint8 array"):
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
    assert messages[-1] == "4 of 7 images were skipped"


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
    assert "warning: 4 of 7 images were skipped" in err
    assert len(json.loads(out.read_text())) == 3


def test_predict_cli_exits_1_when_nothing_could_be_read(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "cut.jpg").write_bytes(truncated(IMAGES[0], 0.3))
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(tmp_path / "cut.jpg"), "--out", str(out)]
    assert main(args) == 1
    assert "1 of 1 images were skipped" in capsys.readouterr().err
    assert json.loads(out.read_text()) == []  # still a valid (empty) file


def test_predict_cli_on_a_folder_without_images(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "empty")]) == 1
    assert "warning: no images found in" in capsys.readouterr().err


def test_predict_cli_missing_input(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """A path given on the command line that does not exist (a typo, a dangling link) is a
    usage error found before the model loads, not a skipped image (exit 1); a glob pattern's
    matches and a folder's entries are skipped as they are read."""
    from nextpose import predictor

    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    monkeypatch.setattr(predictor, "load", lambda *a, **k: pytest.fail("model loaded"))
    for name, what in (("nope.jpg", "no such file or folder"), ("link.jpg", "a link to nothing")):
        code = main(["predict", str(tiny_checkpoint), str(IMAGES[0]), str(tmp_path / name)])
        refused(code, rf"error: .*{name}: {what} \(an input\)", capsys)
    monkeypatch.undo()
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "*.jpg")]) == 1
    err = capsys.readouterr().err
    assert "link.jpg: no such image file" in err and "1 of 1 images were skipped" in err
    shutil.copy(IMAGES[0], tmp_path / "a.jpg")  # in a folder: reported and counted, not hidden
    assert main(["predict", str(tiny_checkpoint), str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "link.jpg: no such image file" in err and "1 of 2 images were skipped" in err


# -- the evaluation data loader ------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_skips_unreadable_images_and_counts_them(estimator, tmp_path, caplog, workers):
    folder = tmp_path / "val"
    for i in range(len(IMAGES)):
        image_copy(folder, i)
    (folder / IMAGES[1].name).write_bytes(truncated(IMAGES[1], 0.5))
    (folder / IMAGES[2].name).unlink()
    caplog.set_level(logging.WARNING, "nextpose")
    metrics = evaluate(estimator, ANN_FILE, folder, read_threads=workers, progress=False)
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


# -- issue 13: huge images, bombs in every format, non-regular files -----------------------------

import os  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from nextpose import geometry, geometry_torch  # noqa: E402
from nextpose.geometry import crop, crop_region  # noqa: E402

SRC = str(Path(nextpose.__file__).parents[1])


def _wide_image(width=40000, height=1000):
    """A 40000 x 1000 picture (OpenCV's warp takes sides below 32767), with structure to crop."""
    rng = np.random.default_rng(1)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, -3000:] = rng.integers(0, 255, (height, 3000, 3), np.uint8)
    return image


def test_40000_pixel_wide_image_is_read_and_a_box_far_right_is_cropped(tmp_path):
    path = tmp_path / "panorama.png"
    path.write_bytes(encode(".png", _wide_image()[..., ::-1]))
    image = read_image(path)
    assert image.shape == (1000, 40000, 3)
    center, scale = crop_region(np.array([[38500.5, 100.25, 38700.75, 500.5]]), (192, 256))
    out = crop(image, center[0], scale[0], (192, 256), source=str(path))  # cv2.error before
    assert out.shape == (256, 192, 3) and out.any()


def test_huge_image_crops_equal_the_fixed_point_reference(monkeypatch):
    """On a 33000-wide image the cut-and-shift crop equals the tensor reproduction of OpenCV's
    fixed-point warp (which has no size limit), box by box."""
    torch = pytest.importorskip("torch")
    image = _wide_image(33000, 300)
    boxes = np.array([[32000.3, 10.7, 32100.1, 250.2], [31000, 0, 31500.5, 299], [-5, 3, 40, 90]])
    center, scale = crop_region(boxes, (48, 64))
    fixed = geometry_torch.warp_crops(
        torch.from_numpy(image), torch.from_numpy(center), torch.from_numpy(scale), (48, 64)
    )
    for i in range(len(boxes)):
        out = crop(image, center[i], scale[i], (48, 64))
        np.testing.assert_array_equal(out, fixed[i].to(torch.uint8).numpy())


def test_cut_and_shift_crop_is_bit_identical_to_opencv_on_normal_images(monkeypatch):
    """The huge-image path, forced on a normal image (as if 150 pixels were OpenCV's limit),
    gives warpAffine's pixels exactly for every box it accepts, rotated or not."""
    monkeypatch.setattr(geometry, "_SHRT_MAX", 150)
    image = read_image(IMAGES[0])
    rng = np.random.default_rng(0)
    compared = 0
    for i in range(600):
        x1, y1 = rng.uniform(-50, image.shape[1]), rng.uniform(-50, image.shape[0])
        w, h = rng.uniform(1, 100, 2)
        center, scale = crop_region(np.array([[x1, y1, x1 + w, y1 + h]]), (48, 64))
        rotation = 0.0 if i % 2 else float(rng.uniform(-40, 40))
        matrix = geometry.image_to_crop_matrix(center[0], scale[0], rotation, (48, 64))
        expected = cv2.warpAffine(image, matrix, (48, 64), flags=cv2.INTER_LINEAR)
        try:
            out = geometry._warp_large(image, matrix, (48, 64), "x")
        except ImageError:
            continue
        np.testing.assert_array_equal(out, expected)
        compared += 1
    assert compared > 400


def test_a_crop_that_opencv_cannot_warp_is_an_image_error_naming_the_size():
    image = _wide_image()
    center, scale = crop_region(np.array([[0, 0, 40000, 1000]]), (192, 256))  # whole image
    with pytest.raises(ImageError, match=r"pano\.png: the 40000 x 1000 image cannot be cropped"):
        crop(image, center[0], scale[0], (192, 256), source="pano.png")


def test_opencv_errors_in_the_warp_become_image_errors():
    with pytest.raises(ImageError, match=r"the image: the 4 x 3 image cannot be cropped \(OpenCV"):
        geometry.warp_to_crop(np.zeros((3, 4, 3), np.int64), np.eye(2, 3), (8, 8))


def _bomb_headers(size=20000):
    """Tiny files of formats nextpose has no header reader for, each declaring size x size."""
    w = h = size
    sun = struct.pack(">8I", 0x59A66A95, w, h, 24, 0, 1, 0, 0)
    return {
        "bomb.pam": f"P7\nWIDTH {w}\nHEIGHT {h}\nDEPTH 3\nMAXVAL 255\nENDHDR\n".encode(),
        "bomb.pfm": f"PF\n{w} {h}\n-1.0\n".encode() + bytes(64),
        "bomb.hdr": f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode() + bytes(64),
        "bomb.ras": sun + bytes(64),
    }


def _gif_bomb(width=17000, height=17000):
    """A valid small GIF whose logical screen (what OpenCV allocates) declares width x height."""
    data = bytearray(encode(".gif", np.full((8, 8, 3), 90, np.uint8)))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


_GUARD_SCRIPT = """
import sys, time
if sys.argv[1] == "cv2-first":
    import cv2
from nextpose.data import images
out = []
for path in sys.argv[2:]:
    start = time.perf_counter()
    try:
        images.read_image(path)
        out.append(f"READ {path}")
    except images.ImageError as e:
        out.append(f"{time.perf_counter() - start:.3f} {e}")
# this process's peak memory (VmHWM: reset by exec, unlike ru_maxrss, which a forked child
# inherits from a large parent such as the test runner)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) // 1024
print(images._OPENCV_LIMIT_SOURCE, images.OPENCV_MAX_IMAGE_PIXELS, rss, sep="|")
print("\\n".join(out))
"""


def _run_guard(mode, paths, **env):
    result = subprocess.run(
        [sys.executable, "-c", _GUARD_SCRIPT, mode, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC, **env},
    )
    assert result.returncode == 0, result.stderr
    head, *lines = result.stdout.strip().splitlines()
    return head.split("|"), lines


def test_bombs_in_every_format_are_refused_by_opencvs_guard_before_decoding(tmp_path):
    files = {"bomb.gif": _gif_bomb(), **_bomb_headers()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert len(data) < 1000
    (source, guard, rss_mb), lines = _run_guard("nextpose-first", [tmp_path / n for n in files])
    assert source == "nextpose" and int(guard) == images.DEFAULT_MAX_IMAGE_PIXELS
    assert len(lines) == len(files)
    for name, line in zip(files, lines, strict=True):
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 2.0, line
        assert f"{name}: the image " in message and "NEXTPOSE_MAX_IMAGE_PIXELS" in message, line
        assert "more pixels than" in message or "more than" in message, line
        assert f"limit of {2**28}" in message and "not decoded" in message, line
    assert "17000 x 17000 pixels" in lines[0]  # the GIF's declared size is named
    assert int(rss_mb) < 1500  # nothing was allocated for 17000^2 or 20000^2 pixels


def test_the_guard_follows_nextpose_max_image_pixels(tmp_path):
    (tmp_path / "small.pam").write_bytes(_bomb_headers(300)["bomb.pam"])
    (_, guard, _), lines = _run_guard(
        "nextpose-first", [tmp_path / "small.pam"], NEXTPOSE_MAX_IMAGE_PIXELS="50000"
    )
    assert int(guard) == 50000
    assert "than the limit of 50000" in lines[0]


def test_when_cv2_was_imported_first_the_header_check_still_refuses_a_gif_bomb(tmp_path):
    (tmp_path / "bomb.gif").write_bytes(_gif_bomb())
    (source, guard, rss_mb), lines = _run_guard("cv2-first", [tmp_path / "bomb.gif"])
    assert source == "cv2 imported first" and int(guard) == 2**30  # OpenCV's default
    assert "bomb.gif: the image is 17000 x 17000 pixels, more than the limit" in lines[0]
    assert int(rss_mb) < 1500


def test_an_invalid_opencv_limit_is_a_clear_error_not_an_abort():
    result = subprocess.run(
        [sys.executable, "-c", "import nextpose.data.images"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC, "OPENCV_IO_MAX_IMAGE_PIXELS": "lots"},
    )
    assert "OPENCV_IO_MAX_IMAGE_PIXELS='lots': must be a whole number" in result.stderr
    assert result.returncode == 1  # an exception, not SIGABRT from OpenCV


def test_max_pixels_argument(tmp_path):
    with pytest.raises(ImageError, match=r"640 x 425 pixels, more than the limit of 1000 "):
        read_image(IMAGES[0], max_pixels=1000)
    assert read_image(IMAGES[0], max_pixels=0).shape == (425, 640, 3)


def _read_in_thread(path, timeout=5.0):
    outcome = []

    def target():
        try:
            outcome.append(read_image(path))
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread, outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_at_once_never_read(tmp_path):
    fifo = tmp_path / "frame.jpg"
    os.mkfifo(fifo)
    start = time.perf_counter()
    thread, outcome = _read_in_thread(fifo)
    if thread.is_alive():  # today's code blocks in open(): release it, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("read_image blocked on a FIFO")
    assert time.perf_counter() - start < 1.0
    assert isinstance(outcome[0], ImageError)
    assert str(outcome[0]) == (
        f"{fifo}: is a named pipe (FIFO), not an image file; only regular files are read"
    )


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_a_device_is_refused():
    with pytest.raises(ImageError, match=r"/dev/null: is a character device, not an image file"):
        read_image("/dev/null")


def test_a_symlink_to_an_image_is_read(tmp_path):
    (tmp_path / "link.jpg").symlink_to(IMAGES[0])
    assert read_image(tmp_path / "link.jpg").shape == (425, 640, 3)

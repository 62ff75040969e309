"""ONNX export (``nextpose export``) and the onnxruntime backend, checked with ONNX Runtime
against the PyTorch path on the COCO sample (tiny model for speed; the full-size comparison is in
benchmarks/bench_inference.py)."""

import numpy as np
import pytest
from conftest import ANN_FILE, COCO, DET_FILE, crops_of

import nextpose
from nextpose.cli import main
from nextpose.export import export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    return nextpose.load(str(tiny_checkpoint), backend="eager")


@pytest.fixture(scope="module")
def sample():
    """(image, boxes) per sample image: five detector boxes, one partly outside the image."""
    coco = nextpose.CocoKeypoints(ANN_FILE)
    boxes: dict[str, list] = {}
    for inst in coco.detection_instances(DET_FILE):
        boxes.setdefault(inst.image_file, []).append(inst.bbox)
    out = []
    for name, b in boxes.items():
        image = nextpose.read_image(COCO / name)
        h, w = image.shape[:2]
        extra = np.array([[w - 60, h - 90, w + 40, h + 20]], np.float32)
        out.append((image, np.concatenate([np.stack(b[:4]), extra])))
    return out


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """Share of keypoints within 1e-3 px."""
    return float((np.abs(got - want).max(-1) <= 1e-3).mean())


def test_export_image_graph_cli(tiny_checkpoint, eager, sample, tmp_path):
    """Image + boxes in, image pixels out: the crop (OpenCV's arithmetic), flip test and decoding
    inside; images of different sizes and box counts through one graph."""
    out = tmp_path / "pose.onnx"
    args = ["export", str(tiny_checkpoint), str(out), "--format", "onnx", "--input", "image"]
    assert main(args) == 0
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nextpose.input"] == "image" and meta["nextpose.flip_test"] == "true"
    assert meta["nextpose.keypoints"].split(",")[:2] == ["nose", "left_eye"]
    session = ort.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == ["image", "boxes"]
    got, want, got_scores, want_scores = [], [], [], []
    for n, (image, boxes) in enumerate(sample):
        boxes = boxes[: n + 2]  # 2..5 people
        keypoints, scores = session.run(None, {"image": image, "boxes": boxes})
        assert keypoints.shape == (len(boxes), 17, 2) and scores.shape == (len(boxes), 17)
        poses = eager.predict(image, boxes, flip=True)
        got.append(keypoints)
        want.append(poses.keypoints)
        got_scores.append(scores)
        want_scores.append(poses.scores)
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    scores, ref = np.concatenate(got_scores), np.concatenate(want_scores)
    assert np.abs(scores - ref).max() <= 1e-4 * np.abs(ref).max()
    image = sample[0][0]
    degenerate = np.array([[60, 40, 60, 40], [80, 30, 80, 200]], np.float32)  # zero size, width
    keypoints, _ = session.run(None, {"image": image, "boxes": degenerate})
    np.testing.assert_array_equal(keypoints, eager.predict(image, degenerate).keypoints)


def test_export_crops_graph_without_flip(tiny_checkpoint, eager, sample, tmp_path):
    out = tmp_path / "crops.onnx"
    args = ["export", str(tiny_checkpoint), str(out), "--input", "crops", "--no-flip"]
    assert main(args) == 0
    session = ort.InferenceSession(str(out))
    crops = [crops_of(image, boxes, eager.input_size)[0] for image, boxes in sample]
    for c in crops[:2]:  # dynamic batch: 5 crops, then 1
        for images in (c, c[:1]):
            keypoints, scores = session.run(None, {"crops": images})
            want, want_scores = (t.numpy() for t in eager.network.keypoints(images, flip=False))
            np.testing.assert_array_equal(keypoints, want)
            assert np.abs(scores - want_scores).max() <= 1e-4 * np.abs(want_scores).max()
    flipped = eager.network.keypoints(crops[0], flip=True)[0].numpy()
    assert _close(session.run(None, {"crops": crops[0]})[0], flipped) < 0.9


def test_onnxruntime_backend_equals_pytorch(tiny_checkpoint, eager, sample):
    """The backend runs the crops graph (flip inside) and maps back to image pixels."""
    est = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    images, boxes = [s[0] for s in sample], [s[1] for s in sample]
    got = est.predict_many(images, boxes)
    want = eager.predict_many(images, boxes)
    kpts = np.concatenate([p.keypoints for p in got])
    np.testing.assert_array_equal(kpts, np.concatenate([p.keypoints for p in want]))
    crops = crops_of(images[0], boxes[0], est.input_size)[0]
    _, _, heatmaps = est.network.session(True).run(None, {"crops": crops})
    reference = eager.heatmaps(eager.normalize(crops), flip=True).numpy()
    assert np.abs(heatmaps - reference).max() <= 1e-5 * np.abs(reference).max()


def test_grid_sample_image_graph(eager, sample):
    """The GridSample warp: one grey level off at rounding ties, so keypoints stay close."""
    graph = export_onnx(eager.model, eager.config, None, input="image", warp="grid_sample")
    session = ort.InferenceSession(graph)
    image, boxes = sample[0]
    keypoints, _ = session.run(None, {"image": image, "boxes": boxes})
    want = eager.predict(image, boxes).keypoints
    assert keypoints.shape == want.shape
    assert np.median(np.abs(keypoints - want)) <= 1e-3


def test_export_rejects_bad_options(eager):
    with pytest.raises(ValueError, match="input"):
        export_onnx(eager.model, eager.config, None, input="video")
    with pytest.raises(ValueError, match="heatmaps"):
        export_onnx(eager.model, eager.config, None, input="image", heatmaps=True)


def test_export_never_writes_over_its_own_model(tiny_checkpoint, capsys):
    before = tiny_checkpoint.read_bytes()
    assert main(["export", str(tiny_checkpoint), str(tiny_checkpoint)]) == 2
    assert "the model's own file" in capsys.readouterr().err
    assert tiny_checkpoint.read_bytes() == before


def test_the_lazy_plain_network_is_made_once_when_threads_ask_together():
    import threading
    import time

    from nextpose import get_preset
    from nextpose.onnxgraph import GraphNetwork
    from nextpose.options import RunOptions

    made = []

    def plain():
        time.sleep(0.05)  # two unguarded first calls would both get here
        made.append(object())
        return made[-1]

    graph = GraphNetwork(get_preset("tiny_coco_96x64").config, RunOptions(backend="onnxruntime"),
                         digest=lambda: "0" * 64, export=lambda flip: b"", plain=plain)  # fmt: skip
    got = []
    threads = [threading.Thread(target=lambda: got.append(graph.plain)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(g is made[0] for g in got)


@pytest.mark.parametrize("decode", ["msra", "dark"])
@pytest.mark.parametrize("graph", ["image", "crops"])
def test_exported_graphs_take_no_people(graph, decode, eager, sample):
    """N = 0 (a frame where nobody was detected) gives empty outputs, not an ONNX Runtime
    error; one person still gives the PyTorch path's keypoints (DARK's agreement on these flat
    random heatmaps is not a test of it: test_dark.py checks that)."""
    session = ort.InferenceSession(
        export_onnx(eager.model, eager.config, None, input=graph, decode=decode)
    )
    image, boxes = sample[0]
    w, h = eager.input_size
    if graph == "image":
        feeds = [{"image": image, "boxes": b} for b in (boxes[:0], boxes[:1])]
    else:
        crops = crops_of(image, boxes[:1], eager.input_size)[0]
        feeds = [{"crops": c} for c in (np.zeros((0, h, w, 3), np.uint8), crops)]
    keypoints, scores = session.run(None, feeds[0])[:2]
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17)
    keypoints = session.run(None, feeds[1])[0]
    assert keypoints.shape == (1, 17, 2) and np.isfinite(keypoints).all()
    if decode == "msra":
        if graph == "image":
            want = eager.predict(image, boxes[:1]).keypoints
        else:
            want = eager.network.keypoints(feeds[1]["crops"], flip=True)[0].numpy()
        np.testing.assert_array_equal(keypoints, want)

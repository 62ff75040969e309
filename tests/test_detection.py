"""Person detection: the torchvision model table, filtering, weights (file:// download, cache)."""

import hashlib
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import IMAGES
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models._api import WeightsEnum

from nextpose import checkpoint, read_image
from nextpose.checkpoint import CheckpointError
from nextpose.detection import (
    DEFAULT_DETECTOR,
    DETECTORS,
    PersonDetector,
    build_detector_model,
    download_weights,
    load_detector,
)

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"
FAST = {"min_size": 160, "max_size": 240, "rpn_post_nms_top_n_test": 50}


def test_table_states_torchvision_metrics():
    assert DEFAULT_DETECTOR in DETECTORS
    for name, spec in DETECTORS.items():
        assert spec.builder.__name__ == name
        assert spec.weights in list(get_model_weights(name))
        assert spec.box_ap == spec.weights.meta["_metrics"]["COCO-val2017"]["box_map"]
        assert spec.gflops == pytest.approx(spec.weights.meta["_ops"], abs=0.01)
        assert spec.weights.meta["categories"][1] == "person"


class _FixedDetector(nn.Module):
    """Returns the same detections for every image; counts its calls."""

    def __init__(self, boxes, labels, scores):
        super().__init__()
        self.out = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels),
            "scores": torch.tensor(scores),
        }
        self.batches: list[int] = []

    def forward(self, images):
        self.batches.append(len(images))
        assert all(im.dtype == torch.float32 and im.shape[0] == 3 for im in images)
        assert all(im.min() >= 0 and im.max() <= 1 for im in images)
        return [dict(self.out) for _ in images]


def test_person_class_score_and_size_thresholds_batches():
    boxes = [
        [10, 10, 60, 110],  # person, kept
        [0, 0, 20, 20],  # person, too small (longer side 20 < 32)
        [5, 5, 200, 100],  # a dog
        [30, 30, 90, 150],  # person, low score
        [40, 40, 100, 100],  # person, kept, higher score
    ]
    model = _FixedDetector(boxes, [1, 1, 18, 1, 1], [0.8, 0.99, 0.99, 0.3, 0.9])
    detector = PersonDetector(model, score_threshold=0.5, min_size=32, batch_size=2)
    image = np.zeros((120, 160, 3), np.uint8)
    out = detector([image] * 3)
    assert model.batches == [2, 1]
    assert len(out) == 3
    np.testing.assert_allclose(out[0], [[40, 40, 100, 100, 0.9], [10, 10, 60, 110, 0.8]], rtol=1e-6)
    assert out[0].dtype == np.float32
    detector.max_people = 1
    assert detector.detect(image).shape == (1, 5)
    detector.score_threshold = 0.95
    assert detector.detect(image).shape == (0, 5)


def _random_state(name: str = SMALL, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return build_detector_model(name, weights=None).state_dict()


def test_random_detector_finds_boxes_inside_the_image():
    model = build_detector_model(SMALL, weights=None, **FAST)
    with torch.no_grad():  # a random detector that calls everything a person
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    detector = PersonDetector(model, score_threshold=0.5, max_people=5)
    image = read_image(IMAGES[0])
    boxes = detector.detect(image)
    assert boxes.shape[1] == 5 and 1 <= len(boxes) <= 5
    h, w = image.shape[:2]
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= w).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= h).all()
    assert (boxes[:, 4] >= 0.5).all() and (np.diff(boxes[:, 4]) <= 0).all()


def _named_by_hash(state: dict, folder, stem: str = "detector"):
    """Save ``state`` as torchvision names its files: ``<stem>-<sha256[:8]>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def test_file_url_download_checks_hash_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    state = _random_state(seed=1)
    source = _named_by_hash(state, tmp_path / "server")
    url = source.resolve().as_uri()  # file:///...
    model = build_detector_model(SMALL, weights=url, progress=False)
    cached = checkpoint.cache_path(url)
    assert cached.is_file() and cached.read_bytes() == source.read_bytes()
    for key, value in model.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key]), key
    # The cached copy is used from now on, even without the source ...
    moved = source.rename(tmp_path / "elsewhere.pth")
    build_detector_model(SMALL, weights=url, progress=False)
    # ... unless it is corrupt: then it is fetched again.
    cached.write_bytes(b"garbage")
    moved.rename(source)
    assert download_weights(url, progress=False).read_bytes() == source.read_bytes()

    # A file whose content does not match the sha256 prefix in its name is refused, not kept.
    bad = source.with_name("detector-00000000.pth")
    bad.write_bytes(source.read_bytes())
    with pytest.raises(CheckpointError, match="does not match the sha256 prefix '00000000'"):
        build_detector_model(SMALL, weights=bad.resolve().as_uri(), progress=False)
    assert not checkpoint.cache_path(bad.resolve().as_uri()).exists()


def test_unreachable_weights_and_bad_files_explain_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/fasterrcnn-0123abcd.pth"
    with pytest.raises(CheckpointError, match=r"could not download .*--detector-weights PATH"):
        download_weights(url, progress=False)
    with pytest.raises(CheckpointError, match="no such detector weights file"):
        build_detector_model(SMALL, weights=tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"backbone.body.nope": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="do not fit detector"):
        build_detector_model(SMALL, weights=other)
    small = tmp_path / "small.pth"
    torch.save(build_detector_model(SMALL, weights=None).state_dict(), small)
    # the two MobileNet detectors share one architecture: either is named
    fits = r"weights of 'fasterrcnn_mobilenet_v3_large(_320)?_fpn': use --detector"
    with pytest.raises(CheckpointError, match=rf"do not fit detector .*{fits}"):
        build_detector_model("fasterrcnn_resnet50_fpn", weights=small)
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        load_detector("yolo", weights=None)


def test_local_weights_give_the_model_torchvision_builds(tmp_path):
    """With weights, torchvision's builder freezes batch norms; a state dict in that layout
    (no ``num_batches_tracked``) must give the same modules and the same outputs here."""
    state = _random_state(seed=2)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = torch.rand_like(state[key]) + 0.05  # not the init values
    spec = DETECTORS[SMALL]
    with mock.patch.object(WeightsEnum, "get_state_dict", lambda *a, **k: dict(state)):
        reference = spec.builder(weights=spec.weights).eval()
    official = {k: v for k, v in state.items() if k in reference.state_dict()}
    assert len(official) < len(state)  # num_batches_tracked dropped by FrozenBatchNorm2d
    path = tmp_path / "weights.pth"
    torch.save(official, path)
    ours = build_detector_model(SMALL, weights=path)
    ref_modules = {n: (type(m), getattr(m, "eps", None)) for n, m in reference.named_modules()}
    assert {n: (type(m), getattr(m, "eps", None)) for n, m in ours.named_modules()} == ref_modules
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = reference.backbone(x), ours.backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)

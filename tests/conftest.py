"""Section numbers (§N) refer to docs/topdown-semantics.md.

Shared fixtures: paths to the COCO sample and the reference oracle, and generated weights."""

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from nextpose import checkpoint
from nextpose.model import PoseNet
from nextpose.presets import get_preset

# The tests never write into the user's cache (downloads, ONNX graphs); their subprocesses
# inherit this too.
_CACHE = os.environ["NEXTPOSE_CACHE"] = tempfile.mkdtemp(prefix="nextpose-tests-cache-")


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


# Property and fuzz tests draw the same examples on every run: CI is stable, a failure repeats.
settings.register_profile("nextpose", derandomize=True, deadline=None)
settings.load_profile("nextpose")

DATA = Path(__file__).parent / "data"
COCO = DATA / "coco-mini"
ORACLE = DATA / "oracle"
ORACLE_RUNS = ORACLE / "td-hm_resnext50_8xb64-210e_coco-256x192"
ANN_FILE = COCO / "test_coco.json"
DET_FILE = COCO / "test_coco_det_AP_H_56.json"
IMAGES = sorted(COCO.glob("*.jpg"))


def crops_of(image, boxes, input_size, padding: float = 1.25):
    """(crops (N, h, w, 3) uint8, centers, scales) of xyxy ``boxes`` in ``image``, cut as the
    engine cuts them."""
    import numpy as np

    from nextpose.geometry import crop_region, cut_crops

    centers, scales = crop_region(np.asarray(boxes, np.float32)[:, :4], input_size, padding)
    return cut_crops(image, centers, scales, input_size), centers, scales


def _make_weights_module():
    spec = importlib.util.spec_from_file_location("make_weights", ORACLE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_checkpoint(depth: int = 50, seed: int = 0, legacy: bool = False) -> dict:
    """The oracle's deterministic weights, as the reference's file layout."""
    manifest = json.loads((ORACLE / f"manifest_resnext{depth}.json").read_text())
    return _make_weights_module().make_checkpoint(manifest, seed, legacy)


@pytest.fixture(scope="session")
def oracle_weights(tmp_path_factory) -> Path:
    """resnext50 seed-0 weights in the mmpose 1.x layout (``head.*``)."""
    path = tmp_path_factory.mktemp("weights") / "resnext50_seed0.pth"
    torch.save(oracle_checkpoint(), path)
    return path


@pytest.fixture(scope="session")
def oracle_weights_legacy(tmp_path_factory) -> Path:
    """The same weights in the 2020 mmpose 0.x layout (``keypoint_head.*``)."""
    path = tmp_path_factory.mktemp("weights") / "resnext50_seed0_legacy.pth"
    torch.save(oracle_checkpoint(legacy=True), path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A nextpose checkpoint of the tiny preset with random (seeded) weights."""
    torch.manual_seed(0)
    preset = get_preset("tiny_coco_96x64")
    model = PoseNet(preset.config.model)
    # Random BN statistics so that the heatmaps are not flat.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for m in model.head.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    checkpoint.save_model(path, model, preset.config, preset=preset.name)
    return path


def refused(code: int, pattern: str, capsys) -> None:
    """A command returned exit status 2 and printed an error matching ``pattern``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(pattern, err), err

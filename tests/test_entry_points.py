"""One engine under every entry point: the same keypoints (the reference's) whichever backend and
whichever way in, run options that reach every path, results that know their keypoint set, no
hidden global state, and the CLI telling input errors from bugs."""

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, IMAGES, ORACLE_RUNS

import nextpose
from nextpose import checkpoint, predictor
from nextpose.cli import main
from nextpose.evaluation import predict_instances
from nextpose.keypoints import KeypointSet
from nextpose.model import PoseNet
from nextpose.presets import get_preset


@pytest.fixture(scope="module")
def gt_groups():
    instances = nextpose.CocoKeypoints(ANN_FILE).ground_truth_instances()
    groups: dict[str, list] = {}
    for inst in instances:
        groups.setdefault(inst.image_file, []).append(inst)
    return instances, groups


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "fast", "onnxruntime"])
def test_every_entry_point_gives_the_reference_keypoints(backend, oracle_weights, gt_groups):
    """predict_many, PosePipeline.run and the evaluation path, on each fp32 backend: keypoints
    bit-identical to mmpose's on the oracle sample (ground-truth boxes, flip test)."""
    oracle = np.load(ORACLE_RUNS / "oracle_gt_flip.npz")
    instances, groups = gt_groups
    estimator = nextpose.load("resnext50_coco_256x192", checkpoint=oracle_weights, backend=backend,
                              batch_size=5)  # fmt: skip
    boxes = {name: np.stack([np.append(i.bbox, i.bbox_score) for i in g]) for name, g in
             groups.items()}  # fmt: skip
    images = [COCO / name for name in groups]
    many = estimator.predict_many(images, list(boxes.values()))
    table = nextpose.BoxTable({name: b for name, b in boxes.items()})
    frames = list(nextpose.PosePipeline(estimator, boxes=table).run(images))
    evaluated = predict_instances(estimator, instances, COCO, progress=False)
    for got in (
        np.concatenate([p.keypoints for p in many]),
        np.concatenate([f.keypoints for f in frames]),
        evaluated.keypoints,
    ):
        np.testing.assert_array_equal(got, oracle["kpts_img"])


def test_whole_image_box_is_the_references(tiny_checkpoint):
    """No boxes: one box [0, 0, w, h], as mmpose's inference_topdown makes it; its crop region
    follows the reference's float32 arithmetic (§2.1, 2.2)."""
    est = nextpose.load(str(tiny_checkpoint))
    image = nextpose.read_image(IMAGES[0])
    h, w = image.shape[:2]
    poses = est.predict(image)
    np.testing.assert_array_equal(poses.boxes, [[0, 0, w, h]])
    f32 = np.float32
    center = [f32(f32(w) * f32(0.5)), f32(f32(h) * f32(0.5))]
    sw, sh = f32(f32(w) * f32(1.25)), f32(f32(h) * f32(1.25))
    aspect = 64 / 96  # the tiny preset's input w / h
    scale = [sw, f32(sw / aspect)] if sw > f32(sh * aspect) else [f32(sh * aspect), sh]
    np.testing.assert_array_equal(poses.centers, [center])
    np.testing.assert_array_equal(poses.scales, [scale])
    explicit = est.predict(image, [[0, 0, w, h]])
    np.testing.assert_array_equal(poses.keypoints, explicit.keypoints)


def test_load_takes_checkpoint_and_warns_for_the_old_name(tiny_checkpoint):
    state = checkpoint.read(tiny_checkpoint)["state_dict"]
    path = tiny_checkpoint.parent / "weights_only.pth"
    torch.save({"state_dict": state}, path)
    est = nextpose.load("tiny_coco_96x64", checkpoint=path)
    assert est.name == "tiny_coco_96x64"
    with pytest.warns(DeprecationWarning, match="checkpoint"):
        old = nextpose.load("tiny_coco_96x64", checkpoint_source=path)
    torch.testing.assert_close(old.model.state_dict(), est.model.state_dict())
    with pytest.raises(TypeError, match="unexpected keyword argument 'checkpoints'"):
        nextpose.load("tiny_coco_96x64", checkpoints=path)


def _four_keypoint_checkpoint(tmp_path):
    kset = KeypointSet(("head", "left_hand", "right_hand", "tail"), (0, 2, 1, 3), (0.05,) * 4,
                       ((0, 1), (0, 2), (0, 3)))  # fmt: skip
    config = get_preset("tiny_coco_96x64").config
    from dataclasses import replace

    config = replace(config, keypoints=kset, model=replace(config.model, num_keypoints=4))
    path = tmp_path / "four.pth"
    checkpoint.save(path, {"state_dict": PoseNet(config.model).state_dict(),
                           "config": config.to_dict()})  # fmt: skip
    return path, kset


def test_results_carry_their_keypoint_set_and_draw_with_it(tmp_path):
    path, kset = _four_keypoint_checkpoint(tmp_path)
    est = nextpose.load(str(path))
    poses = est.predict(IMAGES[0], [[10, 10, 200, 300]])
    assert poses.keypoints.shape == (1, 4, 2) and poses.keypoint_set == kset
    drawn = poses.draw(nextpose.read_image(IMAGES[0]), score_threshold=-np.inf)
    assert drawn.shape == nextpose.read_image(IMAGES[0]).shape
    (frame,) = nextpose.PosePipeline(est).run([IMAGES[0]])
    assert frame.draw(score_threshold=-np.inf).shape == drawn.shape
    out = tmp_path / "drawn"
    code = main(["predict", str(path), str(IMAGES[0]), "--draw", str(out), "--out",
                 str(tmp_path / "p.json")])  # fmt: skip
    assert code == 0 and (out / IMAGES[0].name).is_file()
    assert len(json.loads((tmp_path / "p.json").read_text())[0]["keypoints"]) == 4


def test_pipeline_runs_with_the_estimators_options(tiny_checkpoint):
    pipeline = nextpose.PosePipeline.load(
        str(tiny_checkpoint), detector=None,
        run_options={"backend": "eager", "device_crops": True, "batch_size": 3},
    )  # fmt: skip
    options = pipeline.estimator.options
    assert (options.backend, options.device_crops, options.batch_size) == ("eager", True, 3)
    boxes = [[10, 10, 200, 300], [50, 40, 120, 160], [0, 0, 90, 90], [5, 5, 300, 200]]
    frame = next(iter(nextpose.PosePipeline(pipeline.estimator).run([IMAGES[0]])))
    plain = nextpose.load(str(tiny_checkpoint), backend="eager")
    np.testing.assert_array_equal(frame.keypoints, plain.predict(IMAGES[0]).keypoints)
    got = pipeline(IMAGES[0], boxes=boxes)
    np.testing.assert_array_equal(got.keypoints, plain.predict(IMAGES[0], boxes).keypoints)
    with pytest.warns(DeprecationWarning, match="run options belong to the estimator"):
        old = nextpose.PosePipeline(plain, workers=1, batch_size=2)
    assert (old.estimator.options.read_threads, old.estimator.options.batch_size) == (1, 2)
    with pytest.warns(DeprecationWarning, match=r"PosePipeline\(batch_size=...\) is deprecated"):
        assert nextpose.PosePipeline(plain, batch_size=3).estimator.options.batch_size == 3


def test_with_options_shares_weights_and_changes_only_the_run(tiny_checkpoint, monkeypatch):
    est = nextpose.load(str(tiny_checkpoint))
    # "meta" stands for a GPU below (the weights move there without one); refused otherwise
    monkeypatch.setattr(nextpose.options, "check_device", lambda device, option="device": None)
    small = est.with_options(batch_size=2, read_threads=0)
    assert small.model is est.model and small.config is est.config
    assert est.options.batch_size == 32 and small.options.batch_size == 2
    boxes = [[10, 10, 200, 300], [50, 40, 120, 160], [0, 0, 90, 90]]
    np.testing.assert_array_equal(
        small.predict(IMAGES[0], boxes).keypoints, est.predict(IMAGES[0], boxes).keypoints
    )
    with pytest.raises(nextpose.InputError, match="unknown run options"):
        est.with_options(batchsize=2)
    elsewhere = est.with_options(device="meta")  # another device: this estimator's stay put
    assert elsewhere.model is not est.model
    assert next(est.model.parameters()).device.type == "cpu"


def test_no_process_wide_setting_changes(tiny_checkpoint):
    before = (torch.backends.cudnn.benchmark, torch.get_num_threads())
    est = nextpose.load(str(tiny_checkpoint))
    est.predict_many([IMAGES[0], IMAGES[1]])
    assert (torch.backends.cudnn.benchmark, torch.get_num_threads()) == before
    from nextpose.runtime import cuda_switches

    with cuda_switches(benchmark=True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before[0]


def test_cli_reports_input_errors_and_lets_bugs_through(tiny_checkpoint, monkeypatch, capsys):
    def user_error(*args, **kwargs):
        raise nextpose.InputError("--thing: the problem")

    monkeypatch.setattr(predictor, "load", user_error)
    assert main(["predict", str(tiny_checkpoint), str(IMAGES[0])]) == 2
    assert "error: --thing: the problem" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(predictor, "load", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["predict", str(tiny_checkpoint), str(IMAGES[0])])


def test_old_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="moved to nextpose.predictor"):
        from nextpose.inference import PoseEstimator
    assert PoseEstimator is nextpose.PoseEstimator
    import importlib

    from nextpose import inference

    for name, where in inference._MOVED.items():  # every old name still resolves
        with pytest.warns(DeprecationWarning, match=f"moved to nextpose.{where}.{name}"):
            old = getattr(inference, name)
        assert old is getattr(importlib.import_module(f"nextpose.{where}"), name)
    with pytest.warns(DeprecationWarning, match="prepare_crops is deprecated"):
        crops = inference.prepare_crops(np.zeros((40, 30, 3), np.uint8), [[1, 2, 20, 30]], (32, 64))
    assert crops.images.shape == (1, 64, 32, 3) and crops.centers.tolist() == [[10.5, 16.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nextpose.Poses is nextpose.structures.Poses  # the new names warn of nothing

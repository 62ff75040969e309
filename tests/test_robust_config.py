"""Bad configs, keypoint metainfo files and command-line arguments (issue 7): each is refused with
a message naming the key, file or argument, before any model is built or data is read."""

import json
import shutil

import pytest
import torch
from conftest import ANN_FILE, COCO, IMAGES, refused

import nextpose
from nextpose import Config, ConfigError, ModelConfig, PoseNet, get_preset, predictor, training
from nextpose.cli import main
from nextpose.keypoints import load_keypoint_set

TINY = get_preset("tiny_coco_96x64").config


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading a model or starting to train."""

    def refuse(*args, **kwargs):
        raise AssertionError("heavy work started before the arguments were checked")

    monkeypatch.setattr(predictor, "load", refuse)
    monkeypatch.setattr(training, "train", refuse)


def _train(tmp_path, *extra: str) -> int:
    return main(["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(ANN_FILE),
                 "--images", str(COCO), "--out", str(tmp_path / "run"), *extra])  # fmt: skip


# -- unknown keys --------------------------------------------------------------------------------


def test_unknown_key_in_a_toml_file_suggests_the_right_one(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text(TINY.to_toml().replace("warmup_iters", "warmup_iter"))
    with pytest.raises(
        ConfigError,
        match=r"my\.toml: unknown config key 'train\.warmup_iter'; did you mean "
        r"'train\.warmup_iters'",
    ):
        Config.from_toml(path)


def test_unknown_section_in_a_toml_file(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text("[trian]\nlr = 0.001\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean 'train'"):
        Config.from_toml(path)


def test_unknown_key_in_set_suggests_the_right_one(tmp_path, capsys, no_work):
    unknown = r"unknown config key 'train\.lrr'; did you mean 'train\.lr'"
    with pytest.raises(ConfigError, match=unknown):
        TINY.override(["train.lrr=1e-3"])
    assert _train(tmp_path, "--set", "data.augment.flip_prb=0") == 2
    err = capsys.readouterr().err
    assert "key 'data.augment.flip_prb'; did you mean 'data.augment.flip_prob'" in err
    assert main(["config", "tiny_coco_96x64", "--set", "modle.groups=4"]) == 2
    assert "unknown config key 'modle'; did you mean 'model'" in capsys.readouterr().err


def test_set_without_a_value(no_work, tmp_path, capsys):
    assert _train(tmp_path, "--set", "train.lr") == 2
    assert "--set 'train.lr': expected section.key=value" in capsys.readouterr().err


# -- wrong types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.lr=fast", r"train\.lr: expected float, got 'fast'"),
        ("train.epochs=1.5", r"train\.epochs: expected int, got 1\.5"),
        ("train.epochs=true", r"train\.epochs: expected int, got True"),
        ("inference.flip=1", r"inference\.flip: expected bool, got 1"),
        ("model.input_size=[64]", r"model\.input_size: expected 2 values, got \[64\]"),
        ("model.input_size=64", r"model\.input_size: expected a list, got 64"),
        ("model=3", r"model: expected a table, got 3"),
    ],
)
def test_wrong_types(setting, message, no_work, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        TINY.override([setting])
    assert _train(tmp_path, "--set", setting) == 2
    assert "error: " in capsys.readouterr().err


def test_wrong_type_in_a_toml_file_names_file_and_key(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('[train]\nbatch_size = "64"\n')
    with pytest.raises(ConfigError, match=r"my\.toml: train\.batch_size: expected int, got '64'"):
        Config.from_toml(path)


# -- impossible values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.batch_size=0", r"train\.batch_size=0 must be >= 1"),
        ("inference.batch_size=0", r"unknown config key .inference\.batch_size."),
        ("train.lr=-0.001", r"train\.lr=-0\.001 must be a finite number in \(0, 1000\]"),
        ("train.lr=0", r"train\.lr=0\.0 must be a finite number in \(0, 1000\]"),
        ("train.lr=nan", r"train\.lr=nan must be a finite number in \(0, 1000\]"),
        ("train.lr=inf", r"train\.lr=inf must be a finite number"),
        ("train.lr=1e300", r"train\.lr=1e\+300 must be a finite number"),
        ("train.gamma=nan", r"train\.gamma=nan must be a finite number in \(0, 1\]"),
        ("train.gamma=-0.1", r"train\.gamma=-0\.1 must be a finite number in \(0, 1\]"),
        ("train.warmup_ratio=nan", r"train\.warmup_ratio=nan must be a finite number"),
        ("train.warmup_iters=-1", r"train\.warmup_iters=-1 must be >= 0"),
        ("train.milestones=[-1, 3]", r"train\.milestones\[0\]=-1 must be >= 0"),
        ("data.augment.rotate_factor=nan", r"augment\.rotate_factor=nan must be a finite number"),
        ("data.augment.shift_factor=inf", r"augment\.shift_factor=inf must be a finite number"),
        ("data.augment.scale_factor=[nan, 1.5]", r"scale_factor\[0\]=nan must be a finite"),
        ("data.augment.half_body_padding=-1", r"half_body_padding=-1\.0 must be a finite"),
        ("data.augment.half_body_min_keypoints=-2", r"half_body_min_keypoints=-2 must be >= 0"),
        ("data.augment.flip_prob=nan", r"flip_prob=nan must be a finite number in \[0, 1\]"),
        ("data.padding=nan", r"data\.padding=nan must be a finite number"),
        ("data.seed=-1", r"data\.seed=-1 must be in \[0, "),
        ("inference.padding=inf", r"inference\.padding=inf must be a finite number"),
        ("codec.sigma=nan", r"codec\.sigma=nan must be a finite number in \(0, 100\]"),
        ("codec.sigma=1e5", r"codec\.sigma=100000\.0 must be a finite number in \(0, 100\]"),
        ("model={blocks=[1]}", r"model\.blocks"),
        ("train.epochs=0", r"train\.epochs=0 must be >= 1"),
        ("data.workers=-1", r"data\.workers=-1 must be in \[0, 1024\]"),
        ("data.augment.flip_prob=1.5", r"flip_prob=1\.5 must be a finite number in \[0, 1\]"),
        ("codec.sigma=0", r"codec\.sigma=0\.0 must be a finite number in \(0, 100\]"),
        ("model.input_size=[190, 256]", "multiples of 32 .the trunk downsamples by 32"),
        ("model.input_size=[0, 96]", "positive multiples of 32"),
        ("model.input_size=[32000, 96]", "positive multiples of 32"),
        ("model.num_deconv=6", r"model\.num_deconv=6: at most 5"),
        ("train.milestones=[200, 170]", "must be increasing"),
        ("train.amp='fp8'", "must be 'none', 'bf16' or 'fp16'"),
        ("model.num_keypoints=14", "model.num_keypoints=14 but the keypoint set has 17"),
        ("keypoints.sigmas=" + json.dumps([0.0] * 17), "sigmas .* must all be positive"),
    ],
)
def test_impossible_values(setting, message, no_work, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        TINY.override([setting])
    assert _train(tmp_path, "--set", setting) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_input_size_rule_is_what_the_network_needs():
    """Heatmaps are input / 4 only for multiples of 32: the trunk halves the size 5 times
    (rounding down) and the three deconvolutions double it 3 times."""
    net = PoseNet(ModelConfig(blocks=(1, 1, 1, 1), groups=8, deconv_channels=32,
                              input_size=(64, 96))).eval()  # fmt: skip
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 96, 64)).shape[2:] == (24, 16)  # (h, w) = input / 4
        odd = net(torch.zeros(1, 3, 100, 70)).shape[2:]
    assert tuple(odd) != (25, 17)  # 100 x 70 would not give input / 4: the codec would be wrong
    assert ModelConfig(input_size=(64, 96)).heatmap_size == (16, 24)


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-size", "0"],
        ["--batch-size", "-4"],
        ["--batch-size", "many"],
        ["--read-threads", "-1"],
        ["--max-frames", "0"],
        ["--max-people", "0"],
    ],
)
def test_predict_impossible_arguments(args, capsys, no_work):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "tiny_coco_96x64", str(IMAGES[0]), *args])
    assert exit_.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--read-threads", "-1"]])
def test_eval_impossible_arguments(args, capsys, no_work, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "tiny_coco_96x64", "--ann-file", str(ANN_FILE), "--images", str(COCO),
              "--out", str(tmp_path), *args])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[0]}" in err and "must be >= " in err


def test_unknown_device_is_refused_before_the_model_loads(no_work, tmp_path, capsys):
    code = main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--device", "gpu0"])
    refused(code, "error: --device gpu0: ", capsys)
    eval_args = ["--ann-file", str(ANN_FILE), "--images", str(COCO), "--out", str(tmp_path)]
    code = main(["eval", "tiny_coco_96x64", *eval_args, "--device", "tpu"])
    refused(code, "error: --device tpu: ", capsys)
    code = _train(tmp_path, "--device", "meta")  # a torch device, but no data comes out
    refused(code, "error: --device meta: nextpose runs on cpu, cuda or mps", capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda(no_work, tmp_path, capsys):
    code = _train(tmp_path, "--device", "cuda")
    refused(code, "error: --device cuda: CUDA is not available", capsys)


def test_the_python_api_refuses_a_device_it_cannot_run_on():
    """``load`` and ``PoseEstimator`` check the device as the CLI does (a NextposeError naming
    it, before any weights are read), not torch's RuntimeError at the first call."""
    net, config = (
        PoseNet(get_preset("tiny_coco_96x64").config.model),
        get_preset("tiny_coco_96x64").config,
    )
    cases = [("meta", "nextpose runs on cpu, cuda or mps"), ("gpu0", "device 'gpu0'")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "device cuda: CUDA is not available"))
    for device, message in cases:
        with pytest.raises(nextpose.InputError, match=message):
            nextpose.load("tiny_coco_96x64", device=device)
        with pytest.raises(nextpose.InputError, match=message):
            nextpose.PoseEstimator(net, config, device)


# -- missing files and folders -------------------------------------------------------------------


def test_missing_dataset_folders_and_files(tmp_path, no_work, capsys):
    def train(*args: str) -> int:
        return main(["train", "tiny_coco_96x64", *args, "--out", str(tmp_path / "run")])

    ann, images = ["--ann-file", str(ANN_FILE)], ["--images", str(COCO)]
    code = train(*ann, "--images", str(tmp_path / "nope"))
    refused(code, r"error: --images .*nope: no such image folder", capsys)
    code = train(*ann, "--images", str(IMAGES[0]))  # a file, not a folder
    refused(code, r"error: --images .*000000000785\.jpg: is a file, not the image folder", capsys)
    code = train("--ann-file", str(COCO), *images)  # a folder, not a file
    refused(code, r"error: --ann-file .*: is a folder, not the annotation file", capsys)
    code = train("--coco-root", str(tmp_path / "coco"))
    refused(code, r"error: --coco-root .*coco: no such COCO folder", capsys)
    code = train(*ann, *images, "--val-ann-file", str(tmp_path / "val.json"))
    refused(code, r"error: --val-ann-file .*val\.json: no such validation annotation", capsys)
    code = main(["eval", "tiny_coco_96x64", "--coco-root", str(tmp_path), "--out", str(tmp_path)])
    refused(code, r"error: --coco-root .*: no such annotation file", capsys)
    for args in (["--images", str(IMAGES[0])], ["--ann-file", str(COCO)]):
        code = main(["eval", "tiny_coco_96x64", "--ann-file", str(ANN_FILE), "--images", str(COCO),
                     *args, "--out", str(tmp_path / "ev")])  # fmt: skip
        refused(code, rf"error: {args[0]} .*: is a (file|folder), not the", capsys)
    assert not (tmp_path / "run").exists()


def test_config_file_problems(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"gone\.toml: no such config file"):
        Config.from_toml(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        Config.from_toml(tmp_path)  # a folder
    (tmp_path / "bad.toml").write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML \(.*line 1"):
        Config.from_toml(tmp_path / "bad.toml")
    (tmp_path / "binary.toml").write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=r"binary\.toml: not valid TOML"):
        Config.from_toml(tmp_path / "binary.toml")
    assert main(["config", str(tmp_path / "bad.toml")]) == 2
    assert "bad.toml: not valid TOML" in capsys.readouterr().err
    code = main(["config", "resnext51"])
    refused(code, "'resnext51' is neither a preset", capsys)


def test_a_written_config_reads_back(tmp_path):
    path = tmp_path / "my.toml"
    assert main(["config", "tiny_coco_96x64", "--set", "train.lr=0.002"]) == 0
    path.write_text(TINY.override(["train.lr=0.002"]).to_toml())
    assert Config.from_toml(path).train.lr == 0.002


# -- custom keypoint sets ------------------------------------------------------------------------

FOUR = {"names": ["head", "l_hand", "r_hand", "tail"], "sigmas": [0.05, 0.05, 0.05, 0.05],
        "flip_pairs": [["l_hand", "r_hand"]], "skeleton": [["head", "tail"]]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"names": None}, r"needs 'names' \(K strings\) and 'sigmas' \(K numbers\)"),
        ({"sigmas": [0.05] * 3}, "4 names but 4 flip indices and 3 sigmas"),
        ({"sigmas": [0.05, 0.05, 0, 0.05]}, "must all be positive"),
        ({"flip_pairs": [["l_hand"]]}, r"'flip_pairs' must be a list of \[a, b\] pairs"),
        ({"flip_pairs": "l_hand,r_hand"}, r"'flip_pairs' must be a list of \[a, b\] pairs"),
        ({"flip_pairs": [["l_hand", "r_foot"]]}, "unknown keypoint name 'r_foot'"),
        ({"skeleton": [[0, 7]]}, "keypoint index 7 is out of range for 4 keypoints"),
        ({"flip_indices": [0, 1, 1, 3]}, "is not a permutation"),
        ({"upper_body": ["head", "wings"]}, "unknown keypoint name 'wings'"),
        ({"flip_pair": [[1, 2]]}, "unknown key 'flip_pair'; did you mean 'flip_pairs'"),
        ({"flip_pairs": None, "flip_indices": [1, 2, 0, 3]}, "swap no left/right pairs"),
        ({"flip_pairs": [[True, False]]}, "keypoint index True is out of range"),
        ({"sigmas": [True, 0.05, 0.05, 0.05]}, r"and 'sigmas' \(K numbers\)"),
        ({"names": [1.5, "l_hand", "r_hand", "tail"]}, r"needs 'names' \(K strings\)"),
        ({"names": ["head", "l_hand", "r_hand", "head"]}, r"names \['head'\] occur more than"),
    ],
)
def test_bad_keypoint_metainfo(tmp_path, change, message, capsys, no_work):
    data = {k: v for k, v in (FOUR | change).items() if v is not None}
    path = tmp_path / "kpts.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"kpts\.json: .*{message}"):
        load_keypoint_set(path)
    assert _train(tmp_path, "--keypoints", str(path)) == 2
    assert "kpts.json: " in capsys.readouterr().err


def test_keypoint_metainfo_file_problems(tmp_path):
    with pytest.raises(ValueError, match=r"gone\.json: no such keypoint metainfo file"):
        load_keypoint_set(tmp_path / "gone.json")
    (tmp_path / "bad.json").write_text("{names: []}")
    with pytest.raises(ValueError, match=r"bad\.json: cannot parse"):
        load_keypoint_set(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: expected an object"):
        load_keypoint_set(tmp_path / "list.json")
    (tmp_path / "k.toml").write_text(
        'names = ["a", "b"]\nsigmas = [0.1, 0.1]\nflip_pairs = [["a", "b"]]\n'
    )
    assert load_keypoint_set(tmp_path / "k.toml").flip_indices == (1, 0)


def test_keypoint_count_of_the_data_must_match_the_keypoint_set(tmp_path, capsys):
    path = tmp_path / "kpts.json"
    path.write_text(json.dumps(FOUR))
    assert _train(tmp_path, "--keypoints", str(path), "--set", "data.workers=0") == 2
    assert "'keypoints' 12 numbers" in capsys.readouterr().err  # the COCO file has 17
    assert not (tmp_path / "run" / "last.pth").exists()


def test_python_api_rejects_bad_values_too():
    with pytest.raises(nextpose.InputError, match="batch_size must be >= 1"):
        nextpose.load("tiny_coco_96x64", batch_size=0)  # refused before any download
    with pytest.raises(ConfigError, match="multiples of 32"):
        ModelConfig(input_size=(100, 70))
    with pytest.raises(ConfigError, match=r"config: expected a table"):
        Config.from_dict([1, 2])  # type: ignore[arg-type]


def test_python_api_checks_numbers_finite_first():
    with pytest.raises(ConfigError, match=r"train\.gamma=nan must be a finite number"):
        nextpose.config.TrainConfig(gamma=float("nan"))
    with pytest.raises(ConfigError, match=r"train\.epochs=2\.5 must be an integer >= 1"):
        nextpose.config.TrainConfig(epochs=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"augment\.rotate_factor='80' must be a finite number"):
        nextpose.config.AugmentConfig(rotate_factor="80")  # type: ignore[arg-type]


# -- deeply nested values ------------------------------------------------------------------------

DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("key", ["train.milestones", "model.input_size", "train.lr"])
def test_deeply_nested_set_value(key, no_work, tmp_path, capsys):
    with pytest.raises(ConfigError, match=rf"--set {key}=\.\.\.: values nested too deeply"):
        TINY.override([f"{key}={DEEP}"])
    assert _train(tmp_path, "--set", f"{key}={DEEP}") == 2
    err = capsys.readouterr().err
    assert "error: --set" in err and "nested too deeply" in err and len(err) < 300


def test_deeply_nested_toml_file(tmp_path, capsys):
    path = tmp_path / "deep.toml"
    path.write_text(f"[train]\nmilestones = {DEEP}\n")
    with pytest.raises(ConfigError, match=r"deep\.toml: values nested too deeply"):
        Config.from_toml(path)
    path.write_text("[train]\nmilestones = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.toml: values nested too deeply"):
        Config.from_toml(path)
    assert main(["config", str(path)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_moderately_nested_values_get_a_short_message():
    value = "[" * 200 + "]" * 200
    with pytest.raises(ConfigError) as err:
        TINY.override([f"train.milestones={value}"])
    assert "train.milestones: expected int, got [[[[...]]]]" in str(err.value)


def test_a_run_folder_never_takes_the_inputs_place(no_work, tmp_path, capsys):
    """A run writes config.toml, run.json, ... into --out: not over the config it was given,
    not among the training images; the validation options need their annotation file."""
    project = tmp_path / "project"
    project.mkdir()
    mine = project / "config.toml"
    mine.write_text("# my recipe\n" + TINY.to_toml())
    args = ["train", str(mine), "--pretrained", "none", "--ann-file", str(ANN_FILE)]
    assert main([*args, "--images", str(COCO), "--out", str(project)]) == 2
    assert "would write config.toml over the input" in capsys.readouterr().err
    assert mine.read_text().startswith("# my recipe")
    images = tmp_path / "images"
    shutil.copytree(COCO, images)
    assert main([*args, "--images", str(images), "--out", str(images)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert main([*args, "--images", str(COCO), "--out", ""]) == 2
    assert "--out: an empty path" in capsys.readouterr().err
    assert _train(tmp_path, "--val-images", str(COCO)) == 2
    assert "--val-images needs --val-ann-file" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in COCO.iterdir())


def test_ctrl_c_while_training_ends_with_a_line_and_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "last.pth").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    assert _train(tmp_path) == 130
    err = capsys.readouterr().err
    assert f"interrupted; --resume continues from {tmp_path / 'run' / 'last.pth'}" in err

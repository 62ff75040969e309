"""Bad checkpoint files and downloads through checkpoint.read/resolve, nextpose.load and the
predict command (issue 7): another architecture, truncated files, pickled code, hash mismatches,
partial downloads."""

import hashlib
import http.server
import pickle
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import IMAGES, refused

import nextpose
from nextpose import checkpoint
from nextpose.checkpoint import CheckpointError
from nextpose.cli import main


def _predict_cli(checkpoint_file: Path, model: str = "tiny_coco_96x64") -> int:
    return main(["predict", model, str(IMAGES[0]), "--checkpoint", str(checkpoint_file)])


def _published(tiny_checkpoint: Path, folder: Path, data: bytes | None = None) -> Path:
    """The tiny checkpoint under a published-style name carrying its sha256 prefix."""
    data = tiny_checkpoint.read_bytes() if data is None else data
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:8]
    path = folder / f"tiny_coco-{digest}_20200727.pth"
    path.write_bytes(data)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- files that are not what they should be ------------------------------------------------------


def test_checkpoint_of_another_architecture(tiny_checkpoint, capsys):
    with pytest.raises(CheckpointError) as err:
        nextpose.load("resnext101_coco_256x192", tiny_checkpoint)
    message = str(err.value)
    assert f"{tiny_checkpoint}: the checkpoint does not fit model 'resnext101_coco_256x192'" in (
        message
    )
    assert "missing keys: " in message and "shape mismatches: " in message
    assert "another architecture or input size" in message
    assert _predict_cli(tiny_checkpoint, "resnext50_coco_256x192") == 2
    assert "does not fit model 'resnext50_coco_256x192'" in capsys.readouterr().err


def test_checkpoint_with_another_keypoint_count(tmp_path):
    config = nextpose.get_preset("tiny_coco_96x64").config
    names = tuple(f"k{i}" for i in range(14))
    kset = nextpose.KeypointSet(names, tuple(range(14)), (0.05,) * 14)
    other = replace(config, keypoints=kset, model=replace(config.model, num_keypoints=14))
    path = tmp_path / "k14.pth"
    checkpoint.save_model(path, nextpose.PoseNet(other.model), other)
    with pytest.raises(CheckpointError, match=r"shape mismatches: head\.final_layer\.weight"):
        nextpose.load("tiny_coco_96x64", path)
    assert nextpose.load(path).config.model.num_keypoints == 14  # it carries its own config


def test_checkpoint_with_nan_weights(tmp_path, capsys):
    """A diverged run's weights are refused at load time, naming the tensors, not discovered
    later as NaN heatmaps."""
    config = nextpose.get_preset("tiny_coco_96x64").config
    model = nextpose.PoseNet(config.model)
    with torch.no_grad():
        model.head.final_layer.bias[2] = float("nan")
        model.backbone.layer1[0].bn1.running_var[0] = float("inf")
    path = tmp_path / "diverged.pth"
    checkpoint.save_model(path, model, config)
    with pytest.raises(CheckpointError, match=r"diverged.pth: .* NaN or inf in ") as err:
        nextpose.load(path)
    assert "backbone.layer1.0.bn1.running_var" in str(err.value)
    assert "head.final_layer.bias" in str(err.value)
    code = main(["predict", str(path), str(IMAGES[0]), "--whole-image"])
    refused(code, r"diverged.pth: the checkpoint's weights hold NaN or inf", capsys)


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.9, 0.999])
def test_truncated_checkpoint(tiny_checkpoint, tmp_path, capsys, fraction):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        nextpose.load("tiny_coco_96x64", path)
    assert _predict_cli(path) == 2
    assert "cut.pth: not a readable PyTorch checkpoint (truncated or corrupt?" in (
        capsys.readouterr().err
    )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "content",
    [b"", b"hello, I am a text file\n", bytes(range(256)), pickle.dumps([1, 2.0, "three"])[:-4]],
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"x\.pth: not a readable PyTorch checkpoint"):
        checkpoint.read(path)


def test_empty_file_is_named_empty(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: .*the file is empty"):
        checkpoint.read(tmp_path / "empty.pth")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_plain_pickle_of_a_callable_is_refused_by_name(tmp_path, protocol):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps({"a": print, "b": "builtins"}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"x\.pth: refused to load.*\((builtins\.)?print\)"):
        checkpoint.read(path)
    if protocol >= 4:  # read from the opcodes: names repeated through the memo are resolved
        path.write_bytes(pickle.dumps([print, print, len, "x"], protocol=protocol))
        with pytest.raises(CheckpointError, match=r"\(builtins\.print, builtins\.len\)"):
            checkpoint.read(path)


def test_checkpoint_that_is_not_a_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict of tensors, found list"):
        nextpose.load("tiny_coco_96x64", tmp_path / "list.pth")


def test_directory_and_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        nextpose.load("tiny_coco_96x64", tmp_path)
    with pytest.raises(CheckpointError, match=r"gone\.pth: no such checkpoint file"):
        nextpose.load("tiny_coco_96x64", tmp_path / "gone.pth")


def test_nextpose_checkpoint_with_a_broken_config(tiny_checkpoint, tmp_path):
    obj = torch.load(tiny_checkpoint, weights_only=True)
    obj["config"]["train"]["lr"] = -1.0
    obj["config"]["model"]["input_sise"] = [64, 96]
    torch.save(obj, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError, match=r"broken\.pth: the config it carries is invalid: unknown config key"
    ):
        nextpose.load(tmp_path / "broken.pth")


# -- pickled code --------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would run ``exec`` and create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


def _evil_files(folder: Path) -> list[Path]:
    """The same payload as a zip checkpoint, a legacy (torch < 1.6) file and plain pickles
    (protocol 2, and 5 whose opcodes stop torch before it names the callable)."""
    payload = {"state_dict": {"w": torch.zeros(2)}, "meta": _Payload(folder / "EXECUTED")}
    files = [folder / "zip.pth", folder / "legacy.pth", folder / "raw.pkl", folder / "raw5.pkl"]
    torch.save(payload, files[0])
    torch.save(payload, files[1], _use_new_zipfile_serialization=False)
    files[2].write_bytes(pickle.dumps({"meta": payload["meta"]}, protocol=2))
    files[3].write_bytes(pickle.dumps({"meta": payload["meta"]}, protocol=5))
    return files


def test_pickled_code_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "EXECUTED"
    for path in _evil_files(tmp_path):
        with pytest.raises(CheckpointError) as err:
            checkpoint.read(path)
        message = str(err.value)
        assert f"{path}: refused to load" in message and "could run code" in message
        assert "Nothing in it was executed" in message
        assert re.search(r"\((builtins\.)?exec\)", message)  # the blocked callable is named
        with pytest.raises(CheckpointError, match="refused to load"):
            nextpose.load(path)
        assert _predict_cli(path) == 2
        assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_pickled_code_as_pretrained_trunk_weights_is_refused(tmp_path):
    from nextpose.training.pretrained import load_pretrained_backbone

    config = nextpose.get_preset("tiny_coco_96x64").config.model
    model = nextpose.PoseNet(config)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_pretrained_backbone(model.backbone, str(_evil_files(tmp_path)[0]), config)
    assert not (tmp_path / "EXECUTED").exists()


# -- downloads -----------------------------------------------------------------------------------


def test_hash_mismatch_on_download(tiny_checkpoint, tmp_path, cache, capsys):
    source = tmp_path / "tiny_coco-00000000_20200727.pth"  # the wrong prefix for this file
    if hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest().startswith("00000000"):
        source = tmp_path / "tiny_coco-11111111_20200727.pth"
    shutil.copy(tiny_checkpoint, source)
    with pytest.raises(CheckpointError) as err:
        nextpose.load(source.as_uri(), progress=False)
    message = str(err.value)
    assert f"{source.as_uri()}: downloaded file does not match the sha256 prefix" in message
    assert "it was discarded" in message
    assert not cache.exists() or not list(cache.iterdir())  # nothing kept, not even a temp file
    assert main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--checkpoint",
                 source.as_uri()]) == 2  # fmt: skip
    assert "does not match the sha256 prefix" in capsys.readouterr().err


def test_partial_download_in_the_cache_is_fetched_again(tiny_checkpoint, tmp_path, cache):
    source = _published(tiny_checkpoint, tmp_path)
    cached = checkpoint.cache_path(source.as_uri())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_checkpoint.read_bytes()[:3000])  # cut off earlier
    local = checkpoint.resolve(source.as_uri(), progress=False)
    assert local.read_bytes() == tiny_checkpoint.read_bytes()
    assert nextpose.load(source.as_uri(), progress=False).config.model.input_size == (64, 96)


def test_partial_download_without_a_hash_is_fetched_again(tiny_checkpoint, tmp_path, cache):
    source = tmp_path / "my_model.pth"  # no hash in the name: completeness is checked instead
    shutil.copy(tiny_checkpoint, source)
    cached = checkpoint.cache_path(source.as_uri())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_checkpoint.read_bytes()[:-100])
    (cached.parent / ".my_model.pth.0123.partial").write_bytes(b"left by a killed download")
    estimator = nextpose.load(source.as_uri(), progress=False)
    assert estimator.config.model.input_size == (64, 96)
    assert cached.read_bytes() == tiny_checkpoint.read_bytes()


class _ShortServer(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, sends a third of it, and hangs up."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 3])
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def short_server(tiny_checkpoint):
    _ShortServer.body = tiny_checkpoint.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_interrupted_download_is_never_kept(tiny_checkpoint, short_server, cache):
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:8]
    size = len(tiny_checkpoint.read_bytes())
    short = rf"the download is incomplete \({size // 3} of {size} bytes\); it was discarded"
    with pytest.raises(CheckpointError, match=short):
        checkpoint.resolve(f"{short_server}/tiny-{digest}_20200727.pth", progress=False)
    with pytest.raises(CheckpointError, match=short):
        checkpoint.resolve(f"{short_server}/tiny.pth", progress=False)
    assert not list(cache.iterdir())


def test_unreadable_cached_file_says_how_to_recover(tmp_path, cache):
    cached = checkpoint.cache_path("https://example.org/legacy_model.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x80\x02garbage")  # not zip: cannot be checked
    with pytest.raises(CheckpointError, match="delete it to download it again"):
        checkpoint.read(cached)


# -- state_dicts that are not dicts of named tensors (issue 13, class 6) --------------------------


def _tensor() -> torch.Tensor:
    return torch.zeros(2)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"state_dict": [_tensor(), _tensor()]}, r"its 'state_dict' is a list, not a dict"),
        ({"state_dict": (_tensor(),)}, r"its 'state_dict' is a tuple, not a dict"),
        ({"state_dict": None}, r"its 'state_dict' is a NoneType, not a dict"),
        ({"state_dict": "weights"}, r"its 'state_dict' is a str, not a dict"),
        ({"state_dict": {0: _tensor(), 1: _tensor()}}, r"not parameter names \(str\): 0, 1$"),
        ({"state_dict": {"a": _tensor(), 2.5: _tensor()}}, r"not parameter names \(str\): 2\.5"),
        ({0: _tensor(), "meta": {}}, r"it has keys that are not parameter names \(str\): 0"),
        ({"state_dict": {"w": [1.0, 2.0]}}, r"holds values that are not tensors: w \(list\)"),
        ({"state_dict": {"w": _tensor(), "b": 3}}, r"values that are not tensors: b \(int\)"),
        ({"state_dict": {"model": {"w": _tensor()}}}, r"not tensors: model \(dict\)"),
        ({"state_dict": {}}, r"its 'state_dict' holds no tensors \(no weights\)"),
        ({"epoch": 3, "meta": {"x": 1}}, r"it holds no tensors \(no weights\)"),
    ],
)  # fmt: skip
def test_malformed_state_dict(tmp_path, capsys, payload, problem):
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: .*{problem}"):
        checkpoint.read(path)
    with pytest.raises(CheckpointError, match=problem):
        nextpose.load("tiny_coco_96x64", path)
    with pytest.raises(CheckpointError, match=problem):
        checkpoint.load_into(nextpose.PoseNet(nextpose.get_preset("tiny_coco_96x64").config.model),
                             payload, "given.pth", "tiny_coco_96x64")  # fmt: skip
    refused(_predict_cli(path), rf"odd\.pth: .*{problem}", capsys)


def test_malformed_state_dict_as_pretrained_trunk_weights(tmp_path):
    from nextpose.training.pretrained import load_pretrained_backbone

    config = nextpose.get_preset("tiny_coco_96x64").config.model
    path = tmp_path / "trunk.pth"
    torch.save({"state_dict": {0: torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"trunk\.pth: its 'state_dict' has keys that are"):
        load_pretrained_backbone(nextpose.PoseNet(config).backbone, str(path), config)

"""An optional dependency that is missing is named, with the pip command, before any work and
without an output file; metric problems in the ground truth are found before the model loads."""

import json
import sys

import pytest
from conftest import ANN_FILE, COCO, IMAGES

from nextpose import predictor
from nextpose.cli import main


@pytest.fixture
def without(monkeypatch):
    """Make ``import NAME`` fail, as when the extra is not installed (a None entry in
    ``sys.modules`` is Python's way of saying a module cannot be imported)."""

    def hide(*names):
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)

    return hide


def test_onnxruntime_backend_without_the_extra(tiny_checkpoint, tmp_path, capsys, without):
    without("onnxruntime")
    out = tmp_path / "poses.json"
    code = main(["predict", str(tiny_checkpoint), str(IMAGES[0]), "--backend", "onnxruntime",
                 "--out", str(out)])  # fmt: skip
    assert code == 2 and not out.exists()
    assert "needs the 'onnx' extra: pip install \"nextpose[onnx]\"" in capsys.readouterr().err


def test_export_without_the_extra(tiny_checkpoint, tmp_path, capsys, without):
    without("onnx")
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "m.onnx")]) == 2
    assert "needs the 'onnx' extra" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_ground_truth_the_metric_refuses_stops_eval_before_the_model(tmp_path, capsys, monkeypatch):
    data = json.loads(ANN_FILE.read_text())
    data["annotations"][0]["area"] = [1, 2]
    bad = tmp_path / "gt.json"
    bad.write_text(json.dumps(data))
    monkeypatch.setattr(predictor, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["eval", "resnext50_coco_256x192", "--ann-file", str(bad), "--images", str(COCO),
                 "--gt-boxes", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 2 and "'area'" in capsys.readouterr().err

"""The README's examples, run as written: every Python block, and every ``nextpose`` line of its
shell blocks, in README order, in a folder laid out as the examples expect (``photos/``,
``clip.mp4``, a COCO-style ``coco/`` made from the sample).

Published weights cannot be downloaded here, so the download is served the oracle's deterministic
weights of the same architecture, and the detector is a small torchvision one with random weights;
training lines run one epoch of the tiny preset's network from no pretrained trunk. Lines that
cannot run on this machine are listed in ``NOT_RUN`` with the reason, so a new example is run
unless someone says why not.
"""

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE, ORACLE_RUNS

import nextpose
from nextpose import checkpoint, detection
from nextpose.cli import main
from nextpose.keypoints import COCO_KEYPOINTS
from nextpose.presets import get_preset

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

NOT_RUN = {
    "pip install": "installs the project (what CI does before the tests)",
    "python -m pytest": "runs this very suite",
    "torchrun": "starts several processes; tests/test_training.py (DDP) and "
    "tests/test_distributed.py (eval, predict, resume) run them with 2 and 3 gloo processes",
    " 0 --detector": "needs a camera",
}
SMALL_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
README_SERVER = "127.0.0.1:8000"  # where the README's curl and requests examples ask
# The training lines train the tiny preset's network for one epoch: the same command, seconds
# instead of a full-size resnext50's minute on two cores.
_TINY = get_preset("tiny_coco_96x64").config.model
TINY = [f"model.{name}={list(getattr(_TINY, name))}" for name in ("blocks", "input_size")]
TINY += [f"model.{name}={getattr(_TINY, name)}" for name in ("groups", "deconv_channels")]
TRAIN_EXTRA = ["--set", "train.epochs=1", "--set", "data.workers=0", "--pretrained", "none",
               *[x for s in TINY for x in ("--set", s)]]  # fmt: skip


def blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def commands() -> list[str]:
    """The ``nextpose`` lines of the shell blocks (continuation lines joined)."""
    out = []
    for lang, code in blocks():
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("nextpose ", "torchrun ")):
                out.append(line)
    return out


def test_readme_first_lines_are_install_run_test():
    lang, code = blocks()[0]
    lines = [line.split("#")[0].strip() for line in code.strip().splitlines()]
    assert lang == "bash" and len(lines) == 3
    assert lines[0].startswith("pip install") and lines[2] == "python -m pytest"
    assert lines[1].startswith("nextpose predict")


@pytest.fixture
def workdir(tmp_path, monkeypatch, oracle_weights):
    """A folder with what the examples name, published weights and detector served locally."""
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    shutil.copytree(COCO, tmp_path / "photos", ignore=shutil.ignore_patterns("*.json", "*.md"))
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5,
                             (320, 240))  # fmt: skip
    for path in sorted(COCO.glob("*.jpg"))[:3]:
        writer.write(cv2.resize(cv2.imread(str(path)), (320, 240)))
    writer.release()
    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        shutil.copytree(tmp_path / "photos", coco / split)
        (coco / "annotations").mkdir(exist_ok=True)
        shutil.copy(ANN_FILE, coco / "annotations" / f"person_keypoints_{split}.json")
    (coco / "person_detection_results").mkdir()
    dets, per_image = [], {}
    for det in json.loads(DET_FILE.read_text()):  # the 3 best per image keep the test quick
        per_image[det["image_id"]] = per_image.get(det["image_id"], 0) + 1
        dets += [det] if per_image[det["image_id"]] <= 3 else []
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    shutil.copy(tmp_path / "dets.json", coco / "person_detection_results" /
                "COCO_val2017_detections_AP_H_56_person.json")  # fmt: skip
    shutil.copytree(tmp_path / "photos", tmp_path / "val2017")
    shutil.copytree(tmp_path / "photos", tmp_path / "imgs")
    shutil.copy(ANN_FILE, tmp_path / "train.json")
    shutil.copy(ANN_FILE, tmp_path / "val.json")
    shutil.copy(ORACLE_RUNS / "results_gt_flip.keypoints.json", tmp_path / "my_results.json")
    kset = {"names": list(COCO_KEYPOINTS.names), "sigmas": list(COCO_KEYPOINTS.sigmas),
            "flip_indices": list(COCO_KEYPOINTS.flip_indices),
            "skeleton": [list(p) for p in COCO_KEYPOINTS.skeleton]}  # fmt: skip
    (tmp_path / "my_keypoints.json").write_text(json.dumps(kset))

    real_resolve = checkpoint.resolve

    def resolve(source, progress=True):
        is_published = str(source).startswith("https://download.openmmlab.com/")
        return oracle_weights if is_published else real_resolve(source, progress)

    def small_detector(name=detection.DEFAULT_DETECTOR, weights="default", **options):
        options.pop("progress", None)
        fast = {"min_size": 160, "max_size": 240, "rpn_post_nms_top_n_test": 50}
        torch.manual_seed(0)
        model = detection.build_detector_model(SMALL_DETECTOR, None, **fast)
        return detection.PersonDetector(model, name=SMALL_DETECTOR, **options)

    monkeypatch.setattr(checkpoint, "resolve", resolve)
    monkeypatch.setattr(detection, "load_detector", small_detector)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class ReadmeServer:
    """The README's ``nextpose serve`` line in a child process, on a free port instead of
    8000 and with the oracle's weights as ``--checkpoint`` (the child cannot be served the
    download); the curl and requests examples are pointed at it."""

    def __init__(self, line: str, weights: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        args = [*shlex.split(line)[1:], "--port", self.address.split(":")[1], "--checkpoint",
                str(weights)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(Path(nextpose.__file__).parent.parent)}
        self.process = subprocess.Popen([sys.executable, "-m", "nextpose", *args], env=env)
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"{line}: exit {self.process.returncode}"
            try:
                urllib.request.urlopen(f"http://{self.address}/healthz", timeout=1)
                return
            except OSError:
                assert time.monotonic() < deadline, f"{line}: did not start"
                time.sleep(0.3)

    def point(self, code: str) -> str:
        return code.replace(README_SERVER, self.address)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def run_curl(line: str) -> None:
    if shutil.which("curl") is None:
        return  # tests/test_serve.py asks the same with requests
    out = subprocess.run([*shlex.split(line), "--fail-with-body", "-s"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, f"{line}: {out.stdout} {out.stderr}"
    assert len(json.loads(out.stdout)[0]["keypoints"]) == 17


def run_command(line: str) -> None:
    line = line.replace("--device cuda", "--device cpu") if not torch.cuda.is_available() else line
    args, out_file = shlex.split(line), None
    if ">" in args:
        args, out_file = args[: args.index(">")], args[args.index(">") + 1]
    args = args[1:]
    if args[0] == "train":
        args += TRAIN_EXTRA
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(args)
    assert code == 0, f"{line}: exit {code}"
    if out_file:
        Path(out_file).write_text(stdout.getvalue())


@pytest.mark.slow
def test_readme_examples_run(workdir, capsys, oracle_weights):
    ran = []
    server = None
    try:
        for lang, code in blocks():
            ran += run_block(lang, code, workdir, oracle_weights, server)
            if ran and isinstance(ran[-1], ReadmeServer):
                server = ran.pop()
            elif server is not None and lang == "python" and README_SERVER in code:
                server.stop()  # its examples have run
                server = None
    finally:
        if server is not None:
            server.stop()
    assert len(ran) >= 15
    assert len(json.loads((workdir / "results.json").read_text())) == 12  # 3 boxes x 4 images
    assert json.loads((workdir / "eval" / "metrics.json").read_text())["AP"] >= 0
    assert os.path.getsize(workdir / "pose-image.onnx") > 1e6


def run_block(lang: str, code: str, workdir: Path, weights: Path, server) -> list:
    """Run one fenced block; returns what ran (a started server last)."""
    ran: list = []
    if lang == "python":
        if README_SERVER in code:
            assert server is not None, "a README example asks a server no line started"
            code = server.point(code)
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        return ["python"]
    if lang != "bash":
        return ran
    started = None
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        reason = next((why for key, why in NOT_RUN.items() if key in line), None)
        if not line or reason:
            continue
        if line.startswith("nextpose serve "):
            started = server = ReadmeServer(line, weights)
        elif line.startswith("curl "):
            assert server is not None, "a README curl line asks a server no line started"
            run_curl(server.point(line))
        else:
            assert line.startswith("nextpose "), f"a README shell line the test cannot run: {line}"
            run_command(line)
        ran.append(line)
        if line.startswith("nextpose predict") and "000000000785.jpg --out poses.json" in line:
            poses = json.loads((workdir / "poses.json").read_text())  # the main command: one
            assert len(poses) == 1 and len(poses[0]["keypoints"]) == 17  # pose, drawn over it
            assert (workdir / "drawn" / "000000000785.jpg").is_file()
    return [*ran, started] if started is not None else ran


def test_every_readme_command_is_run_or_has_a_reason():
    for lang, code in blocks():  # shell lines are nextpose commands or curl calls to serve
        for line in code.replace("\\\n", " ").splitlines() if lang == "bash" else []:
            line = line.split("  #")[0].strip()
            reason = next((why for key, why in NOT_RUN.items() if key in line), None)
            assert not line or reason or line.startswith(("nextpose ", "curl ")), line
    for line in commands():
        reason = next((why for key, why in NOT_RUN.items() if key in line), None)
        assert line.startswith("nextpose ") or reason, line


def test_readme_python_examples_name_only_public_api():
    names = set(re.findall(r"nextpose\.([A-Za-z_]\w*)", README))
    modules = {
        "evaluation",
        "export",
        "engine",
        "geometry",
        "geometry_torch",
        "optimize",
        "runtime",
        "errors",
    }
    missing = [n for n in names - modules if not hasattr(nextpose, n)]
    assert not missing, f"README names what nextpose does not export: {missing}"

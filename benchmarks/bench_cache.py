"""The first and the second `nextpose predict` of a model, for the backends that prepare a graph
(``onnxruntime``: the ONNX export; ``compile``: the AOTInductor package; both kept in
nextpose's cache folder): wall time of the whole command and the seconds from the start of the
process until the network's first batch returned, each from a fresh process, both caches empty
before the first; and whether the command imported torch (a cached ``onnxruntime`` graph over
given boxes needs none).

Usage::

    python benchmarks/bench_cache.py                       # resnext50 256x192, seed-0 weights
    python benchmarks/bench_cache.py --backends onnxruntime --preset tiny_coco_96x64
    python benchmarks/bench_cache.py --backends onnxruntime --boxes   # the sample's detections

Without ``--boxes`` the command runs the default person detector (torchvision's, imported and
run by both commands); with it, the image's best box of the sample's detection file is given
(one person, as the detector finds) and no detector is loaded.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests" / "data" / "coco-mini" / "000000000785.jpg"
DETECTIONS = ROOT / "tests" / "data" / "coco-mini" / "test_coco_det_AP_H_56.json"
ORACLE = ROOT / "tests" / "data" / "oracle"

# Times the first network batch inside the command, from the start of the process (imports,
# reading the weights, exporting or loading the graph: what the caches shorten). It patches the
# engine, which imports no torch, so that a run that needs none still imports none.
PROBE = """
import sys, time
start = time.perf_counter()
from nextpose import engine
run_batch = engine.Engine._run_batch
def timed(self, *args, **kwargs):
    out = run_batch(self, *args, **kwargs)
    if not getattr(timed, "done", False):
        timed.done = True
        print(f"FIRST_CALL {time.perf_counter() - start:.2f}", file=sys.stderr)
    return out
engine.Engine._run_batch = timed
from nextpose.cli import main
code = main(sys.argv[1:])
print(f"TORCH {'torch' in sys.modules}", file=sys.stderr)
sys.exit(code)
"""


def weights(preset: str, folder: Path) -> Path:
    """The oracle's deterministic weights for the preset's architecture, as a file."""
    spec = importlib.util.spec_from_file_location("make_weights", ORACLE / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    depth = preset.split("_")[0].removeprefix("resnext")
    manifest = json.loads((ORACLE / f"manifest_resnext{depth}.json").read_text())
    path = folder / f"{preset}_seed0.pth"
    torch.save(make_weights.make_checkpoint(manifest, 0), path)
    return path


def best_box(folder: Path) -> Path:
    """The image's highest-scoring detection of the sample's file, as a COCO results file."""
    image_id = int(IMAGE.stem)
    ours = [d for d in json.loads(DETECTIONS.read_text()) if d["image_id"] == image_id]
    path = folder / "box.json"
    path.write_text(json.dumps([max(ours, key=lambda d: d["score"])]))
    return path


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, bool]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nextpose {' '.join(args)} failed:\n{done.stderr}")
    lines = done.stderr.splitlines()
    first = [line for line in lines if line.startswith("FIRST_CALL")]
    torch = "TORCH True" in lines
    return wall, float(first[0].split()[1]) if first else float("nan"), torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="resnext50_coco_256x192")
    parser.add_argument("--backends", default="onnxruntime,compile")
    parser.add_argument("--checkpoint", help="weights (default: the oracle's seed-0 weights)")
    parser.add_argument("--boxes", action="store_true", help="a given box, no detector")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        elif args.preset.startswith("resnext"):
            checkpoint = weights(args.preset, folder)
        else:
            raise SystemExit("--checkpoint is needed for a preset without oracle weights")
        for backend in args.backends.split(","):
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env["NEXTPOSE_CACHE"] = str(folder / backend / "nextpose")
            env["TORCHINDUCTOR_CACHE_DIR"] = str(folder / backend / "inductor")
            command = ["predict", args.preset, str(IMAGE), "--checkpoint", str(checkpoint)]
            command += ["--backend", backend, "--out", str(folder / f"{backend}.json")]
            command += ["--boxes", str(best_box(folder))] if args.boxes else []
            times = []
            for attempt in ("first", "second"):
                (folder / f"{backend}.json").unlink(missing_ok=True)
                wall, first, torch_used = run(command, env)
                times.append((wall, first))
                torch_note = "" if torch_used else ", torch not imported"
                print(
                    f"  {backend:<12} {attempt}: command {wall:6.1f} s, first batch done at "
                    f"{first:6.1f} s{torch_note}"
                )
            (w1, f1), (w2, f2) = times
            print(
                f"  {backend:<12} second vs first: command x{w1 / w2:.1f}, "
                f"first batch x{f1 / f2:.1f}"
            )


if __name__ == "__main__":
    main()

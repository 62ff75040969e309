"""Load test of ``nextpose serve``: concurrent clients against a real server process on
127.0.0.1, next to the same images through ``predict_many`` in one process, in one run.

Starts ``nextpose serve`` (tiny preset with seeded random weights by default; ``--oracle``: the
resnext50 256x192 preset with the oracle's seed-0 weights), then ``--clients`` threads each send
``--requests`` requests, one after another, cycling over the four COCO sample images with each
image's best ``--boxes`` detector boxes. It checks that every request was answered 200 with its
people (none lost, keypoints equal to ``predict_many``'s), and prints latency (p50, p99),
throughput, the server's mean batch (crops per network batch), and the throughput of
``predict_many`` on the same (image, boxes) sequence with ``batch_size = --max-batch``.

Usage::

    python benchmarks/bench_serve.py                       # 16 clients x 20 requests, tiny
    python benchmarks/bench_serve.py --oracle --requests 4 # resnext50 (slow on a CPU)
    python benchmarks/bench_serve.py --device cuda --oracle
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

import nextpose
from nextpose import checkpoint
from nextpose.model import PoseNet
from nextpose.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
COCO = ROOT / "tests" / "data" / "coco-mini"
ORACLE = ROOT / "tests" / "data" / "oracle"


def make_checkpoint(folder: Path, oracle: bool) -> Path:
    """A nextpose checkpoint: the tiny preset with seeded random weights (as the tests make
    it), or resnext50 256x192 with the oracle's seed-0 deterministic weights."""
    path = folder / ("resnext50_seed0.pth" if oracle else "tiny.pth")
    if oracle:
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_weights", ORACLE / "make_weights.py")
        make_weights = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make_weights)
        manifest = json.loads((ORACLE / "manifest_resnext50.json").read_text())
        preset = get_preset("resnext50_coco_256x192")
        model = PoseNet(preset.config.model)
        checkpoint.load_into(model, make_weights.make_checkpoint(manifest, 0), "seed-0", "rx50")
    else:
        torch.manual_seed(0)
        preset = get_preset("tiny_coco_96x64")
        model = PoseNet(preset.config.model)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    checkpoint.save_model(path, model, preset.config, preset=preset.name)
    return path


def sample(per_image: int) -> list[tuple[Path, list]]:
    """(image, its best ``per_image`` detector boxes xyxy + score) for the four images."""
    by_id: dict[int, list] = {}
    for det in json.loads((COCO / "test_coco_det_AP_H_56.json").read_text()):
        x, y, w, h = det["bbox"]
        by_id.setdefault(det["image_id"], []).append([x, y, x + w, y + h, det["score"]])
    images = sorted(COCO.glob("*.jpg"))
    return [(p, sorted(by_id[int(p.stem)], key=lambda b: -b[4])[:per_image]) for p in images]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "nextpose", "serve", str(path), "--port", str(port),
               "--device", args.device, "--backend", args.backend, "--max-batch",
               str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(nextpose.__file__).parent.parent)}
    server = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode}")
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return server, url
        except requests.ConnectionError:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server did not start")


def load_test(url: str, work: list[tuple[Path, list]], args: argparse.Namespace) -> dict:
    """``clients`` threads x ``requests`` requests each; every answer and latency kept."""
    bodies = {p: p.read_bytes() for p, _ in work}
    answers: list[list] = [[] for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)

    def client(c: int) -> None:
        session = requests.Session()
        start.wait()
        for r in range(args.requests):
            path, boxes = work[(c * args.requests + r) % len(work)]
            t0 = time.perf_counter()
            answer = session.post(
                url + "/v1/poses",
                files={"image": (path.name, bodies[path], "image/jpeg")},
                data={"boxes": json.dumps(boxes)},
                timeout=600,
            )
            took = time.perf_counter() - t0
            body = (
                answer.json() if answer.headers.get("content-type") == "application/json" else None
            )
            answers[c].append((path, answer.status_code, body, took))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    before = requests.get(url + "/v1/stats").json()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = requests.get(url + "/v1/stats").json()
    flat = [a for per_client in answers for a in per_client]
    batches = after["batches"] - before["batches"]
    crops = after["crops"] - before["crops"]
    return {"answers": flat, "wall": wall, "batches": batches, "crops": crops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--boxes", type=int, default=1, help="detector boxes per request")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--oracle", action="store_true", help="resnext50 256x192, seed-0 weights")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    work = sample(args.boxes)
    with tempfile.TemporaryDirectory() as folder:
        path = make_checkpoint(Path(folder), args.oracle)
        server, url = start_server(path, args)
        try:
            for p, boxes in work:  # warm up: the first batches build the network
                requests.post(url + "/v1/poses", files={"image": p.read_bytes()},
                              data={"boxes": json.dumps(boxes)}, timeout=600)  # fmt: skip
            result = load_test(url, work, args)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

        total = args.clients * args.requests
        answers = result["answers"]
        statuses = [a[1] for a in answers]
        assert len(answers) == total, f"{total - len(answers)} requests lost"
        errors = [a for a in answers if a[1] != 200]
        assert not errors, f"{len(errors)} errors, e.g. {errors[0][1]} {errors[0][2]}"

        # The same (image, boxes) sequence through predict_many, in this process.
        estimator = nextpose.load(str(path), device=args.device, backend=args.backend,
                                  batch_size=args.max_batch)  # fmt: skip
        sequence = [work[i % len(work)] for c in range(args.clients)
                    for i in range(c * args.requests, (c + 1) * args.requests)]  # fmt: skip
        # In a thread, as the server's engine runs: on a loaded machine, torch's OpenMP pool
        # called from the main thread was measured several times slower than from another.
        got: list = []

        def offline() -> None:
            estimator.predict_many([p for p, _ in work], [b for _, b in work])  # warm up
            t0 = time.perf_counter()
            got.append(estimator.predict_many([p for p, _ in sequence], [b for _, b in sequence]))
            got.append(time.perf_counter() - t0)

        thread = threading.Thread(target=offline)
        thread.start()
        thread.join()
        many, many_wall = got
    expected = {p: m for (p, _), m in zip(sequence, many, strict=True)}
    for p, _, body, _ in answers:  # every answer: its people, at predict_many's keypoints
        got = np.array([r["keypoints"] for r in body], np.float64)[..., :2]
        np.testing.assert_array_equal(got, expected[p].keypoints.astype(np.float64))
    latencies = sorted(a[3] for a in answers)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    crops = result["crops"]
    served = total / result["wall"]
    baseline = total / many_wall
    print(
        f"\n{args.clients} clients x {args.requests} requests, {args.boxes} box(es) each, "
        f"{'resnext50 256x192' if args.oracle else 'tiny 96x64'}, {estimator.backend} on "
        f"{args.device}, --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}"
    )
    print(f"answered {statuses.count(200)} of {total} (200), none lost, keypoints equal to "
          "predict_many's")  # fmt: skip
    print("\n| | requests/s | crops/s | p50 latency | p99 latency | mean batch |")
    print("|---|---|---|---|---|---|")
    print(
        f"| `nextpose serve` | {served:.1f} | {crops / result['wall']:.1f} | "
        f"{p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | "
        f"{crops / max(result['batches'], 1):.2f} ({result['batches']} batches) |"
    )
    print(
        f"| `predict_many`, same images and boxes | {baseline:.1f} | "
        f"{total * args.boxes / many_wall:.1f} | | | {args.max_batch} |"
    )
    print(f"\nthroughput ratio serve / predict_many: {served / baseline:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

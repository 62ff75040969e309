"""Throughput of training-sample preparation in one process (what one DataLoader worker does).

Each sample: JPEG decode, flip / half-body / box augmentation, the affine crop, keypoint
transform and the Gaussian heatmap targets. Runs over the COCO sample in ``tests/data/coco-mini``
for a number of epochs (new random augmentation each epoch) and prints samples/s twice: in file
order, where 8 of the 12 instances reuse the previous item's decoded image, and "every item
decodes", what a shuffled pass over full COCO sees.

Usage::

    python benchmarks/bench_train_data.py                  # 256x192, 50 epochs
    python benchmarks/bench_train_data.py --preset 384x288 --epochs 20
"""

import argparse
import time
from pathlib import Path

import cv2

from nextpose.config import CodecConfig, Config, ModelConfig
from nextpose.data.coco import CocoKeypoints
from nextpose.data.datasets import TrainDataset, collate_train

COCO = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-mini"
SIZES = {"256x192": ((192, 256), 2.0), "384x288": ((288, 384), 3.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(SIZES), default="256x192")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32, help="also time collate_train batches")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # a DataLoader worker runs OpenCV single-threaded
    input_size, sigma = SIZES[args.preset]
    config = Config(model=ModelConfig(input_size=input_size), codec=CodecConfig(sigma=sigma))
    instances = CocoKeypoints(COCO / "test_coco.json").ground_truth_instances()
    dataset = TrainDataset(instances, COCO, config)
    dataset[0]  # warm up
    for decode_all in (False, True):
        start = time.perf_counter()
        items = []
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            for i in range(len(dataset)):
                if decode_all:
                    dataset._cached = None
                items.append(dataset[i])
        elapsed = time.perf_counter() - start
        n = len(items)
        start = time.perf_counter()
        for i in range(0, n - args.batch + 1, args.batch):
            collate_train(items[i : i + args.batch])
        collate = (time.perf_counter() - start) / max(1, n // args.batch) / args.batch
        mode = "every item decodes" if decode_all else "file order"
        print(
            f"{args.preset}, {mode}: {n} samples in {elapsed:.2f} s = {n / elapsed:.0f} "
            f"samples/s ({1e3 * elapsed / n:.2f} ms each; collate_train +{1e3 * collate:.3f} ms)"
        )


if __name__ == "__main__":
    main()

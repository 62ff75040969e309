"""What a resumable / sharded ``predict`` job costs on top of writing its outputs directly.

A job (``nextpose.sharded``) appends one JSON line per image to a part file per process and,
at the end, merges the parts in input order into ``--out`` and ``--jsonl``. This times, in one
process, on synthetic records (``--people`` persons of 17 keypoints per image):

* ``direct``: the records written straight into the two outputs (``JsonListWriter`` and
  ``JsonLinesWriter``), as a run without parts does;
* ``parts``: the same records appended to ``--ranks`` part files (flushed line by line);
* ``merge``: reading the parts back, validating every line, and writing the two outputs.

Usage::

    python benchmarks/bench_parts.py                   # 100,000 images, 3 people each
    python benchmarks/bench_parts.py --images 5000     # quick check
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nextpose import sharded
from nextpose.writers import JsonLinesWriter, JsonListWriter


def lines(n: int, people: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        poses = [
            {"image": f"{i:08d}.jpg", "bbox": rng.random(4).tolist(),
             "bbox_score": float(rng.random()), "keypoints": rng.random((17, 3)).tolist()}
            for _ in range(people)
        ]  # fmt: skip
        out.append({"image": f"{i:08d}.jpg", "image_id": i, "height": 480, "width": 640,
                    "poses": poses})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    records = lines(args.images, args.people)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        out, jsonl = (
            JsonListWriter(folder / "d.json"),
            JsonLinesWriter(folder / "d.jsonl", "--jsonl"),
        )
        for line in records:
            for pose in line["poses"]:
                out.write(pose)
            jsonl.write(line)
        out.close(), jsonl.close()
        direct = time.perf_counter() - start

        parts = folder / "p.json.parts"
        parts.mkdir()
        start = time.perf_counter()
        writers = [
            sharded._PartWriter(parts / f"part-001-{r:05d}.jsonl") for r in range(args.ranks)
        ]
        for i, line in enumerate(records):  # as sharded._frame_record serialises a frame
            record = {"g": 0, "i": i, "people": len(line["poses"]),
                      "out": [json.dumps(p, allow_nan=False) for p in line["poses"]],
                      "jsonl": json.dumps(line, allow_nan=False)}  # fmt: skip
            writers[i % args.ranks].write(record)
        for w in writers:
            w.close()
        written = time.perf_counter() - start

        start = time.perf_counter()
        sharded._merge(parts, folder / "p.json", folder / "p.jsonl", ["images"])
        merged = time.perf_counter() - start
        same = (folder / "p.json").read_bytes() == (folder / "d.json").read_bytes() and (
            folder / "p.jsonl"
        ).read_bytes() == (folder / "d.jsonl").read_bytes()
        size = sum(p.stat().st_size for p in parts.iterdir()) / 1e6
    n = args.images
    print(f"{n} images x {args.people} people, {args.ranks} part files ({size:.0f} MB)")
    print(f"direct outputs   {direct:7.2f} s  ({n / direct:9.0f} images/s)")
    print(f"parts (appended) {written:7.2f} s  ({n / written:9.0f} images/s)")
    print(f"merge            {merged:7.2f} s  ({n / merged:9.0f} images/s)")
    print(f"job / direct     {(written + merged) / direct:7.2f} x; outputs identical: {same}")


if __name__ == "__main__":
    main()

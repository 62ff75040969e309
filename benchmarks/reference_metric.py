"""Score a COCO keypoint results file the way the reference (mmpose 1.3.2's CocoMetric) does.

Needs xtcocotools (1.14.3, built for NumPy 1.x) and runs without nextpose: xtcocotools' ``COCO``
and ``loadRes`` on the files, ``COCOeval(gt, dt, 'keypoints', sigmas, use_area=True)`` with the
float32 COCO sigmas and ``useSegm = None``. Prints the ten numbers as a JSON list and the time::

    /path/to/env-with-xtcocotools/bin/python benchmarks/reference_metric.py GT.json RESULTS.json
"""

import contextlib
import io
import json
import sys
import time

import numpy as np


def reference_stats(gt_file: str, results_file: str) -> list[float]:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    # as the reference's metainfo writes them: fl32(0.026), not fl32(.26) / fl32(10)
    sigmas = np.array(
        [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087,
         .089, .089],
        dtype=np.float32,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_file)
        dets = coco.loadRes(results_file)
        ev = COCOeval(coco, dets, "keypoints", sigmas, True)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


if __name__ == "__main__":
    t0 = time.perf_counter()
    stats = reference_stats(sys.argv[1], sys.argv[2])
    print(json.dumps({"stats": stats, "seconds": time.perf_counter() - t0}))

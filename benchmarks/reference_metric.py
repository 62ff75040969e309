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

    sigmas = np.array(
        [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89],
        dtype=np.float32,
    ) / np.float32(10.0)  # fmt: skip
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

"""Run an estimator over a COCO-format dataset and score it: what ``nextpose eval`` does."""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.coco import CocoKeypoints, PersonInstance
from ..data.datasets import CropDataset, collate_crops
from ..inference import Crops, PoseEstimator
from .coco_eval import NmsMode, evaluate_predictions, predictions_from_arrays

COCO_VAL_ANN = "annotations/person_keypoints_val2017.json"
COCO_VAL_IMAGES = "val2017"
COCO_VAL_DETECTIONS = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"

log = logging.getLogger("nextpose")


@dataclass
class InstancePredictions:
    """Predictions for a list of person instances, in the same order (N instances, K keypoints)."""

    keypoints: np.ndarray  # (N, K, 2) float32 image pixels
    scores: np.ndarray  # (N, K) float32
    centers: np.ndarray  # (N, 2) float32 crop centres, image pixels
    scales: np.ndarray  # (N, 2) float32 padded, aspect-fixed crop sizes, image pixels
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,) unreadable image


def predict_instances(
    estimator: PoseEstimator,
    instances: list[PersonInstance],
    image_dir: str | Path,
    flip: bool | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> InstancePredictions:
    """Keypoints for every instance; images are decoded and cropped in ``workers`` processes.

    An image that cannot be read is reported (a warning naming it), its instances are marked in
    ``failed`` (zero keypoints and scores) and the run goes on; the count is logged at the end.
    """
    config = estimator.config
    dataset = CropDataset(instances, image_dir, config.model.input_size, config.inference.padding)
    loader = DataLoader(
        dataset,
        batch_size=batch_size or config.inference.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_crops,
        pin_memory=estimator.device.type == "cuda",
        persistent_workers=False,
    )
    n, k = len(instances), config.model.num_keypoints
    out = InstancePredictions(
        np.zeros((n, k, 2), np.float32),
        np.zeros((n, k), np.float32),
        np.zeros((n, 2), np.float32),
        np.zeros((n, 2), np.float32),
        np.zeros(n, bool),
    )
    bad_images: set[str] = set()
    bar = tqdm(total=n, desc="pose", unit="box", disable=not progress, file=sys.stderr)
    for batch in loader:
        index = batch["index"].numpy()
        crops = Crops(batch["image"], batch["center"].numpy(), batch["scale"].numpy())
        out.keypoints[index], out.scores[index] = estimator.predict_crops(crops, flip)
        out.centers[index], out.scales[index] = crops.centers, crops.scales
        for i, error in zip(index, batch["error"], strict=True):
            if error:
                out.failed[i] = True
                out.keypoints[i], out.scores[i] = 0, 0
                if error not in bad_images:
                    bad_images.add(error)
                    log.warning("skipped %s", error)
        bar.update(len(index))
    bar.close()
    if bad_images:
        log.warning(
            "%d images could not be read; their %d of %d person boxes were skipped",
            len(bad_images), int(out.failed.sum()), n,
        )  # fmt: skip
    return out


def score_instances(
    instances: list[PersonInstance],
    pred: InstancePredictions,
    ann_file: str | Path,
    sigmas: np.ndarray,
    out_dir: str | Path | None = None,
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
) -> dict[str, float]:
    """COCO AP/AR of predictions for ``instances`` (same order), as the reference scores them:
    rescoring, per-image NMS, COCOeval; instances of unreadable images (``pred.failed``) are left
    out. With ``out_dir``, the post-NMS results are written to ``out_dir/keypoints.json``."""
    ok = np.flatnonzero(~pred.failed) if len(pred.failed) else np.arange(len(instances))
    kept = [instances[i] for i in ok]
    predictions = predictions_from_arrays(
        ids=[i.id for i in kept],
        img_ids=[i.image_id for i in kept],
        keypoints=pred.keypoints[ok],
        keypoint_scores=pred.scores[ok],
        bboxes=np.stack([i.bbox for i in kept]) if kept else np.zeros((0, 4)),
        bbox_scores=np.array([i.bbox_score for i in kept], np.float32),
        scales=pred.scales[ok],
        category_ids=[i.category_id for i in kept],
    )
    return evaluate_predictions(
        predictions, ann_file, out_dir=out_dir, nms=nms, nms_threshold=nms_threshold, sigmas=sigmas
    )


def evaluate(
    estimator: PoseEstimator,
    ann_file: str | Path,
    image_dir: str | Path,
    bbox_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    flip: bool | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    bbox_score_threshold: float | None = None,
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
    progress: bool = True,
) -> dict[str, float]:
    """COCO keypoint AP/AR of ``estimator`` on a dataset, as the reference measures it.

    Args:
        ann_file: COCO person-keypoints annotations (the ground truth).
        image_dir: folder holding the images named in ``ann_file``.
        bbox_file: person detections (COCO results format); None uses the ground-truth boxes.
        out_dir: if given, ``keypoints.json`` (COCO results, after rescoring and NMS) and
            ``metrics.json`` are written there.
        bbox_score_threshold: drop detections scoring below this (the reference keeps all).

    Returns:
        ``{"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}``. Boxes of
        images that cannot be read are left out (with a warning naming each image and a count).
    """
    coco = CocoKeypoints(ann_file, estimator.config.model.num_keypoints)
    if bbox_file is None:
        instances = coco.ground_truth_instances()
    else:
        instances = coco.detection_instances(bbox_file, bbox_score_threshold)
    pred = predict_instances(estimator, instances, image_dir, flip, batch_size, workers, progress)
    metrics = score_instances(
        instances,
        pred,
        ann_file,
        estimator.keypoint_set.sigmas_array(),
        out_dir=out_dir,
        nms=nms,
        nms_threshold=nms_threshold,
    )
    if out_dir is not None:
        path = Path(out_dir) / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

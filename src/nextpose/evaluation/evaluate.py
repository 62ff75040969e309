"""Run an estimator over a COCO-format dataset and score it: what ``nextpose eval`` does."""

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from ..data.coco import CocoKeypoints, PersonInstance, load_json
from ..distributed import JobProgress
from ..engine import Task
from ..fileio import atomic_write_text
from ..predictor import PoseEstimator
from ..progress import Progress
from .coco_eval import (
    Evaluator,
    NmsMode,
    evaluate_predictions,
    predictions_from_arrays,
    prepare_ground_truth,
)
from .oks_nms import TieOrder

log = logging.getLogger("nextpose")


@dataclass(frozen=True)
class EvalSet:
    """A COCO keypoint dataset read once for evaluation: the person boxes to predict, and the
    ground truth the metric scores them against (checked and prepared, see
    :func:`~nextpose.evaluation.coco_eval.prepare_ground_truth`)."""

    ann_file: Path
    num_keypoints: int
    instances: list[PersonInstance]
    ground_truth: dict[str, Any]


def read_eval_set(
    ann_file: str | Path,
    bbox_file: str | Path | None = None,
    num_keypoints: int = 17,
    bbox_score_threshold: float | None = None,
) -> EvalSet:
    """Read ``ann_file`` (once) and the detections of ``bbox_file`` (None: the ground-truth
    boxes); every check of both files, the metric's included, is made here, before any
    inference. An :class:`AnnotationError` names the file, the entry and the problem."""
    ann_file = Path(ann_file)
    data = load_json(ann_file, "annotation")
    coco = CocoKeypoints(ann_file, num_keypoints, data=data)
    if bbox_file is None:
        instances = coco.ground_truth_instances()
    else:
        instances = coco.detection_instances(bbox_file, bbox_score_threshold)
    ground_truth = prepare_ground_truth(data, str(ann_file), num_keypoints)
    return EvalSet(ann_file, num_keypoints, instances, ground_truth)


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
    read_threads: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> InstancePredictions:
    """Keypoints for every instance, through the estimator's engine: the boxes of each image
    are cropped from one decoding of it, and crops of many images share batches.

    ``batch_size`` and ``read_threads`` override the estimator's run options (``workers`` is
    the old name of ``read_threads``). An image that cannot be read is reported (a warning
    naming it), its instances are marked in ``failed`` (zero keypoints and scores) and the run
    goes on; the count is logged at the end.
    """
    if workers is not None:
        warnings.warn(
            "predict_instances(workers=...) is now read_threads=...", DeprecationWarning, 2
        )
        read_threads = workers
    estimator = _with(estimator, batch_size, read_threads)
    bar = Progress(len(instances), "pose", "box", enabled=progress)
    out, bad_images = _predict(estimator, instances, image_dir, flip, bar)
    bar.close()
    _report_failures(bad_images, int(out.failed.sum()), len(instances))
    return out


def _with(estimator: PoseEstimator, batch_size: int | None, read_threads: int | None):
    changes = {"batch_size": batch_size, "read_threads": read_threads}
    return estimator.with_options(**{k: v for k, v in changes.items() if v is not None})


def _report_failures(bad_images: int, boxes: int, n: int) -> None:
    if bad_images:
        log.warning(
            "%d images could not be read; their %d of %d person boxes were skipped",
            bad_images, boxes, n,
        )  # fmt: skip


def _predict(
    estimator: PoseEstimator,
    instances: list[PersonInstance],
    image_dir: str | Path,
    flip: bool | None,
    bar: Progress | JobProgress,
) -> tuple[InstancePredictions, int]:
    """The predictions for ``instances`` and the number of unreadable images."""
    by_image: dict[str, list[int]] = {}
    for i, inst in enumerate(instances):
        by_image.setdefault(inst.image_file, []).append(i)
    image_dir = Path(image_dir)
    tasks = (
        Task(
            image_dir / name,
            np.stack([instances[i].bbox for i in index]),
            name,
            index,
            keep_inverted=True,  # a detection file's negative sizes, cropped as given (§1.4)
        )
        for name, index in by_image.items()
    )
    n, k = len(instances), estimator.config.model.num_keypoints
    out = InstancePredictions(
        np.zeros((n, k, 2), np.float32),
        np.zeros((n, k), np.float32),
        np.zeros((n, 2), np.float32),
        np.zeros((n, 2), np.float32),
        np.zeros(n, bool),
    )
    bad_images = 0
    for result in estimator.engine().run(tasks, flip):
        index = result.task.tag
        if result.poses is None:
            bad_images += 1
            out.failed[index] = True
            log.warning("skipped %s", result.error)
        else:
            poses = result.poses
            out.keypoints[index], out.scores[index] = poses.keypoints, poses.scores
            out.centers[index], out.scales[index] = poses.centers, poses.scales
        bar.update(len(index))
    return out, bad_images


def engine_order(instances: list[PersonInstance]) -> np.ndarray:
    """The order in which the engine crops ``instances`` (N,) int: grouped by image, images in
    order of first appearance, as :func:`predict_instances` hands them to it."""
    by_image: dict[str, list[int]] = {}
    for i, inst in enumerate(instances):
        by_image.setdefault(inst.image_file, []).append(i)
    return np.array([i for index in by_image.values() for i in index], np.int64)


def shard_instances(
    instances: list[PersonInstance], batch_size: int, rank: int, world_size: int
) -> np.ndarray:
    """The indices of ``instances`` that ``rank`` of ``world_size`` predicts, in engine order.

    The engine's crop sequence (:func:`engine_order`) is cut into the batches of ``batch_size``
    crops a single process would run, and each rank takes a contiguous run of whole batches
    (balanced by box count: the runs differ by at most one batch). Every crop therefore goes
    through the network in the same batch as in one process: the results are the same bits
    for any number of ranks (batches of other sizes can differ in the last bits of scores). An
    image whose boxes straddle two runs is read by both ranks.
    """
    order = engine_order(instances)
    batches = -(-len(order) // batch_size)
    start, stop = distributed.split_evenly(batches, world_size)[rank]
    return order[start * batch_size : stop * batch_size]


def predict_instances_sharded(
    estimator: PoseEstimator,
    instances: list[PersonInstance],
    image_dir: str | Path,
    flip: bool | None = None,
    batch_size: int | None = None,
    read_threads: int | None = None,
    progress: bool = True,
) -> InstancePredictions | None:
    """:func:`predict_instances` shared by the ranks of the initialised process group: each
    predicts its share (:func:`shard_instances`) on its device, rank 0 gets every prediction in
    the order of ``instances`` (the same as one process's, bit for bit), the others None.
    Without a process group it is :func:`predict_instances`.

    With ``progress``, rank 0 shows one bar for the whole job and logs a line at the end
    (images, boxes, boxes per second, processes).
    """
    env = distributed.current()
    estimator = _with(estimator, batch_size, read_threads)
    start = time.perf_counter()
    index = shard_instances(instances, estimator.options.batch_size, env.rank, env.world_size)
    share = [instances[i] for i in index]
    bar = JobProgress(len(instances), "pose", "box", enabled=progress)
    pred, bad_images = _predict(estimator, share, image_dir, flip, bar)
    bar.close()
    parts = distributed.gather_to_main((index, pred, bad_images))
    if parts is None:
        return None
    n = len(instances)
    out = InstancePredictions(*(np.zeros((n, *a.shape[1:]), a.dtype) for a in vars(pred).values()))
    for where, part, _ in parts:
        for name, array in vars(part).items():
            getattr(out, name)[where] = array
    _report_failures(sum(p[2] for p in parts), int(out.failed.sum()), n)
    if progress:
        seconds = time.perf_counter() - start
        images = len({inst.image_file for inst in instances})
        log.info(
            "%d images, %d boxes in %.1f s (%.1f boxes/s), %d %s",
            images, n, seconds, n / max(seconds, 1e-9), env.world_size,
            "process" if env.world_size == 1 else "processes",
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
    tie_order: TieOrder = "stable",
    evaluator: Evaluator = "auto",
    *,
    ground_truth: dict[str, Any] | None = None,
) -> dict[str, float]:
    """COCO AP/AR of predictions for ``instances`` (same order), as the reference scores them:
    rescoring, per-image NMS, COCOeval; instances of unreadable images (``pred.failed``) are left
    out. With ``out_dir``, the post-NMS results are written to ``out_dir/keypoints.json``.
    ``ground_truth``: ``ann_file`` prepared (:attr:`EvalSet.ground_truth`), not to read it again."""
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
        predictions,
        ann_file,
        out_dir=out_dir,
        nms=nms,
        nms_threshold=nms_threshold,
        sigmas=sigmas,
        tie_order=tie_order,
        evaluator=evaluator,
        ground_truth=ground_truth,
    )


def evaluate(
    estimator: PoseEstimator,
    ann_file: str | Path | EvalSet,
    image_dir: str | Path,
    bbox_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    flip: bool | None = None,
    batch_size: int | None = None,
    read_threads: int | None = None,
    bbox_score_threshold: float | None = None,
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
    progress: bool = True,
    workers: int | None = None,
    tie_order: TieOrder = "stable",
    evaluator: Evaluator = "auto",
) -> dict[str, float]:
    """COCO keypoint AP/AR of ``estimator`` on a dataset, as the reference measures it.

    Args:
        ann_file: COCO person-keypoints annotations (the ground truth), or an :class:`EvalSet`
            read from it (:func:`read_eval_set`; then ``bbox_file`` and
            ``bbox_score_threshold`` are its own and must not be given).
        image_dir: folder holding the images named in ``ann_file``.
        bbox_file: person detections (COCO results format); None uses the ground-truth boxes.
        out_dir: if given, ``keypoints.json`` (COCO results, after rescoring and NMS) and
            ``metrics.json`` are written there.
        batch_size, read_threads: override the estimator's run options (``workers``: the old
            name of ``read_threads``).
        bbox_score_threshold: drop detections scoring below this (the reference keeps all).
        tie_order: order of equal scores in OKS-NMS: ``stable`` (the same everywhere) or
            ``numpy`` (NumPy's default sort, as the reference: depends on CPU and NumPy).
        evaluator: COCOeval backend (``auto``, ``faster_coco_eval``, ``pycocotools``); all give
            the same numbers.

    Inside an initialised process group (``torchrun``), every rank predicts its share of the
    boxes (:func:`shard_instances`: whole batches of a single process's run, so the numbers are
    the same bits), rank 0 scores and writes ``out_dir``, and every rank returns the metrics.

    Returns:
        ``{"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}``. Boxes of
        images that cannot be read are left out (with a warning naming each image and a count).
    """
    k = estimator.config.model.num_keypoints
    if isinstance(ann_file, EvalSet):
        if bbox_file is not None or bbox_score_threshold is not None:
            raise TypeError("evaluate(EvalSet, ...): the boxes are the EvalSet's own")
        data = ann_file
        if data.num_keypoints != k:
            raise ValueError(f"the EvalSet was read for {data.num_keypoints} keypoints, not {k}")
    else:
        data = read_eval_set(ann_file, bbox_file, k, bbox_score_threshold)
    instances = data.instances
    if workers is not None:
        warnings.warn("evaluate(workers=...) is now read_threads=...", DeprecationWarning, 2)
        read_threads = workers
    pred = predict_instances_sharded(
        estimator, instances, image_dir, flip, batch_size, read_threads, progress
    )
    if pred is None:  # another rank than 0: rank 0 scores and writes, and shares the numbers
        return distributed.broadcast_object(None)
    metrics = score_instances(
        instances,
        pred,
        data.ann_file,
        estimator.keypoint_set.sigmas_array(),
        out_dir=out_dir,
        nms=nms,
        nms_threshold=nms_threshold,
        tie_order=tie_order,
        evaluator=evaluator,
        ground_truth=data.ground_truth,
    )
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return distributed.broadcast_object(metrics)

"""COCO keypoint evaluation matching the reference's CocoMetric (rescoring, OKS-NMS, COCOeval)."""

from .coco_eval import (
    METRIC_NAMES,
    MMPOSE_METRIC_NAMES,
    PosePrediction,
    build_results,
    evaluate_predictions,
    evaluate_results,
    group_by_image,
    predictions_from_arrays,
    scale_area,
    score_results_file,
    write_results,
)
from .evaluate import (
    EvalSet,
    InstancePredictions,
    evaluate,
    predict_instances,
    read_eval_set,
    score_instances,
)
from .oks_nms import oks_iou, oks_nms, rescore, soft_oks_nms

__all__ = [
    "METRIC_NAMES",
    "MMPOSE_METRIC_NAMES",
    "EvalSet",
    "InstancePredictions",
    "PosePrediction",
    "build_results",
    "evaluate",
    "evaluate_predictions",
    "evaluate_results",
    "group_by_image",
    "oks_iou",
    "oks_nms",
    "predict_instances",
    "predictions_from_arrays",
    "read_eval_set",
    "rescore",
    "scale_area",
    "score_instances",
    "score_results_file",
    "soft_oks_nms",
    "write_results",
]

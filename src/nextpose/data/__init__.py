"""Reading data: images (images.py) and COCO annotation/detection files (coco.py)."""

from .coco import AnnotationError, CocoKeypoints, PersonInstance
from .images import ImageError, read_image

__all__ = ["AnnotationError", "CocoKeypoints", "ImageError", "PersonInstance", "read_image"]

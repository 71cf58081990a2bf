"""Data: synthetic shapes dataset, validated COCO loading, DETR dataset mapper.

Importing this package registers the datasets (``register_all()``, idempotent).
"""
from .datasets import (
    COCO_DATASETS_HELP,
    check_dataset_available,
    load_coco_json_checked,
    register_all,
    register_coco_dataset,
)
from .mapper import (
    DETR_MIN_SIZES,
    DetrDatasetMapper,
    RandomChoice,
    build_detr_test_augmentation,
    build_detr_train_augmentation,
    read_image_checked,
)
from .loader import ResumableTrainLoader
from .shapes import (
    SHAPES_CLASSES,
    default_shapes_root,
    ensure_shapes_generated,
    generate_shapes_dataset,
    register_shapes,
)

register_all()

__all__ = [
    "COCO_DATASETS_HELP",
    "DETR_MIN_SIZES",
    "DetrDatasetMapper",
    "RandomChoice",
    "ResumableTrainLoader",
    "SHAPES_CLASSES",
    "build_detr_test_augmentation",
    "build_detr_train_augmentation",
    "check_dataset_available",
    "default_shapes_root",
    "ensure_shapes_generated",
    "generate_shapes_dataset",
    "load_coco_json_checked",
    "read_image_checked",
    "register_all",
    "register_coco_dataset",
    "register_shapes",
]

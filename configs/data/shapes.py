"""The embedded synthetic dataset (generated on first use, see detr_plus/data/shapes.py), 128 px images."""
from detectron2.config import LazyCall as L

from detr_plus.data import build_detr_test_augmentation, build_detr_train_augmentation

from .coco import dataloader

dataloader.train.dataset = "shapes_train"
dataloader.train.mapper.augmentations = L(build_detr_train_augmentation)(
    min_sizes=(96, 112, 128), max_size=160, crop_sizes=(96, 112, 128), crop_range=(80, 112)
)
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = L(build_detr_test_augmentation)(min_size=128, max_size=160)
dataloader.test.num_workers = 0

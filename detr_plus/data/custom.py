"""Any COCO-format dataset from the command line (``configs/data/coco_json.py``): the config's ``data``
section names the files, ``train_net.py`` registers them as ``custom_train`` / ``custom_val`` and takes
the number of classes (and their names, for the detections PNG) from the annotation file."""
from __future__ import annotations

import json
from typing import List

from detectron2.data import MetadataCatalog

from .datasets import register_coco_dataset

CUSTOM_SPLITS = {"custom_train": ("train_json", "train_images"), "custom_val": ("val_json", "val_images")}


def category_names(json_file: str) -> List[str]:
    """The json's category names ordered by id (Detectron2's contiguous class order)."""
    with open(json_file) as f:
        categories = json.load(f).get("categories", [])
    if not categories:
        raise ValueError(f"'{json_file}' has no 'categories': a COCO detection json lists its classes there")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def register_config_datasets(cfg, required: bool = True) -> bool:
    """Register the ``data`` section of ``cfg`` (if any) and set ``data.num_classes`` from the training
    json; a ``data.num_classes`` given by the user must equal the json's, and the validation json must
    have the training json's classes. Errors name the keys, files and numbers involved. With
    ``required=False`` (tools that need no dataset) unset files are no error. True if registered."""
    data = cfg.get("data")
    if data is None:
        return False
    unset = [f"data.{key}" for keys in CUSTOM_SPLITS.values() for key in keys if not data.get(key)]
    if unset and not required:
        return False
    if unset:
        raise ValueError(f"{', '.join(unset)} not set: give the COCO json files and image folders, e.g. "
                         "data.train_json=train.json data.train_images=images/ data.val_json=val.json data.val_images=images/")
    classes = category_names(data.train_json)
    val_classes = category_names(data.val_json)
    if val_classes != classes:
        raise ValueError(f"data.val_json '{data.val_json}' has {len(val_classes)} classes {val_classes}, "
                         f"data.train_json '{data.train_json}' {len(classes)} {classes}: they must be the same")
    if data.get("num_classes") is None:
        data.num_classes = len(classes)
    elif data.num_classes != len(classes):
        raise ValueError(f"data.num_classes={data.num_classes}, but '{data.train_json}' has {len(classes)} categories")
    for name, (json_key, images_key) in CUSTOM_SPLITS.items():
        register_coco_dataset(name, data[json_key], data[images_key])
        MetadataCatalog.get(name).set(thing_classes=classes)
    return True

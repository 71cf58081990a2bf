"""Validated COCO-json loading: :func:`load_coco_json_checked` (used by the COCO registrations of
:mod:`detr_plus.data.datasets` and by the shapes datasets of :mod:`detr_plus.data.shapes`) and the
missing-file checks with the COCO set-up help."""
from __future__ import annotations

import json
import os
from typing import List, Optional

import detr_plus  # noqa: F401  (compat shims must run before detectron2 is imported)
from detectron2.data.datasets import load_coco_json

from .checks import check_image_files, check_unique_image_ids, clean_annotations, report_empty_polygons

__all__ = ["COCO_DATASETS_HELP", "load_coco_json_checked"]

COCO_DATASETS_HELP = """\
Detectron2 looks for builtin datasets under the directory given by the environment variable
DETECTRON2_DATASETS (default: ./datasets, relative to the working directory; it is read when
detectron2.data is first imported, so set it before starting Python). COCO 2017 must be laid
out as:

  $DETECTRON2_DATASETS/
    coco/
      annotations/instances_train2017.json
      annotations/instances_val2017.json
      train2017/   # *.jpg images
      val2017/     # *.jpg images

Download the 2017 train/val images and annotations from the COCO website (cocodataset.org) and
unpack them there, or symlink an existing copy: ln -s /path/to/coco $DETECTRON2_DATASETS/coco .
See Detectron2's datasets/README.md ("Use Builtin Datasets",
https://github.com/facebookresearch/detectron2/blob/main/datasets/README.md).
For a quick run without COCO use the synthetic datasets shapes_train / shapes_val."""


def _check_files(name: str, json_file: Optional[str], image_root: Optional[str]) -> None:
    for kind, path, ok in (
        ("annotation file", json_file, os.path.isfile),
        ("image directory", image_root, os.path.isdir),
    ):
        if path and not ok(path):
            raise FileNotFoundError(
                f"Dataset '{name}' is not available: {kind} '{path}' does not exist.\n"
                + COCO_DATASETS_HELP
            )


def _explain_unknown_category(json_file: str) -> Optional[str]:
    """Scan the raw json for the first annotation whose category_id is not declared."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    cat_ids = {c["id"] for c in data.get("categories", [])}
    files = {im["id"]: im.get("file_name") for im in data.get("images", [])}
    for ann in data.get("annotations", []):
        if ann.get("category_id") not in cat_ids:
            return (
                f"Annotation id={ann.get('id')} (image id={ann.get('image_id')}, file "
                f"'{files.get(ann.get('image_id'))}') in '{json_file}' has category_id="
                f"{ann.get('category_id')}, which is not in the json's 'categories' "
                f"(ids: {sorted(cat_ids)})."
            )
    return None


def load_coco_json_checked(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """``detectron2.data.datasets.load_coco_json`` plus the checks of ``detr_plus.data.checks``.

    * missing json / image directory -> ``FileNotFoundError`` with setup instructions;
    * duplicate image ids -> ``ValueError`` naming the id and both files;
    * an annotation whose ``category_id`` is not among the json's categories -> ``ValueError``
      naming the json file, the image file and the annotation id;
    * non-finite, zero / negative-size and wholly-outside boxes are dropped, partly-outside boxes
      clipped (one warning per kind: count and first offender); so are annotations whose mask is
      unusable (empty polygons, polygons wholly outside the image, RLE of the wrong size or empty);
    * missing image files -> ``FileNotFoundError`` with how many and the first few;
    * images without annotations are kept (DETR trains on them).

    Each annotation keeps its json ``id`` (key ``"id"``).
    """
    _check_files(dataset_name or json_file, json_file, image_root)
    with open(json_file) as f:
        data = json.load(f)
    check_unique_image_ids(json_file, data)
    report_empty_polygons(json_file, data)
    del data
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    except KeyError as e:
        msg = _explain_unknown_category(json_file)
        if msg is None:
            raise
        raise ValueError(msg) from e
    clean_annotations(dicts, json_file)
    check_image_files(dicts, dataset_name or json_file)
    return dicts

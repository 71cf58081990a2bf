"""Dataset registration and validated COCO-json loading.

* :func:`register_all` registers the synthetic shapes datasets (``shapes_train``,
  ``shapes_val``) and re-registers Detectron2's builtin COCO 2017 detection splits with the
  validating loader :func:`load_coco_json_checked`.
* :func:`check_dataset_available` must be called before anything that reads a dataset's files
  directly (e.g. ``COCOEvaluator`` reads ``metadata.json_file``): it generates a synthetic
  dataset on demand and raises a clear ``FileNotFoundError`` for a missing COCO download.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import List, Optional

import detr_plus  # noqa: F401  (compat shims must run before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from . import shapes
from .checks import check_image_files, check_unique_image_ids, clean_annotations

__all__ = [
    "register_all",
    "register_coco_dataset",
    "load_coco_json_checked",
    "check_dataset_available",
    "COCO_DATASETS_HELP",
]

logger = logging.getLogger(__name__)

# Detection splits of Detectron2's builtin COCO registration that get the validating loader.
_WRAPPED_BUILTIN_COCO = ("coco_2017_train", "coco_2017_val", "coco_2017_val_100")

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


# --------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------
def check_dataset_available(name: str) -> None:
    """Make sure the files of dataset ``name`` exist.

    * Synthetic shapes datasets are generated if missing (so ``metadata.json_file`` exists
      afterwards; call this before building a ``COCOEvaluator``).
    * For COCO-format datasets (metadata has ``json_file``/``image_root``) a missing file or
      directory raises ``FileNotFoundError`` naming it, with instructions where to put COCO.
    * Other registered datasets are not checked.  Unknown names raise ``KeyError``.
    """
    if shapes.is_shapes_dataset(name):
        shapes.ensure_shapes_generated(name)
        return
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset '{name}' is not registered. Registered: {', '.join(sorted(DatasetCatalog.list()))}")
    meta = MetadataCatalog.get(name)
    _check_files(name, meta.get("json_file"), meta.get("image_root"))


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


# --------------------------------------------------------------------------------------
# Validated loading
# --------------------------------------------------------------------------------------
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
      clipped (one warning per kind: count and first offender);
    * missing image files -> ``FileNotFoundError`` with how many and the first few;
    * images without annotations are kept (DETR trains on them).

    Each annotation keeps its json ``id`` (key ``"id"``).
    """
    _check_files(dataset_name or json_file, json_file, image_root)
    check_unique_image_ids(json_file)
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


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------
def register_coco_dataset(name: str, json_file: str, image_root: str, **metadata) -> None:
    """Register a COCO-format detection dataset loaded with :func:`load_coco_json_checked`.

    Like ``register_coco_instances`` (metadata ``json_file``, ``image_root``,
    ``evaluator_type="coco"``).  Re-registering a name replaces it.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(load_coco_json_checked, json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def _wrap_builtin_coco() -> None:
    for name in _WRAPPED_BUILTIN_COCO:
        if name not in DatasetCatalog.list():
            continue
        func = DatasetCatalog[name] if hasattr(DatasetCatalog, "__getitem__") else None
        if isinstance(func, functools.partial) and func.func is load_coco_json_checked:
            continue  # already wrapped
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        if not json_file or not image_root:
            continue
        # Keep the metadata (thing_classes, colors, ...); only swap the loader.
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(load_coco_json_checked, json_file, image_root, name))


def register_all(shapes_root: Optional[str] = None) -> None:
    """Register every dataset detr_plus knows about. Idempotent.

    * ``shapes_train`` (2000 images) / ``shapes_val`` (200 images), 128x128, under
      ``shapes_root`` (default :func:`detr_plus.data.shapes.default_shapes_root`:
      ``$DETR_PLUS_DATASETS/shapes``, else ``$DETECTRON2_DATASETS/shapes``, else
      ``./datasets/shapes``), generated on first use;
    * Detectron2's builtin ``coco_2017_{train,val,val_100}`` (under ``$DETECTRON2_DATASETS``)
      get the validating loader.
    """
    import detectron2.data.datasets.builtin  # noqa: F401  (registers the builtin datasets)

    shapes.register_shapes(root=shapes_root)
    _wrap_builtin_coco()

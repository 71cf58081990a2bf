"""Dataset registration (the validated COCO-json loading is :mod:`detr_plus.data.coco`).

* :func:`register_all` registers the synthetic shapes datasets (``shapes_train``,
  ``shapes_val``) and re-registers Detectron2's builtin COCO 2017 detection splits with the
  validating loader :func:`load_coco_json_checked`.
* :func:`check_dataset_available` must be called before anything that reads a dataset's files
  directly (e.g. ``COCOEvaluator`` reads ``metadata.json_file``): it generates a synthetic
  dataset on demand and raises a clear ``FileNotFoundError`` for a missing COCO download.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import detr_plus  # noqa: F401  (compat shims must run before detectron2 is imported)
from detectron2.data import DatasetCatalog, MetadataCatalog

from . import shapes
from .coco import COCO_DATASETS_HELP, _check_files, load_coco_json_checked

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

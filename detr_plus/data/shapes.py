"""Synthetic "shapes" detection dataset in COCO format.

Images of filled shapes (circle, square, triangle, cross) of varied sizes and colours on a
noisy, textured background.  Generation is deterministic: the same ``seed`` and parameters
give byte-identical images and json (for a given Pillow/numpy version).  It uses only
numpy and PIL and is fast (~2 ms per 128x128 image on one core), so the default splits are
generated on first use in a few seconds.

Labels are honest by construction: every shape is rasterised into its own mask, later
shapes are painted over earlier ones, and the box of an object is the tight extent of its
*visible* pixels.  A placement that would hide more than half of an earlier shape is
rejected (the new shape is re-sampled), so no painted shape is ever left unlabeled and every
labeled shape is at least 50% visible.  ``area`` is the visible pixel count.

Layout written by :func:`generate_shapes_dataset`::

    root/<split>/000000.png ...
    root/annotations/instances_<split>.json

Dataset names ``shapes_<split>`` are registered with Detectron2 by :func:`register_shapes`;
the data is generated lazily on first use (``DatasetCatalog.get``) or by
:func:`ensure_shapes_generated`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .coco import load_coco_json_checked

__all__ = [
    "SHAPES_CLASSES",
    "GENERATOR_VERSION",
    "DEFAULT_SHAPES_SPLITS",
    "default_shapes_root",
    "render_shapes_image",
    "generate_shapes_dataset",
    "shapes_dataset_paths",
    "is_shapes_dataset_complete",
    "register_shapes",
    "ensure_shapes_generated",
    "is_shapes_dataset",
]

logger = logging.getLogger(__name__)

#: Category names; category ids in the json are ``index + 1``.
SHAPES_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Bump when the rendered output changes: a stored dataset with another version is regenerated.
GENERATOR_VERSION = 3  # 3: instance masks (RLE "segmentation"); the images are those of version 1
#: Default registered splits: dataset name -> number of images.
DEFAULT_SHAPES_SPLITS: Dict[str, int] = {"shapes_train": 2000, "shapes_val": 200}
DEFAULT_IMAGE_SIZE = 128

_EMPTY_IMAGE_PROB = 0.05
_MAX_OBJECTS = 8
# Relative weights of 1..8 objects in a non-empty image (mean ~3.6).
_COUNT_WEIGHTS = np.array([8, 8, 7, 6, 5, 4, 3, 2], dtype=np.float64)
# Size bands as fractions of the image side (at 128 px: 8-16, 16-36, 36-64 px) and weights.
_SIZE_BANDS = ((8 / 128, 16 / 128), (16 / 128, 36 / 128), (36 / 128, 64 / 128))
_SIZE_BAND_WEIGHTS = np.array([0.2, 0.45, 0.35])
_MIN_VISIBLE = 0.5  # a new shape may hide at most half of an earlier one
_PLACEMENT_TRIES = 20
_MIN_COLOR_DIST = 110.0
_NOISE = 5  # uniform per-pixel noise amplitude (grey levels)  # RGB distance between a shape's colour and the background base colour


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Textured background: base colour + low-frequency colour field. Returns (float HxWx3, base)."""
    base = rng.uniform(0, 255, size=3)
    grid = rng.integers(3, 7)
    field = rng.normal(0.0, 25.0, size=(grid, grid, 3)).astype(np.float32)
    # Upsample each channel smoothly with PIL (mode "F" = 32-bit float).
    chans = [
        np.asarray(Image.fromarray(field[:, :, c], mode="F").resize((w, h), Image.BILINEAR))
        for c in range(3)
    ]
    bg = base[None, None, :] + np.stack(chans, axis=-1)
    return bg.astype(np.float32), base


def _shape_color(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    for _ in range(100):
        c = rng.uniform(0, 255, size=3)
        if np.linalg.norm(c - base) >= _MIN_COLOR_DIST:
            return c
    # Fall back to the colour opposite the background (always far enough away).
    return 255.0 - base


def _shape_mask(
    cls: int, size: int, x0: int, y0: int, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """Rasterise shape ``cls`` with nominal side ``size`` in box starting at (x0, y0)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x0 + size - 1, y0 + size - 1
    name = SHAPES_CLASSES[cls]
    if name == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif name == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif name == "triangle":
        # Equilateral triangle inscribed in the circle of the box, random rotation.
        cx, cy, r = x0 + (size - 1) / 2.0, y0 + (size - 1) / 2.0, (size - 1) / 2.0
        theta = rng.uniform(0, 2 * np.pi)
        pts = [
            (cx + r * np.cos(theta + 2 * np.pi * k / 3), cy + r * np.sin(theta + 2 * np.pi * k / 3))
            for k in range(3)
        ]
        draw.polygon(pts, fill=255)
    elif name == "cross":
        t = max(2, int(round(size * 0.32)))
        a = x0 + (size - t) // 2
        b = y0 + (size - t) // 2
        draw.rectangle([a, y0, a + t - 1, y1], fill=255)
        draw.rectangle([x0, b, x1, b + t - 1], fill=255)
    else:  # pragma: no cover
        raise ValueError(name)
    return np.asarray(canvas) > 0


def _mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight pixel extent of a boolean mask as COCO xywh (integers)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a boolean mask (json-ready: counts as a string)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def render_shapes_image(
    rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE
) -> Tuple[np.ndarray, List[dict]]:
    """Render one image. Returns (uint8 HxWx3 array, list of objects).

    Each object is ``{"category_id": 1-based id, "bbox": [x, y, w, h] (ints, tight extent of
    the visible pixels), "area": visible pixel count, "segmentation": RLE of the visible pixels}``
    (the instance mask is exact: the pixels the shape paints and no later shape covers).
    """
    h = w = int(image_size)
    img, base = _background(rng, h, w)

    if rng.uniform() < _EMPTY_IMAGE_PROB:
        n = 0
    else:
        n = int(rng.choice(np.arange(1, _MAX_OBJECTS + 1), p=_COUNT_WEIGHTS / _COUNT_WEIGHTS.sum()))

    owner = np.full((h, w), -1, dtype=np.int32)  # index of the object owning each pixel
    full_area: List[int] = []
    classes: List[int] = []
    colors: List[np.ndarray] = []
    for _ in range(n):
        cls = int(rng.integers(len(SHAPES_CLASSES)))
        color = _shape_color(rng, base)
        for _try in range(_PLACEMENT_TRIES):
            band = int(rng.choice(len(_SIZE_BANDS), p=_SIZE_BAND_WEIGHTS))
            lo, hi = _SIZE_BANDS[band]
            size = int(rng.integers(max(4, round(lo * w)), max(5, round(hi * w)) + 1))
            size = min(size, w, h)
            x0 = int(rng.integers(0, w - size + 1))
            y0 = int(rng.integers(0, h - size + 1))
            mask = _shape_mask(cls, size, x0, y0, h, w, rng)
            if not mask.any():
                continue
            # Reject if an earlier object would drop below _MIN_VISIBLE of its full area.
            hidden = owner[mask]
            hidden = hidden[hidden >= 0]
            ok = True
            if hidden.size:
                covered = np.bincount(hidden, minlength=len(full_area))
                for j, cov in enumerate(covered):
                    if cov == 0:
                        continue
                    visible_after = int((owner == j).sum()) - int(cov)
                    if visible_after < _MIN_VISIBLE * full_area[j]:
                        ok = False
                        break
            if ok:
                idx = len(full_area)
                owner[mask] = idx
                full_area.append(int(mask.sum()))
                classes.append(cls)
                colors.append(color)
                break

    objects = []
    for idx, cls in enumerate(classes):
        vis = owner == idx
        img[vis] = colors[idx]
        area = int(vis.sum())
        if area < _MIN_VISIBLE * full_area[idx] or area == 0:  # cannot happen (placement rule)
            continue
        objects.append({"category_id": cls + 1, "bbox": list(_mask_box(vis)), "area": area, "segmentation": _rle(vis)})

    # Sensor-like noise over everything (does not change the masks/boxes).
    noisy = np.rint(img).astype(np.int16) + rng.integers(-_NOISE, _NOISE + 1, size=img.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------
def shapes_dataset_paths(root: str, split: str) -> Tuple[str, str]:
    """Return ``(image_root, json_file)`` of ``split`` under ``root``."""
    root = os.path.abspath(os.path.expanduser(root))
    return os.path.join(root, split), os.path.join(root, "annotations", f"instances_{split}.json")


def _params(split: str, num_images: int, seed: int, image_size: int) -> dict:
    return {
        "generator": "detr_plus.data.shapes",
        "version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "classes": list(SHAPES_CLASSES),
    }


def _read_info(json_file: str) -> Optional[dict]:
    try:
        with open(json_file) as f:
            return json.load(f).get("info", {}).get("params")
    except (OSError, ValueError, AttributeError):
        return None


def is_shapes_dataset_complete(
    root: str, split: str, num_images: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE
) -> bool:
    """True if ``root`` holds the split generated with exactly these parameters."""
    image_root, json_file = shapes_dataset_paths(root, split)
    if _read_info(json_file) != _params(split, num_images, seed, image_size):
        return False
    try:
        present = set(os.listdir(image_root))
    except OSError:
        return False
    return all(f"{i:06d}.png" in present for i in range(num_images))


@contextlib.contextmanager
def _file_lock(path: str):
    """Inter-process lock (POSIX flock) so that concurrent workers generate only once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def generate_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: bool = True,
) -> str:
    """Generate ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json``.

    Skips the work if the split already exists with identical parameters (stored in the
    json's ``info.params``).  Writing is atomic: images and json are first written to a
    temporary directory; the image directory is then renamed into place and the json is moved
    last, so an interrupted run never leaves a dataset that looks complete.

    Returns the json file path.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    root = os.path.abspath(os.path.expanduser(root))
    image_root, json_file = shapes_dataset_paths(root, split)
    if is_shapes_dataset_complete(root, split, num_images, seed, image_size):
        return json_file
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with _file_lock(os.path.join(root, f".lock-{split}")):
        # Another process may have finished while we waited for the lock.
        if is_shapes_dataset_complete(root, split, num_images, seed, image_size):
            return json_file
        # Under the lock, any other temp dir of this split is left over from a killed run.
        for entry in os.listdir(root):
            if entry.startswith(f".tmp-{split}-"):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        tmp = os.path.join(root, f".tmp-{split}-{os.getpid()}")
        tmp_images = os.path.join(tmp, split)
        os.makedirs(tmp_images)
        params = _params(split, num_images, seed, image_size)
        t0 = time.perf_counter()
        images, annotations = [], []
        iterator = range(num_images)
        if progress:
            try:
                from tqdm import tqdm

                iterator = tqdm(iterator, desc=f"Generating shapes/{split}", unit="img", leave=False)
            except ImportError:  # pragma: no cover
                pass
        try:
            for i in iterator:
                rng = np.random.default_rng([int(seed), i])
                arr, objects = render_shapes_image(rng, image_size)
                file_name = f"{i:06d}.png"
                Image.fromarray(arr).save(os.path.join(tmp_images, file_name), compress_level=1)
                image_id = i + 1
                images.append(
                    {"id": image_id, "file_name": file_name, "height": arr.shape[0], "width": arr.shape[1]}
                )
                for obj in objects:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": image_id,
                            "category_id": obj["category_id"],
                            "bbox": obj["bbox"],
                            "area": obj["area"],
                            "segmentation": obj["segmentation"],
                            "iscrowd": 0,
                        }
                    )
            data = {
                "info": {
                    "description": "detr_plus synthetic shapes detection dataset",
                    "params": params,
                },
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"id": k + 1, "name": name, "supercategory": "shape"}
                    for k, name in enumerate(SHAPES_CLASSES)
                ],
            }
            tmp_json = os.path.join(tmp, os.path.basename(json_file))
            with open(tmp_json, "w") as f:
                json.dump(data, f)
            # Commit: remove a stale json first (so the dir swap is never "complete" with old
            # labels), swap in the images, then move the json into place last.
            if os.path.exists(json_file):
                os.remove(json_file)
            if os.path.exists(image_root):
                shutil.rmtree(image_root)
            os.rename(tmp_images, image_root)
            os.replace(tmp_json, json_file)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "Generated shapes/%s: %d images, %d objects in %.1f s under %s",
            split, num_images, len(annotations), time.perf_counter() - t0, root,
        )
    return json_file


# --------------------------------------------------------------------------------------
# Detectron2 registration
# --------------------------------------------------------------------------------------
# name -> dict(root, split, num_images, seed, image_size)
_SHAPES_DATASETS: Dict[str, dict] = {}


def default_shapes_root() -> str:
    """``$DETR_PLUS_DATASETS/shapes``, else ``$DETECTRON2_DATASETS/shapes``, else ``./datasets/shapes``."""
    for var in ("DETR_PLUS_DATASETS", "DETECTRON2_DATASETS"):
        v = os.environ.get(var)
        if v:
            return os.path.abspath(os.path.join(os.path.expanduser(v), "shapes"))
    return os.path.abspath(os.path.join("datasets", "shapes"))


def _split_of(name: str) -> str:
    return name[len("shapes_"):] if name.startswith("shapes_") and len(name) > 7 else name


def _seed_of(split: str) -> int:
    # Stable across processes and Python versions (unlike hash()).
    return {"train": 1, "val": 2, "test": 3}.get(split, zlib.crc32(split.encode()) % (2**31))


def is_shapes_dataset(name: str) -> bool:
    return name in _SHAPES_DATASETS


def ensure_shapes_generated(name: str) -> str:
    """Generate the registered shapes dataset ``name`` if missing; return its json file.

    Call this (or :func:`detr_plus.data.check_dataset_available`) before building a
    ``COCOEvaluator`` for it, since the evaluator reads ``metadata.json_file`` directly.
    """
    if name not in _SHAPES_DATASETS:
        raise KeyError(f"'{name}' is not a registered shapes dataset; registered: {sorted(_SHAPES_DATASETS)}")
    p = _SHAPES_DATASETS[name]
    return generate_shapes_dataset(p["root"], p["split"], p["num_images"], p["seed"], p["image_size"])


def _load_shapes(name: str):
    ensure_shapes_generated(name)
    p = _SHAPES_DATASETS[name]
    image_root, json_file = shapes_dataset_paths(p["root"], p["split"])
    return load_coco_json_checked(json_file, image_root, name)


def register_shapes(
    root: Optional[str] = None,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seeds: Optional[Dict[str, int]] = None,
) -> List[str]:
    """Register shapes datasets with Detectron2 (lazy: generated on first use).

    Args:
        root: dataset directory; default :func:`default_shapes_root`.
        splits: dataset name -> number of images; default :data:`DEFAULT_SHAPES_SPLITS`.
            The split directory is the name without the ``shapes_`` prefix.
        image_size: side of the square images.
        seeds: optional dataset name -> seed (default: train 1, val 2, test 3, else crc32).

    Idempotent: re-registering a name with the same parameters is a no-op; with different
    parameters the old registration is replaced.  Returns the registered names.
    """
    import detr_plus  # noqa: F401  (compat shims before detectron2)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = os.path.abspath(os.path.expanduser(root)) if root else default_shapes_root()
    splits = dict(DEFAULT_SHAPES_SPLITS if splits is None else splits)
    seeds = seeds or {}
    names = []
    for name, num_images in splits.items():
        split = _split_of(name)
        seed = int(seeds.get(name, _seed_of(split)))
        params = dict(root=root, split=split, num_images=int(num_images), seed=seed, image_size=int(image_size))
        image_root, json_file = shapes_dataset_paths(root, split)
        if name in DatasetCatalog.list():
            if _SHAPES_DATASETS.get(name) == params:
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
        _SHAPES_DATASETS[name] = params
        DatasetCatalog.register(name, lambda name=name: _load_shapes(name))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(SHAPES_CLASSES))},
        )
        names.append(name)
    return names

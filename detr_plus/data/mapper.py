"""DETR-style dataset mapper and augmentations (Detectron2 v0.6 and newer)."""
from __future__ import annotations

import copy
import logging
import sys
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import UnidentifiedImageError

import detr_plus  # noqa: F401  (compat shims must run before detectron2 is imported)
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks

__all__ = [
    "RandomChoice",
    "DetrDatasetMapper",
    "build_detr_train_augmentation",
    "build_detr_test_augmentation",
    "read_image_checked",
    "DETR_MIN_SIZES",
    "IMAGE_ERRORS",
    "UnreadableImageError",
]

logger = logging.getLogger(__name__)

#: Short-edge sizes of the DETR / Deformable-DETR multi-scale training.
DETR_MIN_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)


class RandomChoice(T.Augmentation):
    """Apply exactly one of ``augs``, chosen uniformly (or with ``probs``) at random.

    Detectron2 v0.6 has ``RandomApply`` (apply-or-not) but no "either A or B"; an element may
    itself be a ``T.AugmentationList`` (applied sequentially).  Uses ``np.random`` like
    Detectron2's augmentations, so ``np.random.seed`` makes it reproducible.
    """

    def __init__(self, augs: Sequence[T.Augmentation], probs: Union[Sequence[float], None] = None):
        super().__init__()
        if len(augs) == 0:
            raise ValueError("RandomChoice needs at least one augmentation")
        for a in augs:
            if not isinstance(a, T.Augmentation):
                raise TypeError(f"RandomChoice expects Augmentation instances, got {type(a)}")
        self.augs = list(augs)
        if probs is not None:
            p = np.asarray(probs, dtype=np.float64)
            if p.shape != (len(self.augs),) or (p < 0).any() or p.sum() <= 0:
                raise ValueError(f"invalid probs {probs} for {len(self.augs)} augmentations")
            probs = list(p / p.sum())
        self.probs = probs

    def _pick(self) -> T.Augmentation:
        if self.probs is None:
            return self.augs[np.random.randint(len(self.augs))]
        return self.augs[int(np.random.choice(len(self.augs), p=self.probs))]

    def get_transform(self, *args):
        # Only meaningful for single-step augmentations; __call__ handles AugmentationList.
        return self._pick().get_transform(*args)

    def __call__(self, aug_input):
        return self._pick()(aug_input)

    def __repr__(self):
        return f"RandomChoice([{', '.join(repr(a) for a in self.augs)}], probs={self.probs})"

    __str__ = __repr__


def build_detr_train_augmentation(
    min_sizes: Sequence[int] = DETR_MIN_SIZES,
    max_size: int = 1333,
    crop_sizes: Sequence[int] = (400, 500, 600),
    crop_range: Sequence[int] = (384, 600),
    flip_prob: float = 0.5,
) -> List[T.Augmentation]:
    """DETR training augmentation.

    Random horizontal flip; then with probability 0.5 either
    (a) resize the short side to a random choice of ``min_sizes`` (long side <= ``max_size``), or
    (b) resize the short side to a random choice of ``crop_sizes`` (no long-side limit), crop a
        random ``h x w`` patch with ``h, w`` uniform in ``crop_range`` (absolute pixels, clamped
        to the image), then do (a).

    For 128 px CPU configs e.g. ``min_sizes=(96, 112, 128), max_size=160,
    crop_sizes=(96, 112, 128), crop_range=(80, 112)``.
    """
    multiscale = T.ResizeShortestEdge(list(min_sizes), max_size=max_size, sample_style="choice")
    crop_then_resize = T.AugmentationList(
        [
            T.ResizeShortestEdge(list(crop_sizes), max_size=sys.maxsize, sample_style="choice"),
            T.RandomCrop("absolute_range", (int(crop_range[0]), int(crop_range[1]))),
            T.ResizeShortestEdge(list(min_sizes), max_size=max_size, sample_style="choice"),
        ]
    )
    return [
        T.RandomFlip(prob=flip_prob, horizontal=True, vertical=False),
        RandomChoice([multiscale, crop_then_resize]),
    ]


def build_detr_test_augmentation(min_size: int = 800, max_size: int = 1333) -> List[T.Augmentation]:
    """Resize the short side to ``min_size`` (long side <= ``max_size``)."""
    return [T.ResizeShortestEdge([int(min_size)], max_size=max_size, sample_style="choice")]


def rasterise(segmentation, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 mask of a COCO segmentation: polygons (a list of [x0, y0, x1, y1, ...]),
    RLE (a dict with "counts" as a list or a string); pixels of a polygon outside the image are cut."""
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):
        rles = mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(mask_util.merge(rles)).astype(np.uint8)
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        return mask_util.decode(segmentation).astype(np.uint8)
    raise TypeError(f"segmentation of type {type(segmentation).__name__}: polygons (list) or RLE (dict)")


class UnreadableImageError(RuntimeError):
    """An image file that exists but cannot be decoded (``file_name`` names it)."""

    def __init__(self, message: str, file_name: str):
        super().__init__(message)
        self.file_name = file_name


#: What a missing or undecodable image raises: the loader skips it in training, the test mapper blanks it.
IMAGE_ERRORS = (UnreadableImageError, FileNotFoundError)


def read_image_checked(file_name: str, image_format: str = "RGB") -> np.ndarray:
    """``detectron2.data.detection_utils.read_image`` with errors that name the file:
    ``FileNotFoundError`` or ``UnreadableImageError``."""
    try:
        return utils.read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: {file_name}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UnreadableImageError(f"Cannot read image {file_name}: {type(e).__name__}: {e}", file_name) from e


class DetrDatasetMapper:
    """Map a Detectron2 dataset dict to the model input (DETR style).

    Output dict: ``"image"`` (uint8 CHW tensor in ``image_format``), ``"height"``/``"width"``
    (original image size, for rescaling predictions), ``"image_id"``, ``"file_name"`` and, in
    training, ``"instances"`` (``gt_boxes``: XYXY absolute boxes in the augmented image,
    ``gt_classes``), with crowd annotations removed and boxes emptied by cropping filtered out.
    Images with no annotations give empty ``Instances``.

    ``mask_format``: None (boxes only, the default) or "bitmask": the instances also get ``gt_masks``
    (``BitMasks`` of the augmented image). Polygons and RLE are both rasterised at the original size
    first and go through the same flip / crop / resize as the image (nearest neighbour), so a polygon
    partly outside a crop is cut where the image is.

    ``unreadable``: what a missing or undecodable image does: "raise" (``IMAGE_ERRORS``; the training
    loader then skips it) or, in test mode, "blank": a black image of the record's height x width with
    ``"unreadable"`` set to the error, logged, so evaluation goes on and counts its objects as missed.
    """

    def __init__(self, is_train: bool, augmentations: Sequence[T.Augmentation], image_format: str = "RGB",
                 unreadable: str = "raise", mask_format: Optional[str] = None):
        if mask_format not in (None, "bitmask"):
            raise ValueError(f"DetrDatasetMapper(mask_format={mask_format!r}): None (boxes only) or 'bitmask'")
        self.mask_format = mask_format
        if unreadable not in ("raise", "blank") or (is_train and unreadable == "blank"):
            raise ValueError(f"DetrDatasetMapper(unreadable={unreadable!r}): 'raise', or 'blank' in test mode")
        self.unreadable = unreadable
        self.is_train = bool(is_train)
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logger.info(f"[DetrDatasetMapper] Augmentations used in {mode}: {self.augmentations}")

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = read_image_checked(file_name, self.image_format)
        except IMAGE_ERRORS as e:
            if self.unreadable == "raise" or "height" not in dataset_dict or "width" not in dataset_dict:
                raise
            logger.warning(f"{e}: evaluated as a black image (its objects count as missed)")
            dataset_dict["unreadable"] = str(e)
            image = np.zeros((dataset_dict["height"], dataset_dict["width"], 3), dtype=np.uint8)
        utils.check_image_size(dataset_dict, image)  # also fills in missing height/width

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = tuple(image.shape[:2])  # (h, w)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annos = dataset_dict.pop("annotations", None)
        if not self.is_train:
            return dataset_dict

        objs = []
        for obj in annos or []:
            if obj.get("iscrowd", 0) != 0:
                continue
            obj.pop("keypoints", None)
            if self.mask_format is None:
                obj.pop("segmentation", None)  # boxes only: no mask to transform
            elif "segmentation" not in obj:
                raise KeyError(f"{file_name}: annotation id={obj.get('id')} has no 'segmentation', which a model with a "
                               "mask head needs (mapper.mask_format='bitmask')")
            else:  # rasterised at the original size, then the image's transforms (detectron2 transforms the box)
                raster = rasterise(obj.pop("segmentation"), dataset_dict["height"], dataset_dict["width"])
            # Float boxes: detectron2 transforms the coordinates in place in an array of the box's own
            # dtype, so integer json boxes would be truncated to whole pixels after every resize.
            obj["bbox"] = [float(v) for v in obj["bbox"]]
            obj = utils.transform_instance_annotations(obj, transforms, image_shape)
            if self.mask_format is not None:
                obj["segmentation"] = transforms.apply_segmentation(raster)
            objs.append(obj)
        instances = utils.annotations_to_instances(objs, image_shape, mask_format=self.mask_format or "polygon")
        if self.mask_format is not None and not instances.has("gt_masks"):  # no objects: still a mask field, empty
            instances.gt_masks = BitMasks(torch.zeros(0, *image_shape, dtype=torch.bool))
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict

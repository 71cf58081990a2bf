"""Load-time checks of a COCO-format dataset: every problem is counted and reported once in the log
with its first offender (file, image, annotation id), or is an error before training starts.

| problem | what happens |
|---|---|
| NaN / infinite box coordinate | annotation dropped, counted |
| zero / negative box width or height | annotation dropped, counted |
| box partly outside its image | clipped to the image, counted |
| box wholly outside its image | annotation dropped, counted |
| mask polygons without one of >= 3 points (empty) | annotation dropped (by detectron2's loader), counted with the first offender |
| mask polygons wholly outside the image | annotation dropped, counted |
| RLE mask of another size than its image, or empty | annotation dropped, counted |
| duplicate image id in the json | ``ValueError`` naming the id and both file names |
| image files missing | ``FileNotFoundError`` with how many and the first few |
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

PROBLEMS = {  # kind -> what is done, for the log line
    "non_finite": "dropped: non-finite (NaN / infinite) box coordinate",
    "non_positive_size": "dropped: zero / negative box width or height",
    "outside_image": "dropped: box wholly outside its image",
    "clipped": "clipped to the image: box partly outside",
    "mask_outside_image": "dropped: mask polygons wholly outside the image",
    "mask_size_mismatch": "dropped: RLE mask size differs from the image's height x width",
    "mask_empty": "dropped: RLE mask without a pixel",
}
MISSING_FILES_SHOWN = 5


def check_unique_image_ids(json_file: str, data: Optional[dict] = None) -> None:
    """``ValueError`` when two images of the json share an id (pycocotools would silently keep the last,
    and the annotations of both would go to one file). ``data``: the json, when already read."""
    if data is None:
        with open(json_file) as f:
            data = json.load(f)
    images = data.get("images", [])
    first_file = {}
    for image in images:
        image_id = image.get("id")
        if image_id in first_file:
            raise ValueError(f"'{json_file}': image id {image_id} is used twice ('{first_file[image_id]}' and "
                             f"'{image.get('file_name')}'); image ids must be unique")
        first_file[image_id] = image.get("file_name")


def report_empty_polygons(json_file: str, data: dict) -> int:
    """Count (and log with the first offender) the annotations whose "segmentation" is a list without
    a polygon of 3 or more points: detectron2's loader drops them. Returns the count."""
    count, first = 0, None
    for ann in data.get("annotations", []):
        segm = ann.get("segmentation")
        if isinstance(segm, list) and not any(len(p) >= 6 and len(p) % 2 == 0 for p in segm):
            count += 1
            first = first or f"annotation id={ann.get('id')} of image id={ann.get('image_id')}, segmentation={segm}"
    if count:
        logger.warning(f"'{json_file}': {count} annotation(s) dropped: mask polygons empty (none with 3 or more points) "
                       f"(first: {first})")
    return count


def _mask_problem(segmentation, width, height) -> str:
    """The problem kind of an annotation's mask (polygons or RLE) on an image of ``width`` x ``height``, or ""."""
    if width is None or height is None or not segmentation:
        return ""
    if isinstance(segmentation, list):
        xs = [v for polygon in segmentation for v in polygon[0::2]]
        ys = [v for polygon in segmentation for v in polygon[1::2]]
        outside = max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height
        return "mask_outside_image" if outside else ""
    if isinstance(segmentation, dict):
        from pycocotools import mask as mask_util

        if list(segmentation.get("size", [])) != [height, width]:
            return "mask_size_mismatch"
        rle = segmentation if not isinstance(segmentation.get("counts"), list) else mask_util.frPyObjects(segmentation, height, width)
        return "mask_empty" if mask_util.area(rle) == 0 else ""
    return ""


def _clean_box(bbox, mode, width, height) -> Tuple[str, list]:
    """(problem kind or "", the box to keep) of one annotation box in ``mode`` (XYWH_ABS or XYXY_ABS)."""
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return "non_finite", bbox
    x0, y0, x1, y1 = BoxMode.convert(list(bbox), mode, BoxMode.XYXY_ABS)
    if x1 <= x0 or y1 <= y0:
        return "non_positive_size", bbox
    if width is None or height is None:
        return "", bbox
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        return "outside_image", bbox
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return "", bbox
    return "clipped", BoxMode.convert([cx0, cy0, cx1, cy1], BoxMode.XYXY_ABS, mode)


def clean_annotations(dicts: List[dict], json_file: str) -> Dict[str, int]:
    """Drop or clip the bad boxes of ``dicts`` in place (table above); logs one warning per problem kind
    with its count and first offender, and returns the counts."""
    counts: Counter = Counter()
    first: Dict[str, str] = {}
    for record in dicts:
        kept = []
        for obj in record.get("annotations", []):
            bbox = obj.get("bbox")
            kind, box = ("", bbox) if bbox is None else _clean_box(bbox, obj.get("bbox_mode", BoxMode.XYWH_ABS),
                                                                 record.get("width"), record.get("height"))
            if kind in ("", "clipped"):
                kind = _mask_problem(obj.get("segmentation"), record.get("width"), record.get("height")) or kind
            if kind:
                counts[kind] += 1
                first.setdefault(kind, f"annotation id={obj.get('id')} of image id={record.get('image_id')} "
                                       f"('{record['file_name']}'), bbox={list(bbox) if bbox is not None else None}")
            if kind == "clipped":
                obj["bbox"] = [float(v) for v in box]
            if kind in ("", "clipped"):
                kept.append(obj)
        record["annotations"] = kept
    for kind, count in counts.items():
        logger.warning(f"'{json_file}': {count} annotation(s) {PROBLEMS[kind]} (first: {first[kind]})")
    return dict(counts)


def check_image_files(dicts: List[dict], dataset_name: str) -> None:
    """``FileNotFoundError`` listing how many image files of the dataset are missing and the first few."""
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:MISSING_FILES_SHOWN])
        more = f" and {len(missing) - MISSING_FILES_SHOWN} more" if len(missing) > MISSING_FILES_SHOWN else ""
        raise FileNotFoundError(f"Dataset '{dataset_name}': {len(missing)} of {len(dicts)} image files do not exist: {shown}{more}")

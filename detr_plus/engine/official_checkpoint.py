"""Official Deformable-DETR checkpoints (Zhu et al., "Deformable DETR: Deformable Transformers for
End-to-End Object Detection", arXiv:2010.04159; their public code's ``main.py`` state dicts) as
detr_plus state dicts, for ``configs/deformable_detr/deformable_detr{,_refine,_two_stage}_r50_*.py``.

What the conversion does besides renaming (docs/authors_code_facts.md, "Official checkpoints"):

* the backbone is torchvision's ResNet (``layerN.M.convK`` / ``bnK`` / ``downsample``), ours is
  Detectron2's (``resN+1.M.convK`` with ``.norm``, ``shortcut``); both put the stride in the 3x3 conv;
* the class heads have one row per COCO category id (91 rows, id = row); ours have the 80 classes
  in Detectron2's contiguous order, so the rows of the 80 category ids are kept, in that order;
* the two-stage proposal head is C-wide but only its row 0 is a score (top-k reads it, the
  encoder loss labels every GT 0; the other rows are trained as negatives): its first C rows are kept;
* the two-stage proposal embedding encodes (x, y, w, h); ours encodes (y, x, w, h) (as DAB-DETR
  and DINO do), so the first two 128-column blocks of its input projection swap;
* the refine / two-stage decoder holds a second reference to the same heads
  (``transformer.decoder.{bbox,class}_embed``): checked equal to the top-level heads and dropped;
* the single-stage layers share one class and one box head (as ours): checked equal.
"""
import re
from typing import Dict, List, Tuple

import torch

__all__ = ["OFFICIAL_VARIANTS", "convert_official_deformable_detr", "official_variant", "coco_category_ids"]

#: official variant -> the detr_plus model config it converts into
OFFICIAL_VARIANTS = {
    "single_stage": "configs/models/deformable_detr_r50.py",
    "refine": "configs/models/deformable_detr_refine_r50.py",
    "two_stage_refine": "configs/models/deformable_detr_two_stage_r50.py",
}
NUM_OFFICIAL_CLASS_IDS = 91  # COCO category ids 0..90, the row of a class is its id
PROPOSAL_SINE_FEATS = 128  # per coordinate, in the two-stage proposal embedding

# (official pattern, our replacement), tried in order; the first full match wins
_RENAMES: List[Tuple[str, str]] = [
    (r"backbone\.0\.body\.conv1\.weight", "backbone.stem.conv1.weight"),
    (r"backbone\.0\.body\.bn1\.(.+)", r"backbone.stem.conv1.norm.\1"),
    (r"backbone\.0\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight", "backbone.res{s}.\\2.conv\\3.weight"),
    (r"backbone\.0\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)", "backbone.res{s}.\\2.conv\\3.norm.\\4"),
    (r"backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight", "backbone.res{s}.\\2.shortcut.weight"),
    (r"backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)", "backbone.res{s}.\\2.shortcut.norm.\\3"),
    (r"input_proj\.([0-2])\.(.+)", r"neck.convs.\1.\2"),
    (r"input_proj\.3\.(.+)", r"neck.extra_convs.0.\1"),
    (r"transformer\.encoder\.layers\.(\d+)\.(linear[12]\..+)", r"transformer.encoder.layers.\1.ffn.\2"),
    (r"transformer\.encoder\.(.+)", r"transformer.encoder.\1"),
    (r"transformer\.decoder\.layers\.(\d+)\.cross_attn\.(.+)", r"transformer.decoder.layers.\1.cross_attn.attn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.(.+)", r"transformer.decoder.layers.\1.cross_attn.norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.(.+)", r"transformer.decoder.layers.\1.self_attn.attn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(.+)", r"transformer.decoder.layers.\1.self_attn.norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(linear[12]\..+)", r"transformer.decoder.layers.\1.ffn.ffn.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm3\.(.+)", r"transformer.decoder.layers.\1.ffn.norm.\2"),
    (r"transformer\.(level_embed|reference_points\..+)", r"transformer.\1"),
    (r"transformer\.enc_output\.(.+)", r"transformer.enc_output.0.\1"),
    (r"transformer\.enc_output_norm\.(.+)", r"transformer.enc_output.1.\1"),
    (r"transformer\.pos_trans\.(.+)", r"transformer.proposal_embedding.0.\1"),
    (r"transformer\.pos_trans_norm\.(.+)", r"transformer.proposal_embedding.1.\1"),
    (r"query_embed\.weight", "transformer.query_embedding.weight"),
    (r"class_embed\.(\d+)\.(.+)", "{class_head}.\\2"),
    (r"bbox_embed\.(\d+)\.(.+)", "{box_head}.\\2"),
]
_DECODER_ALIASES = re.compile(r"transformer\.decoder\.(bbox_embed|class_embed)\.(.+)")


def official_variant(state: Dict[str, torch.Tensor]) -> str:
    """"single_stage", "refine" or "two_stage_refine", read from which tensors the state dict has."""
    if "transformer.enc_output.weight" in state:
        return "two_stage_refine"
    if "query_embed.weight" not in state:
        raise ValueError("not an official Deformable-DETR state dict: neither 'query_embed.weight' "
                         "(single-stage / refine) nor 'transformer.enc_output.weight' (two-stage)")
    return "refine" if any(k.startswith("transformer.decoder.bbox_embed.") for k in state) else "single_stage"


def coco_category_ids() -> List[int]:
    """The 80 COCO category ids in Detectron2's contiguous class order (its builtin COCO metadata)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def _rename(key: str, num_decoder_layers: int) -> str:
    for pattern, replacement in _RENAMES:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if "{s}" in replacement:  # torchvision layer1..4 = Detectron2 res2..5
            replacement = replacement.replace("{s}", str(int(match.group(1)) + 1))
        if "{class_head}" in replacement or "{box_head}" in replacement:
            index = int(match.group(1))
            encoder = index == num_decoder_layers  # the two-stage proposal heads come last
            kind = "class" if "{class_head}" in replacement else "box"
            head = f"transformer.enc_{kind}_head" if encoder else f"transformer.decoder.{kind}_heads.{index}"
            replacement = replacement.replace("{class_head}", head).replace("{box_head}", head)
        return match.expand(replacement)
    raise KeyError(f"official key '{key}' has no detr_plus name")


def convert_official_deformable_detr(state: Dict[str, torch.Tensor], num_decoder_layers: int = 6,
                                     coco_classes: bool = True) -> Dict[str, torch.Tensor]:
    """The official model's ``state_dict`` (``torch.load(path)["model"]``) as ours. ``coco_classes``:
    the class heads have 91 rows (COCO category ids) and become our 80 classes; ``False`` keeps
    the rows as they are (a checkpoint trained on other data with contiguous ids)."""
    variant = official_variant(state)
    for key, value in state.items():
        alias = _DECODER_ALIASES.fullmatch(key)
        if alias and not torch.equal(value, state[f"{alias.group(1)}.{alias.group(2)}"]):
            raise ValueError(f"'{key}' differs from '{alias.group(1)}.{alias.group(2)}': the decoder's "
                             "heads should be the model's heads")
        shared = re.fullmatch(r"((?:bbox|class)_embed)\.(\d+)\.(.+)", key)
        if variant == "single_stage" and shared and not torch.equal(value, state[f"{shared.group(1)}.0.{shared.group(3)}"]):
            raise ValueError(f"'{key}' differs from layer 0's: the single-stage model shares its heads across layers")
    ours = {_rename(k, num_decoder_layers): v for k, v in state.items() if not _DECODER_ALIASES.fullmatch(k)}
    if coco_classes:
        rows = torch.tensor(coco_category_ids())
        for key, value in ours.items():
            if re.fullmatch(r"transformer\.decoder\.class_heads\.\d+\.(weight|bias)", key):
                _expect_class_ids(key, value)
                ours[key] = value[rows].clone()
            elif re.fullmatch(r"transformer\.enc_class_head\.(weight|bias)", key):
                _expect_class_ids(key, value)
                ours[key] = value[: len(rows)].clone()  # row 0 is the proposal score; the rest are negatives only
    if variant == "two_stage_refine":
        weight = ours["transformer.proposal_embedding.0.weight"]
        n = PROPOSAL_SINE_FEATS
        ours["transformer.proposal_embedding.0.weight"] = torch.cat([weight[:, n : 2 * n], weight[:, :n], weight[:, 2 * n :]], 1)
    return ours


def _expect_class_ids(key: str, value: torch.Tensor) -> None:
    if value.shape[0] != NUM_OFFICIAL_CLASS_IDS:
        raise ValueError(f"'{key}' has {value.shape[0]} rows, not the {NUM_OFFICIAL_CLASS_IDS} COCO category ids: "
                         "convert with --keep-class-rows if its classes are already contiguous")

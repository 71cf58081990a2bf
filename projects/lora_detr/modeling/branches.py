"""LoRA-DETR's auxiliary branches as training routes of the shared core (Sec. "Assignment Strategies").

Each auxiliary branch i is one ``TrainingVariant``: a ``LoRAFFNBranch`` in every decoder layer (or an
independent FFN, the naive Fig. 1(c)), and its own criterion: the one-to-many matcher of Eq. 7
with the branch's k / tau / alpha, and the assignment-quality loss VFL+ (Eq. 8) with the soft
target s = M (Eq. 7). Branch losses are averaged over the branches ("For N_aux > 1, we average the
losses across all auxiliary branches"), i.e. ``loss_scale = 1 / N_aux``.

From the authors' public code (docs/authors_code_facts.md#lora-detr): the VFL+ terms are
multiplied by 0.25 (``vfl_scale``), the branches' boxes are refined from the primary route's
detached reference (``detach_reference``), and the 900-query recipe adds the one-to-one positives
to each branch's (``merge_o2o_positives``).
"""
from numbers import Number
from typing import Dict, Optional, Sequence, Union

from detr_plus.modeling import FocalLoss, OneToManyMatcher, OwnFFNVariant, SetCriterion, TrainingVariant, VarifocalPlusLoss

from .criterion import O2OMergedCriterion
from .lora import LoRAFFNBranch

# Table 4: k of each auxiliary branch for N_aux = 1, 2, 3, 5.
TABLE4_DIVERSE_K = {1: (6,), 2: (3, 6), 3: (2, 4, 6), 5: (2, 3, 4, 5, 6)}
TABLE4_IDENTICAL_K = {1: (6,), 2: (6, 6), 3: (6, 6, 6)}

# The authors' one-to-many rules (docs/authors_code_facts.md#lora-detr-one-to-many-assignment): tau 0.4, class weight alpha 0.3 (IoU 0.7),
# top-1 query of every GT kept, positives capped at 0.25 x queries. Branch losses 2 / 5 / 2.
DEFAULT_TAU, DEFAULT_ALPHA, DEFAULT_MAX_POSITIVE_RATIO = 0.4, 0.3, 0.25
DEFAULT_AUX_LOSS_WEIGHTS = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
# The authors' code multiplies every VFL+ term by 0.25 before the sum / GT count
# (docs/authors_code_facts.md#lora-detr-vfl-and-loss-weights).
DEFAULT_VFL_SCALE = 0.25

PerBranch = Union[None, Number, Sequence[Number]]
CLASS_LOSSES = ("vfl_plus", "focal")


def branch_class_loss(name: str, vfl_gamma: float, vfl_scale: float, alpha: float):
    """A branch's class loss: VFL+ (Eq. 8) with the soft target s = M of Eq. 7 (class weight
    ``alpha``), or the focal loss (the "w/o VFL+" rows)."""
    if name == "focal":
        return FocalLoss()
    return VarifocalPlusLoss(gamma=vfl_gamma, scale=vfl_scale, quality="matching_score", quality_class_weight=alpha)


def _per_branch(values: PerBranch, default: float, num_branches: int, what: str):
    if values is None:
        return [default] * num_branches
    if isinstance(values, Number):
        return [float(values)] * num_branches
    values = [float(v) for v in values]
    if len(values) != num_branches:
        raise ValueError(f"build_lora_branches: {what} has {len(values)} values for {num_branches} branches (one per k)")
    return values


def build_lora_branches(num_layers: int, d_model: int, d_ffn: int, ks: Sequence[int] = TABLE4_DIVERSE_K[3],
                      taus: PerBranch = None, alphas: PerBranch = None, rank: int = 32, scaling: float = 1.0,
                      init: str = "zero_b", naive: bool = False, dropout: float = 0.0, class_loss: str = "vfl_plus",
                      loss_weights: Optional[Dict[str, float]] = None, vfl_gamma: float = 1.5,
                      vfl_scale: float = DEFAULT_VFL_SCALE, max_positive_ratio: float = DEFAULT_MAX_POSITIVE_RATIO,
                      detach_reference: bool = True, merge_o2o_positives: bool = False,
                      loss_scale: float = 1.0) -> Dict[str, TrainingVariant]:
    """``{"aux0": TrainingVariant, ...}``: one auxiliary branch per entry of ``ks``.

    * ``ks``: k of each branch, N_aux = len(ks) (Table 4: diverse {6}, {3,6}, {2,4,6}, {2,3,4,5,6});
    * ``taus`` / ``alphas``: tau and alpha of Eq. 7, one value for all branches or one per branch
      (the "diverse tau / diverse alpha" ablation); default 0.4 / 0.3;
    * ``rank``, ``scaling``, ``init``: the LoRA modules (``LoRAFFNBranch``); ``naive=True`` gives each
      branch an independent full FFN instead (Fig. 1(c), Tables 1, 5 "w/o", 6), with ``dropout``;
    * ``class_loss``: "vfl_plus" (Eq. 8 with s = M, gamma ``vfl_gamma``, every term times ``vfl_scale``,
      0.25 as in the authors' code; 1.0 is Eq. 8 as printed) or "focal";
      ``loss_weights``: class / L1 / GIoU of every branch (2 / 5 / 2), each branch scaled by 1 / N_aux;
    * ``detach_reference`` (default True, the authors' code): a branch's boxes are refined from the
      primary route's detached input reference, so its box losses send no gradient into the previous
      layer's box head through look-forward-twice (the core ``TrainingVariant`` option);
    * ``merge_o2o_positives`` (default False; the authors' 900-query recipe): each branch's positives
      are its one-to-many pairs united with the layer's one-to-one pairs (``O2OMergedCriterion``);
    * ``loss_scale``: every branch's losses x this on top of 1 / N_aux: 0.5 when denoising queries
      train beside the branches (Sec. 4, "Training": "we down-weight the auxiliary losses by a factor
      of 0.5").
    """
    if class_loss not in CLASS_LOSSES:
        raise ValueError(f"build_lora_branches: class_loss={class_loss!r}: expected one of {CLASS_LOSSES}")
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("build_lora_branches: ks is empty; give one k per auxiliary branch")
    n = len(ks)
    taus = _per_branch(taus, DEFAULT_TAU, n, "taus")
    alphas = _per_branch(alphas, DEFAULT_ALPHA, n, "alphas")
    weights = dict(loss_weights or DEFAULT_AUX_LOSS_WEIGHTS)
    routes = {}
    for i, (k, tau, alpha) in enumerate(zip(ks, taus, alphas)):
        if naive:
            branches = [OwnFFNVariant(d_model, d_ffn, dropout) for _ in range(num_layers)]
        else:
            branches = [LoRAFFNBranch(d_model, d_ffn, rank, scaling, init) for _ in range(num_layers)]
        matcher = OneToManyMatcher(topk=k, threshold=tau, class_weight=alpha, max_positive_ratio=max_positive_ratio)
        criterion = SetCriterion(matcher, weights, class_loss=branch_class_loss(class_loss, vfl_gamma, vfl_scale, alpha))
        if merge_o2o_positives:
            criterion = O2OMergedCriterion(criterion)
        routes[f"aux{i}"] = TrainingVariant(branches, criterion, loss_scale=loss_scale / n, detach_reference=detach_reference)
    return routes

"""The core's COCO configs (configs/deformable_detr/*) against the published recipe: Deformable DETR
(Zhu et al. 2021, Sec. 4.1 / A.2-A.4) and docs/authors_code_facts.md#shared-deformable-detr-conventions —
not against the config's own constants: learning rates per parameter of the instantiated model and
optimizer, schedules, matcher costs, loss weights, query counts and transformer sizes."""
from pathlib import Path

import pytest

import detr_plus  # noqa: F401  (compat shims before detectron2)
from detectron2.config import LazyConfig, instantiate

from detr_plus.modeling import FocalLoss
from model_utils import build, shrink_model_config

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "configs" / "deformable_detr"
# name: (queries, epochs, the 2-d reference-point layer of the single-stage models exists, "++")
CONFIGS = {
    "deformable_detr_r50_12ep": (300, 12, True, False),
    "deformable_detr_r50_50ep": (300, 50, True, False),
    "deformable_detr_refine_r50_12ep": (300, 12, True, False),
    "deformable_detr_refine_r50_50ep": (300, 50, True, False),
    "deformable_detr_two_stage_r50_12ep": (300, 12, False, False),
    "deformable_detr_two_stage_r50_50ep": (300, 50, False, False),
    "dab_deformable_detr_r50_50ep": (300, 50, False, False),
    "deformable_detr_plusplus_r50_12ep": (900, 12, False, True),
}
# Another backbone on a checked recipe: the config equals its R50 config but for these keys.
BACKBONE_VARIANTS = {"deformable_detr_plusplus_r101_12ep": "deformable_detr_plusplus_r50_12ep"}
ITERS_PER_EPOCH = 90000 // 12  # "12 epochs" on COCO = 90k iterations at batch 16 (docs/authors_code_facts.md#shared-deformable-detr-conventions)
DROP_EPOCH = {12: 11, 50: 40}  # "LR drop at epoch 11" (12 ep); Zhu et al.: 50 epochs, decayed at epoch 40


def test_every_coco_config_is_checked():
    assert sorted(p.stem for p in COCO.glob("*.py")) == sorted([*CONFIGS, *BACKBONE_VARIANTS])


@pytest.mark.parametrize("name", sorted(BACKBONE_VARIANTS))
def test_an_r101_config_is_its_r50_recipe_with_resnet101(name):
    """Everything but the ResNet depth (101), its ImageNet weights (R-101.pkl) and the output folder
    is the R50 config's."""
    variant, base = (LazyConfig.to_py(LazyConfig.load(str(COCO / f"{n}.py"))) for n in (name, BACKBONE_VARIANTS[name]))
    cfg = LazyConfig.load(str(COCO / f"{name}.py"))
    assert cfg.model.backbone.stages.depth == 101 and cfg.train.init_checkpoint.endswith("R-101.pkl")
    r50 = LazyConfig.load(str(COCO / f"{BACKBONE_VARIANTS[name]}.py"))
    r50.model.backbone.stages.depth = 101
    r50.train.init_checkpoint, r50.train.output_dir = cfg.train.init_checkpoint, cfg.train.output_dir
    assert LazyConfig.to_py(r50) == LazyConfig.to_py(cfg)
    assert variant != base


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_coco_config_has_the_published_recipe(name):
    """AdamW lr 2e-4, weight decay 1e-4, betas (0.9, 0.999); backbone, sampling offsets and (single-stage)
    the reference-point layer at 2e-5, every other parameter at 2e-4 (checked per parameter of the
    instantiated optimizer on the config's model made small); grad-norm clip 0.1; batch 16; 7500
    iterations an epoch, LR x0.1 at epoch 11 of 12 or 40 of 50, no warm-up; Hungarian costs class 2,
    L1 5, GIoU 2 and the same loss weights, focal alpha 0.25 gamma 2, encoder loss x1; 300 queries (900
    for "++"), 6 + 6 layers of width 256, 8 heads, 4 levels x 4 points, FFN 1024 and dropout 0.1 (2048
    and 0 for "++"); top 100 detections evaluated; the ImageNet R-50 with its stem and res2 frozen (issue #26)."""
    queries, epochs, has_reference_layer, plusplus = CONFIGS[name]
    cfg = LazyConfig.load(str(COCO / f"{name}.py"))
    opt = cfg.optimizer
    assert (opt.lr, opt.weight_decay, tuple(opt.betas)) == (2e-4, 1e-4, (0.9, 0.999))
    assert cfg.train.clip_grad_norm == 0.1 and cfg.dataloader.train.total_batch_size == 16
    assert cfg.train.max_iter == epochs * ITERS_PER_EPOCH
    scheduler = cfg.lr_multiplier.scheduler
    assert scheduler.num_updates == cfg.train.max_iter and cfg.lr_multiplier.warmup_length == 0
    assert (list(scheduler.milestones), list(scheduler["values"])) == ([DROP_EPOCH[epochs] * ITERS_PER_EPOCH], [1.0, 0.1])
    assert cfg.train.init_checkpoint.endswith("R-50.pkl") and cfg.model.backbone.freeze_at == 2

    t = cfg.model.transformer
    assert t.num_queries == queries and t.num_classes == 80 and t.num_feature_levels == 4
    for part in (t.encoder, t.decoder):
        assert (part.num_layers, part.d_model, part.num_heads, part.num_levels, part.num_points) == (6, 256, 8, 4, 4)
        assert (part.d_ffn, part.dropout) == ((2048, 0.0) if plusplus else (1024, 0.1))
    assert cfg.model.select_box_nums_for_evaluation == 100 and cfg.model.enc_loss_weight == 1.0
    criterion = instantiate(cfg.model.criterion)
    assert (criterion.matcher.cost_class, criterion.matcher.cost_bbox, criterion.matcher.cost_giou) == (2.0, 5.0, 2.0)
    assert (criterion.matcher.focal_alpha, criterion.matcher.focal_gamma) == (0.25, 2.0)
    assert criterion.loss_weights == {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    assert isinstance(criterion.class_loss, FocalLoss)
    assert (criterion.class_loss.alpha, criterion.class_loss.gamma) == (0.25, 2.0)

    model = build(shrink_model_config(cfg.model))
    cfg.optimizer.model = model
    lrs = {name: g["lr"] for g in instantiate(cfg.optimizer).param_groups for name in g["names"]}
    assert lrs.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    slow_fragments = ("backbone.", "sampling_offsets") + (("transformer.reference_points.",) if has_reference_layer else ())
    assert any("transformer.reference_points." in n for n in lrs) == has_reference_layer
    for param, lr in lrs.items():
        assert lr == pytest.approx(2e-5 if any(f in param for f in slow_fragments) else 2e-4), param

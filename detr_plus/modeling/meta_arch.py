"""``DeformableDETR``: the Detectron2 meta-architecture that wraps the shared transformer."""
from dataclasses import replace
from functools import partial
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, ImageList, PolygonMasks
from detectron2.utils import comm
from torch import nn

from ..layers.box_ops import box_xyxy_to_cxcywh
from .contracts import (PRIMARY, DecoderOutput, DecoderVariant, DetectionPass, EncoderState, Head, Indices,
                        LayerPredictions, QueryGroup, QuerySelection, TrainingBatch)
from .criterion import SetCriterion
from .loss_book import LossBook
from .postprocess import top_detections
from .transformer import DeformableTransformer
from .variants import rename_legacy_keys


class _Unregistered:
    """Holds a module without making it a submodule (not in ``state_dict``, ``parameters`` or DDP);
    a deep copy holds nothing, so copying a student does not copy its teacher."""

    def __init__(self, module):
        self.module = module

    def __deepcopy__(self, memo):
        return _Unregistered(None)


def _load_legacy_names(state_dict, prefix, *unused):
    """A checkpoint written before core v3 (``routes.*``, ``query_groups.*``) loads under the new names."""
    renamed = rename_legacy_keys({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update({prefix + k: v for k, v in renamed.items()})


def padded_masks(masks, image_size, padded_size) -> torch.Tensor:
    """(n, H, W) bool: Detectron2 ``BitMasks`` or ``PolygonMasks`` of an image of ``image_size``, zero
    padded to ``padded_size``."""
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, *image_size)
    tensor = masks.tensor.bool()
    return F.pad(tensor, (0, padded_size[1] - tensor.shape[-1], 0, padded_size[0] - tensor.shape[-2]))


def reads_teacher(module) -> bool:
    """True for an extension that asks for the EMA teacher's pass (``requires_teacher = True``)."""
    return bool(getattr(module, "requires_teacher", False))


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Backbone -> neck -> deformable transformer -> per-layer heads.

    Training returns a dict of weighted losses (the keys of ``contracts``): the primary
    (one-to-one) queries on every decoder layer (``loss_class`` for the last layer,
    ``loss_class_{i}`` for layer i), the encoder's two-stage proposals (``loss_class_enc``, scaled by
    ``enc_loss_weight``, with ``enc_criterion``, default ``criterion``; class-agnostic targets when
    the transformer's proposal head is; pairs from ``enc_anchor_matcher`` on the proposal anchors
    when given, e.g. ``HungarianMatcher(cost_class=0)`` as Mr. DETR's public code matches, else from
    the criterion's matcher on the predictions), and under ``{name}/`` every decoder variant, every
    query group and every extra layer output with a criterion in ``extra_output_criteria``. The
    same keys come out of every step. Inference returns Detectron2 ``Instances`` in original image
    coordinates: the top ``select_box_nums_for_evaluation`` of queries x classes, with a field per
    head.

    The extension points (``contracts`` describes each; none of the training-only ones exists at
    inference, which costs what the baseline costs):
    * ``variants``: ``{name: DecoderVariant}``, training-only variants of the decoder layers
      (``TrainingVariant``); a variant with a ``query_selection`` starts from its own top-k proposals
      and gets its own encoder loss (``{name}/loss_*_enc``, same criterion and weight as the primary);
    * ``group_sources``: ``{name: GroupSource}``, called with the ``TrainingBatch``, each returning
      ``QueryGroup``s decoded beside the primary queries;
    * ``extra_output_criteria``: ``{name: Criterion}`` for ``LayerPredictions`` a layer wrapper puts
      in its layer's ``extras`` under that name (QR-DETR's exit heads);
    * ``heads``: ``{name: Head}``, per-query outputs with their own losses (part of the model);
    * a teacher: when any of these has ``requires_teacher = True``, the trainer attaches the EMA model
      (``attach_teacher``) and every step runs its ``detection_pass`` on the same batch, without
      gradient, into ``TrainingBatch.teacher``. With ``select_teacher_proposals`` (two-stage models)
      the student's primary queries in training are its own proposals at the encoder tokens the
      teacher selected, so student query i and teacher query i are twins on one proposal (OD-DETR's
      distillation pairs queries by index); inference selects by the student's own scores.

    Evaluating a training variant (default off):
    * ``eval_variant``: name of a variant whose last-layer predictions are evaluated instead (the
      decoder then runs that one variant in eval mode too), e.g. a one-to-many variant;
    * ``eval_nms_threshold``: class-wise NMS at this IoU over the top ``eval_pre_nms_topk``
      (query, class) pairs, then the top ``select_box_nums_for_evaluation`` are kept (one-to-many
      predictions have duplicates by design: LoRA-DETR Table 5 "Aux. w. NMS", Mr. DETR "w/ NMS");
    * ``eval_score_fusion``: a module mapping the primary queries' per-layer class logits (a list,
      first layer first) to the logits inference ranks, boxes staying the last layer's (an
      evaluation detail of Mr. DETR's public code, ``LayerScoreFusion`` in its project).
    """

    def __init__(self, *, backbone, neck, position_embedding, transformer: DeformableTransformer, criterion: SetCriterion,
                 pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375), input_format="RGB",
                 size_divisibility=32, select_box_nums_for_evaluation=100, enc_loss_weight=1.0,
                 enc_criterion: Optional[nn.Module] = None, enc_anchor_matcher=None,
                 variants: Optional[Dict[str, nn.Module]] = None, group_sources: Optional[Dict[str, nn.Module]] = None,
                 extra_output_criteria: Optional[Dict[str, nn.Module]] = None, heads: Optional[Dict[str, nn.Module]] = None,
                 eval_variant: Optional[str] = None, eval_nms_threshold: Optional[float] = None, eval_pre_nms_topk: int = 1000,
                 select_teacher_proposals: bool = False, eval_score_fusion: Optional[nn.Module] = None):
        super().__init__()
        self.backbone, self.neck, self.position_embedding = backbone, neck, position_embedding
        self.transformer, self.criterion, self.enc_criterion = transformer, criterion, enc_criterion
        self.enc_anchor_matcher = enc_anchor_matcher
        self.variants = nn.ModuleDict(variants or {})
        self.group_sources = nn.ModuleDict(group_sources or {})
        self.extra_output_criteria = nn.ModuleDict(extra_output_criteria or {})
        self.heads = nn.ModuleDict(heads or {})
        self.check_extensions()
        if eval_variant is not None and eval_variant not in self.variants:
            raise ValueError(f"eval_variant={eval_variant!r} is not one of the model's variants {list(self.variants)}")
        self.eval_variant, self.eval_nms_threshold, self.eval_pre_nms_topk = eval_variant, eval_nms_threshold, eval_pre_nms_topk
        self.input_format, self.size_divisibility = input_format, size_divisibility
        self.select_box_nums_for_evaluation, self.enc_loss_weight = select_box_nums_for_evaluation, enc_loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._teacher = _Unregistered(None)
        self.select_teacher_proposals = select_teacher_proposals
        self.eval_score_fusion = eval_score_fusion
        self._loss_keys: Optional[frozenset] = None  # the first training step's, which every later step must repeat
        self._register_load_state_dict_pre_hook(_load_legacy_names)

    def check_extensions(self):
        """Every extension honours its protocol, and names do not collide (they are loss prefixes)."""
        slots = {"variants": (self.variants, DecoderVariant), "heads": (self.heads, Head)}
        for slot, (modules, protocol) in slots.items():
            for name, module in modules.items():
                if not isinstance(module, protocol):
                    raise TypeError(f"model.{slot}[{name!r}] is a {type(module).__name__}, not a {protocol.__name__} "
                                    f"(detr_plus.modeling.contracts.{protocol.__name__} lists what it must have)")
        names = list(self.variants) + list(self.group_sources) + list(self.extra_output_criteria)
        clashes = sorted({n for n in names if names.count(n) > 1} | ({"enc", PRIMARY} & set(names)))
        if clashes:
            raise ValueError("variants, group_sources and extra_output_criteria need distinct names other than "
                             f"'enc' and '{PRIMARY}' (they prefix loss keys): {clashes}")

    @property
    def device(self):
        return self.pixel_mean.device

    # --- teacher -------------------------------------------------------------------------------
    @property
    def requires_teacher(self) -> bool:
        """True when the criterion, the encoder criterion, a variant's criterion, a group source, an
        extra-output criterion or a head reads the EMA teacher's pass (``requires_teacher``)."""
        users = [self.criterion, self.enc_criterion, *self.group_sources.values(), *self.extra_output_criteria.values(),
                 *self.heads.values(), *(variant.criterion for variant in self.variants.values())]
        return any(reads_teacher(m) for m in users)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher.module

    def attach_teacher(self, teacher: Optional[nn.Module]):
        """Use ``teacher`` (a frozen model of the same config, e.g. ``ModelEMA.module``) for the teacher pass.
        It is not a submodule: not saved, not optimized, not wrapped by DDP."""
        self._teacher = _Unregistered(teacher)

    # --- inputs --------------------------------------------------------------------------------
    def preprocess_images(self, batched_inputs):
        images = [(self.from_host(x["image"]).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        masks = torch.ones(images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.bool, device=self.device)
        for mask, (h, w) in zip(masks, images.image_sizes):
            mask[:h, :w] = False
        return images, masks

    def prepare_targets(self, batched_inputs, image_sizes, padded_size: Optional[Tuple[int, int]] = None):
        """Per image {"labels", "boxes" (normalised cxcywh)}, and "masks" (n, H, W) bool on the padded
        batch (``padded_size``, the extent of a mask head's logits) when the instances have ``gt_masks``."""
        targets = []
        for x, (h, w) in zip(batched_inputs, image_sizes):
            instances = x["instances"]  # normalised where they are (the host, from a data loader), then moved
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=instances.gt_boxes.tensor.device)
            boxes = box_xyxy_to_cxcywh(instances.gt_boxes.tensor / scale)
            target = {"labels": self.from_host(instances.gt_classes), "boxes": self.from_host(boxes)}
            if instances.has("gt_masks"):
                target["masks"] = self.from_host(padded_masks(instances.gt_masks, (h, w), padded_size or (h, w)))
            targets.append(target)
        return targets

    def from_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the model's device; from the host to a GPU through pinned memory without
        blocking (a copy from pageable memory makes the host wait for the GPU's queue)."""
        if tensor.device.type == "cpu" and self.device.type == "cuda":
            return (tensor if tensor.is_pinned() else tensor.pin_memory()).to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def extract_features(self, images, masks):
        """(the backbone's outputs by name, the neck's multi-scale features, their padding masks,
        their sine position embeddings)."""
        backbone_features = self.backbone(images.tensor)
        features = self.neck(backbone_features)
        level_masks = [F.interpolate(masks[None].float(), size=f.shape[-2:])[0].bool() for f in features]
        pos = [self.position_embedding(m).to(f.dtype) for f, m in zip(features, level_masks)]
        return backbone_features, features, level_masks, pos

    def encode_and_select(self, batched_inputs, indices: Optional[torch.Tensor] = None):
        """(images, encoder state, primary query selection) of a batch; the state keeps the backbone's
        outputs for heads that read image features (a mask head). ``indices``: the encoder tokens
        to select (two-stage), instead of the top-k of the model's own scores."""
        images, masks = self.preprocess_images(batched_inputs)
        backbone_features, *multi_scale = self.extract_features(images, masks)
        state = self.transformer.encode(*multi_scale)
        state.backbone_features = backbone_features
        return images, state, self.transformer.select_queries(state, indices=indices)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.training_losses(batched_inputs)[0]
        images, state, selection = self.encode_and_select(batched_inputs)
        variants = None if self.eval_variant is None else {self.eval_variant: self.variants[self.eval_variant]}
        starts = {name: s.queries for name, s in self.variant_selections(state, variants).items()}
        out = self.transformer.decode(selection.queries, state, variants=variants, variant_queries=starts)
        final = self.inference_predictions(out)
        per_query = {head.field: (partial(head.select, final, state) if hasattr(head, "select") else head(final, state))
                     for head in self.heads.values()}  # ``select``: outputs of the kept queries only
        finishers = [head.finish for head in self.heads.values() if hasattr(head, "finish")]
        return top_detections(final.logits, final.boxes, images.image_sizes, batched_inputs, self.select_box_nums_for_evaluation,
                              self.eval_nms_threshold, self.eval_pre_nms_topk, per_query, finishers, images.tensor.shape[-2:])

    @torch.no_grad()
    def detection_pass(self, batched_inputs: List[Dict], match: bool = True) -> DetectionPass:
        """The primary queries' pass on ``batched_inputs`` (no variants, no groups, no gradient), with the
        primary criterion's assignment of every decoder layer when ``match`` and the inputs have
        instances. An EMA teacher's forward (OD-DETR Sec. 3); run it on a model in eval mode."""
        images, state, selection = self.encode_and_select(batched_inputs)
        out = self.transformer.decode(selection.queries, state)
        targets = (self.prepare_targets(batched_inputs, images.image_sizes, images.tensor.shape[-2:])
                   if "instances" in batched_inputs[0] else None)
        matching = None
        if match and targets is not None:
            with torch.autocast(self.device.type, enabled=False):
                matching = [self.criterion.matcher(p.logits.float(), p.boxes.float(), targets) for p in out.layers]
        return DetectionPass(images.image_sizes, targets, state, selection, out, matching)

    def training_losses(self, batched_inputs: List[Dict]) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[Indices]]]:
        """(weighted losses, matching indices by name) of one training batch (see ``losses``)."""
        teacher = None
        if self.requires_teacher:
            if self.teacher is None:
                raise RuntimeError("this model's criteria read an EMA teacher, but none is attached: train with "
                                   "train_net.py (it attaches the train.ema model) or call model.attach_teacher(...)")
            teacher = self.teacher.detection_pass(batched_inputs)
        indices = teacher.selection.topk_indices if self.select_teacher_proposals and teacher is not None else None
        images, state, selection = self.encode_and_select(batched_inputs, indices)
        targets = self.prepare_targets(batched_inputs, images.image_sizes, images.tensor.shape[-2:])
        batch = TrainingBatch(batched_inputs, targets, images.image_sizes, state, selection, teacher,
                              self.num_boxes(targets, self.device), self.transformer,
                              self.variant_selections(state, self.variants))
        groups = self.make_groups(batch)
        starts = {name: s.queries for name, s in batch.variant_selections.items()}
        out = self.transformer.decode(selection.queries, state, variants=self.variants, groups=groups, variant_queries=starts)
        with torch.autocast(self.device.type, enabled=False):  # matching and losses in float32 (LossBook casts)
            losses, matching = self.losses(out, batch, groups)
        self.check_loss_keys(losses)
        return losses, matching

    def variant_selections(self, state: EncoderState, variants: Mapping[str, nn.Module]) -> Dict[str, QuerySelection]:
        """The own query selection of every variant in ``variants`` that has one."""
        return {name: variant.query_selection(self.transformer, state) for name, variant in (variants or {}).items()
                if variant.query_selection is not None}

    def make_groups(self, batch: TrainingBatch) -> Dict[str, QueryGroup]:
        """Every source's groups for the batch, named ``{source}_{key}`` (``{source}`` for the key "")."""
        groups = {}
        for name, source in self.group_sources.items():
            made = source(batch)
            if not isinstance(made, Mapping):
                raise TypeError(f"group source {name!r} returned a {type(made).__name__}: a GroupSource returns "
                                "{key: QueryGroup}, the same keys every step (a group without queries where there is nothing to supervise)")
            groups.update((f"{name}_{key}" if key != "" else name, group) for key, group in made.items())
        return groups

    def inference_predictions(self, out: DecoderOutput) -> LayerPredictions:
        """The predictions inference post-processes: the primary queries' (or ``eval_variant``'s) last decoder layer."""
        if self.eval_variant is None:
            if self.eval_score_fusion is not None:
                return replace(out.layers[-1], logits=self.eval_score_fusion([layer.logits for layer in out.layers]))
            return out.layers[-1]
        final = out.variants[self.eval_variant][-1]
        if final is None:
            raise ValueError(f"variant {self.eval_variant!r} has no layer variant in the last decoder layer")
        return final

    @staticmethod
    def num_boxes(targets, device):
        """GT boxes per process over the whole (distributed) batch, at least 1: the loss normalizer.
        Counted on the host (the targets' lengths); across processes one all-reduce, left on the
        device (a 0-d tensor divides the losses as well as a float, without a host sync)."""
        count = float(sum(len(t["labels"]) for t in targets))
        if comm.get_world_size() == 1:
            return max(count, 1.0)
        count = torch.tensor(count, device=device)
        torch.distributed.all_reduce(count)
        return (count / comm.get_world_size()).clamp(min=1.0)

    def losses(self, out: DecoderOutput, batch: TrainingBatch, groups: Optional[Dict[str, QueryGroup]] = None):
        """(weighted losses, matching indices): "primary" (one list entry per decoder layer), "enc", and
        one list per variant, query group and extra output under its name."""
        book = LossBook(batch, self.heads, len(out.layers))
        last = len(out.layers) - 1
        for i, layer in enumerate(out.layers):
            book.add_layer(self.criterion, layer, PRIMARY, "", "" if i == last else f"_{i}", i)
            for name, criterion in self.extra_output_criteria.items():
                extra = layer.extras.get(name)
                if isinstance(extra, LayerPredictions):
                    book.add(criterion, extra.logits, extra.boxes, extra.valid, name, f"{name}/", f"_{i}", i)
                else:
                    book.skip(name)
        self.encoder_losses(book, batch)
        for name, layers in out.variants.items():
            variant = self.variants[name]
            for i, layer in enumerate(layers):
                if layer is not None:
                    book.add_layer(variant.criterion, layer, name, f"{name}/", f"_{i}", i, variant.loss_scale)
                else:
                    book.skip(name)
        for name, layers in out.groups.items():
            group = (groups or {})[name]
            for i, layer in enumerate(layers):
                book.add_layer(group.criterion, layer, name, f"{name}/", f"_{i}", i, group.loss_scale, group)
        self.variant_group_losses(book, out, groups or {})
        return book.losses, book.matching

    def variant_group_losses(self, book: LossBook, out: DecoderOutput, groups: Dict[str, QueryGroup]):
        """Every variant's ``group_losses``: the group's criterion on the variant's predictions for its queries."""
        for name, variant in self.variants.items():
            for group_name in variant.group_losses:
                if group_name not in groups:
                    raise ValueError(f"model.variants[{name!r}].group_losses names {group_name!r}, which is not one of this "
                                     f"step's query groups {sorted(groups)}")
                if group_name not in out.variant_groups.get(name, {}):
                    raise ValueError(f"model.variants[{name!r}].group_losses names {group_name!r}, a group decoded apart from "
                                     "the primary queries (its references are of another kind): no variant carries it")
                group, key = groups[group_name], f"{name}/{group_name}"
                for i, layer in enumerate(out.variant_groups[name][group_name]):
                    if layer is None:
                        book.skip(key)
                        continue
                    book.add_layer(group.criterion, layer, key, f"{key}/", f"_{i}", i, variant.loss_scale * group.loss_scale, group)

    def encoder_losses(self, book: LossBook, batch: TrainingBatch):
        """The two-stage encoder loss of the primary selection ("enc") and of every variant's own one."""
        targets = batch.targets
        if self.transformer.enc_class_agnostic:
            targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        selections = [("enc", "", batch.selection)] + [(f"{name}/enc", f"{name}/", s) for name, s in batch.variant_selections.items()]
        for name, prefix, selection in selections:
            enc = selection.encoder_predictions
            if enc is None:
                continue
            indices = None
            if self.enc_anchor_matcher is not None:  # pairs from the proposal anchors, not the predictions
                indices = self.enc_anchor_matcher(enc["logits"], enc["anchors"], targets, valid=enc.get("valid"))
            book.add(self.enc_criterion or self.criterion, enc["logits"], enc["boxes"], enc.get("valid"), name, prefix, "_enc",
                     "enc", self.enc_loss_weight, indices=indices, targets=targets)

    def check_loss_keys(self, losses: Dict[str, torch.Tensor]):
        """Every training step (in training mode) gives the first step's loss keys: detectron2 averages
        metrics across processes by the first process's keys, so a key missing on one process ends a
        DDP run."""
        if not self.training:  # the training-only parts of some extensions (exit heads) run in training mode only
            return
        keys = frozenset(losses)
        if self._loss_keys is None:
            self._loss_keys = keys
        elif keys != self._loss_keys:
            raise RuntimeError(f"the loss keys changed from one training step to the next (missing: {sorted(self._loss_keys - keys)}, "
                               f"new: {sorted(keys - self._loss_keys)}): every extension must give the same keys every step "
                               "(a group source: the same groups, empty where there is nothing to supervise)")

"""``DeformableDETR``: the Detectron2 meta-architecture that wraps the shared transformer."""
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from torch import nn
from torchvision.ops import batched_nms

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .criterion import LossContext, SetCriterion
from .decoder import DecoderOutput, LayerPredictions
from .groups import QueryGroup
from .structures import EncoderState
from .transformer import DeformableTransformer, QuerySelection

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DetectionPass:
    """One pass of the primary queries with what each stage computed (an EMA teacher's forward, and
    what matching-stability metrics read): per-layer queries, boxes and logits in ``decoder``, the
    initial queries and (two-stage) top-k proposal indices in ``selection``, and per decoder layer the
    Hungarian assignment to ``targets`` (when the inputs have instances)."""

    image_sizes: List[Tuple[int, int]]
    targets: Optional[List[Dict[str, torch.Tensor]]]
    state: EncoderState
    selection: QuerySelection
    decoder: DecoderOutput
    matching: Optional[List[Indices]] = None


@dataclass
class TrainingBatch:
    """What query-group sources and criteria may read in a training step (``LossContext.batch``)."""

    inputs: List[Dict]
    targets: List[Dict[str, torch.Tensor]]
    image_sizes: List[Tuple[int, int]]
    state: EncoderState
    selection: QuerySelection
    teacher: Optional[DetectionPass] = None
    num_boxes: float = 1.0
    transformer: Optional[DeformableTransformer] = None  # the student's (``queries_at`` builds new queries)
    route_selections: Dict[str, QuerySelection] = field(default_factory=dict)  # routes with their own query selection


class _Unregistered:
    """Holds a module without making it a submodule (not in ``state_dict``, ``parameters`` or DDP);
    a deep copy holds nothing, so copying a student does not copy its teacher."""

    def __init__(self, module):
        self.module = module

    def __deepcopy__(self, memo):
        return _Unregistered(None)


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Backbone -> neck -> deformable transformer -> per-layer heads.

    Training returns a dict of weighted losses: the primary (one-to-one) queries on every decoder
    layer (``loss_class`` for the last layer, ``loss_class_{i}`` for layer i), the encoder's
    two-stage proposals (``loss_class_enc``, scaled by ``enc_loss_weight``, with ``enc_criterion``,
    default ``criterion``; class-agnostic targets when the transformer's proposal head is; pairs from
    ``enc_anchor_matcher`` on the proposal anchors when given, e.g. ``HungarianMatcher(cost_class=0)``
    as Mr. DETR's public code matches, else from the criterion's matcher on the predictions), and under
    ``{name}/`` every training route in ``routes``, every query group that ``query_groups`` makes for
    the batch, and every extra layer output with a criterion in ``extra_output_criteria``. Inference
    returns Detectron2 ``Instances`` in original image coordinates: the top
    ``select_box_nums_for_evaluation`` of queries x classes.

    Training-only extensions (none exists at inference; inference costs what the baseline costs):
    * ``routes``: ``TrainingRoute``s, variants of the decoder layers (``detr_plus.modeling.routes``);
      a route with a ``query_selection`` starts from its own top-k proposals and gets its own encoder
      loss (``{name}/loss_*_enc``, same criterion and weight as the primary one);
    * ``query_groups``: modules called with the ``TrainingBatch``, each returning a ``QueryGroup``
      (or None) decoded beside the primary queries;
    * a teacher: when a criterion or group source has ``requires_teacher = True``, the trainer
      attaches the EMA model (``attach_teacher``) and every step runs its ``detection_pass`` on the
      same batch, without gradient, into ``TrainingBatch.teacher``.

    Evaluating a training route (default off):
    * ``eval_route``: name of a route whose last-layer predictions are evaluated instead (the decoder
      then runs that one route in eval mode too), e.g. a one-to-many route;
    * ``eval_nms_threshold``: class-wise NMS at this IoU over the top ``eval_pre_nms_topk``
      (query, class) pairs, then the top ``select_box_nums_for_evaluation`` are kept (one-to-many
      predictions have duplicates by design: LoRA-DETR Table 5 "Aux. w. NMS", Mr. DETR "w/ NMS").
    """

    def __init__(self, *, backbone, neck, position_embedding, transformer: DeformableTransformer, criterion: SetCriterion,
                 pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375), input_format="RGB",
                 size_divisibility=32, select_box_nums_for_evaluation=100, enc_loss_weight=1.0,
                 enc_criterion: Optional[nn.Module] = None, enc_anchor_matcher=None, routes: Optional[Dict[str, nn.Module]] = None,
                 query_groups: Optional[Dict[str, nn.Module]] = None, extra_output_criteria: Optional[Dict[str, nn.Module]] = None,
                 eval_route: Optional[str] = None, eval_nms_threshold: Optional[float] = None, eval_pre_nms_topk: int = 1000):
        super().__init__()
        self.backbone, self.neck, self.position_embedding = backbone, neck, position_embedding
        self.transformer, self.criterion, self.enc_criterion = transformer, criterion, enc_criterion
        self.enc_anchor_matcher = enc_anchor_matcher
        self.routes = nn.ModuleDict(routes or {})
        self.query_groups = nn.ModuleDict(query_groups or {})
        self.extra_output_criteria = nn.ModuleDict(extra_output_criteria or {})
        names = list(self.routes) + list(self.query_groups) + list(self.extra_output_criteria)
        clashes = sorted({n for n in names if names.count(n) > 1} | ({"enc"} & set(names)))
        if clashes:
            raise ValueError(f"routes, query_groups and extra_output_criteria need distinct names other than 'enc' (loss prefixes): {clashes}")
        if eval_route is not None and eval_route not in self.routes:
            raise ValueError(f"eval_route={eval_route!r} is not one of the model's routes {list(self.routes)}")
        self.eval_route, self.eval_nms_threshold, self.eval_pre_nms_topk = eval_route, eval_nms_threshold, eval_pre_nms_topk
        self.input_format, self.size_divisibility = input_format, size_divisibility
        self.select_box_nums_for_evaluation, self.enc_loss_weight = select_box_nums_for_evaluation, enc_loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._teacher = _Unregistered(None)

    @property
    def device(self):
        return self.pixel_mean.device

    # --- teacher -------------------------------------------------------------------------------
    @property
    def requires_teacher(self) -> bool:
        """True when a criterion or query-group source reads the EMA teacher's pass."""
        users = chain([self.criterion, self.enc_criterion], self.query_groups.values(), self.extra_output_criteria.values(),
                      (route.criterion for route in self.routes.values()))
        return any(getattr(m, "requires_teacher", False) for m in users)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher.module

    def attach_teacher(self, teacher: Optional[nn.Module]):
        """Use ``teacher`` (a frozen model of the same config, e.g. ``ModelEMA.module``) for the teacher pass.
        It is not a submodule: not saved, not optimized, not wrapped by DDP."""
        self._teacher = _Unregistered(teacher)

    # --- inputs --------------------------------------------------------------------------------
    def preprocess_images(self, batched_inputs):
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        masks = torch.ones(images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.bool, device=self.device)
        for mask, (h, w) in zip(masks, images.image_sizes):
            mask[:h, :w] = False
        return images, masks

    def prepare_targets(self, batched_inputs, image_sizes):
        targets = []
        for x, (h, w) in zip(batched_inputs, image_sizes):
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(instances.gt_boxes.tensor / scale)
            targets.append({"labels": instances.gt_classes, "boxes": boxes})
        return targets

    def extract_features(self, images, masks):
        """Multi-scale features, their padding masks and sine position embeddings."""
        features = self.neck(self.backbone(images.tensor))
        level_masks = [F.interpolate(masks[None].float(), size=f.shape[-2:])[0].bool() for f in features]
        pos = [self.position_embedding(m).to(f.dtype) for f, m in zip(features, level_masks)]
        return features, level_masks, pos

    def encode_and_select(self, batched_inputs):
        """(images, encoder state, primary query selection) of a batch."""
        images, masks = self.preprocess_images(batched_inputs)
        state = self.transformer.encode(*self.extract_features(images, masks))
        return images, state, self.transformer.select_queries(state)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.training_losses(batched_inputs)[0]
        images, state, selection = self.encode_and_select(batched_inputs)
        routes = self.decoder_routes()
        starts = {name: s.queries for name, s in self.route_selections(state, routes or {}).items()}
        out = self.transformer.decode(selection.queries, state, routes=routes, route_queries=starts)
        final = self.inference_predictions(out)
        return self.inference(final.logits, final.boxes, images.image_sizes, batched_inputs)

    @torch.no_grad()
    def detection_pass(self, batched_inputs: List[Dict], match: bool = True) -> DetectionPass:
        """The primary queries' pass on ``batched_inputs`` (no routes, no groups, no gradient), with the
        primary criterion's assignment of every decoder layer when ``match`` and the inputs have
        instances. An EMA teacher's forward (OD-DETR Sec. 3); run it on a model in eval mode."""
        images, state, selection = self.encode_and_select(batched_inputs)
        out = self.transformer.decode(selection.queries, state)
        targets = self.prepare_targets(batched_inputs, images.image_sizes) if "instances" in batched_inputs[0] else None
        matching = None
        if match and targets is not None:
            matching = [self.criterion.matcher(p.logits, p.boxes, targets) for p in out.layers]
        return DetectionPass(images.image_sizes, targets, state, selection, out, matching)

    def training_losses(self, batched_inputs: List[Dict]) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[Indices]]]:
        """(weighted losses, matching indices by loss prefix) of one training batch (see ``losses``)."""
        images, state, selection = self.encode_and_select(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images.image_sizes)
        teacher = None
        if self.requires_teacher:
            if self.teacher is None:
                raise RuntimeError("this model's criteria read an EMA teacher, but none is attached: train with "
                                   "train_net.py (it attaches the train.ema model) or call model.attach_teacher(...)")
            teacher = self.teacher.detection_pass(batched_inputs)
        batch = TrainingBatch(batched_inputs, targets, images.image_sizes, state, selection, teacher,
                              self.num_boxes(targets, self.device), self.transformer)
        groups = self.make_query_groups(batch)
        batch.route_selections = self.route_selections(state, self.routes)
        route_queries = {name: s.queries for name, s in batch.route_selections.items()}
        out = self.transformer.decode(selection.queries, state, routes=self.routes, groups=groups, route_queries=route_queries)
        return self.losses(out, batch, groups)

    def route_selections(self, state: EncoderState, routes: Mapping[str, nn.Module]) -> Dict[str, QuerySelection]:
        """The own query selection of every route in ``routes`` that has one (``TrainingRoute.query_selection``)."""
        return {name: route.query_selection(self.transformer, state) for name, route in routes.items()
                if getattr(route, "query_selection", None) is not None}

    def make_query_groups(self, batch: TrainingBatch) -> Dict[str, QueryGroup]:
        """Every source's group(s) for the batch: a source returns a ``QueryGroup``, None, or a dict of
        groups (one per teacher stage, say), named ``{source}_{key}``."""
        groups = {}
        for name, source in self.query_groups.items():
            made = source(batch)
            if isinstance(made, QueryGroup):
                groups[name] = made
            elif made is not None:
                groups.update((f"{name}_{key}", group) for key, group in made.items())
        return groups

    def decoder_routes(self) -> Optional[Dict[str, nn.Module]]:
        """The routes the decoder runs: all in training, none at inference (inference costs what the
        baseline costs) unless ``eval_route`` names one to evaluate."""
        if self.training:
            return self.routes
        return None if self.eval_route is None else {self.eval_route: self.routes[self.eval_route]}

    def inference_predictions(self, out: DecoderOutput) -> LayerPredictions:
        """The predictions inference post-processes: the primary route's (or ``eval_route``'s) last decoder layer."""
        if self.eval_route is None:
            return out.layers[-1]
        final = out.routes[self.eval_route][-1]
        if final is None:
            raise ValueError(f"route {self.eval_route!r} has no branch in the last decoder layer")
        return final

    @staticmethod
    def num_boxes(targets, device):
        """GT boxes over the whole (distributed) batch, at least 1: the loss normalizer."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(count)
            count = count / comm.get_world_size()
        return count.clamp(min=1.0).item()

    def losses(self, out: DecoderOutput, batch: TrainingBatch, groups: Optional[Dict[str, QueryGroup]] = None):
        """(weighted losses, matching indices): "primary" (one list entry per decoder layer), "enc", and
        one list per route, query group and extra output under its name."""
        targets, num_boxes, groups = batch.targets, batch.num_boxes, groups or {}
        losses: Dict[str, torch.Tensor] = {}
        matching: Dict[str, List] = {}

        def add(criterion, predictions, key, prefix, suffix, layer, scale=1.0, group=None, indices=None, targets=targets):
            context = LossContext(layer=layer, name=key, batch=batch, group=group, matching=matching)
            terms, matched = criterion(predictions["logits"], predictions["boxes"], targets, num_boxes, indices=indices,
                                       valid=predictions.get("valid"), context=context)
            losses.update({f"{prefix}{k}{suffix}": v * scale for k, v in terms.items()})
            matching.setdefault(key, []).append(matched)

        last = len(out.layers) - 1
        for i, layer in enumerate(out.layers):
            add(self.criterion, vars(layer), "primary", "", "" if i == last else f"_{i}", i)
            for name, criterion in self.extra_output_criteria.items():
                extra = layer.extras.get(name)
                if isinstance(extra, LayerPredictions):
                    add(criterion, vars(extra), name, f"{name}/", f"_{i}", i)
        enc_targets = targets
        if self.transformer.enc_class_agnostic:
            enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        selections = [("enc", "", batch.selection)] + [(f"{name}/enc", f"{name}/", s) for name, s in batch.route_selections.items()]
        for key, prefix, selection in selections:
            enc = selection.encoder_predictions
            if enc is not None:
                indices = None
                if self.enc_anchor_matcher is not None:  # pairs from the proposal anchors, not the predictions
                    indices = self.enc_anchor_matcher(enc["logits"], enc["anchors"], enc_targets, valid=enc.get("valid"))
                add(self.enc_criterion or self.criterion, enc, key, prefix, "_enc", "enc", self.enc_loss_weight,
                    indices=indices, targets=enc_targets)
        for name, layers in out.routes.items():
            route = self.routes[name]
            for i, layer in enumerate(layers):
                if layer is not None:
                    add(route.criterion, vars(layer), name, f"{name}/", f"_{i}", i, route.loss_scale)
        for name, layers in out.groups.items():
            group = groups[name]
            for i, layer in enumerate(layers):
                add(group.criterion, vars(layer), name, f"{name}/", f"_{i}", i, group.loss_scale, group, group.indices)
        return losses, matching

    def inference(self, logits, boxes, image_sizes, batched_inputs):
        """Top-k over queries x classes (Deformable DETR's post-processing), boxes back to input size;
        k = ``select_box_nums_for_evaluation`` (after NMS with ``eval_nms_threshold``)."""
        num_classes = logits.shape[-1]
        num_select = self.select_box_nums_for_evaluation
        nms = self.eval_nms_threshold is not None
        k = min(max(self.eval_pre_nms_topk, num_select) if nms else num_select, logits.shape[1] * num_classes)
        scores, flat = logits.sigmoid().flatten(1).topk(k, dim=1)
        query, labels = flat // num_classes, flat % num_classes
        boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
        results = []
        for i, (h, w) in enumerate(image_sizes):
            instances = Instances((h, w))
            instances.pred_boxes = Boxes(boxes[i] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
            instances.pred_boxes.clip((h, w))
            instances.scores = scores[i]
            instances.pred_classes = labels[i]
            x = batched_inputs[i]
            instances = detector_postprocess(instances, x.get("height", h), x.get("width", w))
            if nms:
                keep = batched_nms(instances.pred_boxes.tensor, instances.scores, instances.pred_classes, self.eval_nms_threshold)
                instances = instances[keep[:num_select]]
            results.append({"instances": instances})
        return results

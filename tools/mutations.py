"""The mutation audit's list of targeted mutations (``tools/mutation_audit.py``; docs/mutation_audit.md).

Each entry breaks ONE paper formula or core rule in a plausible way (a weight swapped, an exponent
dropped, a detach removed, a boundary moved) and names the tests that should notice. Fields:

* ``id``: a short slug (unique);
* ``path``: the file, relative to the repository root;
* ``find``: a snippet of that file that must occur in it exactly once (``--check`` verifies it);
* ``replace``: the mutated snippet (the file must still compile);
* ``rule``: what the mutation breaks: the paper and its equation / table, or the core rule;
* ``tests``: pytest arguments that select the tests meant to catch it (files, node ids, ``-k``
  expressions); kept small, seconds to a minute, because each mutation runs its own selection.

Plain data on purpose: the runner turns each dict into its ``Mutation`` record, and a new entry
needs nothing but a snippet read from the file and the tests found by grepping for its names.
"""

MATCHER = "detr_plus/modeling/matcher.py"
LOSSES = "detr_plus/modeling/losses.py"
CRITERION = "detr_plus/modeling/criterion.py"
BOX_OPS = "detr_plus/layers/box_ops.py"
DECODER = "detr_plus/modeling/decoder.py"
EMA = "detr_plus/engine/ema.py"
HOOKS = "detr_plus/engine/hooks.py"
DENOISING = "detr_plus/modeling/denoising.py"
GROUPS = "detr_plus/modeling/groups.py"
HYBRID = "detr_plus/modeling/hybrid.py"
MS_DEFORM_ATTN = "detr_plus/layers/ms_deform_attn.py"
POSITION_ENCODING = "detr_plus/layers/position_encoding.py"
CONDITIONAL = "detr_plus/modeling/conditional.py"
BLOCKS = "detr_plus/modeling/blocks.py"
GATHER = "detr_plus/modeling/gather.py"
EEQR = "projects/qr_detr/modeling/eeqr.py"
OD_MD = "projects/od_detr/modeling/matching_distillation.py"
OD_PD = "projects/od_detr/modeling/prediction_distillation.py"
OD_AG = "projects/od_detr/modeling/auxiliary_groups.py"
MR_INSTRUCTIVE = "projects/mr_detr/modeling/instructive_attention.py"
MR_ROUTES = "projects/mr_detr/modeling/routes.py"
MR_FUSION = "projects/mr_detr/modeling/score_fusion.py"
LORA = "projects/lora_detr/modeling/lora.py"
LORA_BRANCHES = "projects/lora_detr/modeling/branches.py"
LORA_CRITERION = "projects/lora_detr/modeling/criterion.py"

# Test files and frequently used selections.
T_MATCHER = "tests/test_matcher.py"
T_LOSSES = "tests/test_losses.py"
T_CRITERION = "tests/test_criterion.py"
T_ENGINE = "tests/test_engine.py"
T_DENOISING = "tests/test_denoising.py"
T_HYBRID = "tests/test_hybrid.py"
T_MSDA = "tests/test_ms_deform_attn.py"
T_GEOMETRY = "tests/test_geometry.py"
T_CONDITIONAL = "tests/test_conditional_detr.py"
T_QR = "projects/qr_detr/tests/test_qr_detr.py"
T_OD = "projects/od_detr/tests/test_od_detr.py"
T_MR = "projects/mr_detr/tests/test_mr_detr.py"
T_LORA = "projects/lora_detr/tests/test_lora_detr.py"

HUNGARIAN_VS_BRUTE_FORCE = f"{T_MATCHER}::test_hungarian_matches_brute_force"
DN_LAYOUT = f"{T_DENOISING}::test_layout_targets_and_attention_mask_on_a_batch_with_unequal_gt_counts"
MSDA_GEOMETRY = f"{T_MSDA}::test_module_sampling_geometry"
QR_EQUATIONS = f"{T_QR}::test_each_wrapper_matches_its_equation"
OD_MD_HAND = f"{T_OD}::test_matching_distillation_hand_values"
OD_PD_HAND = f"{T_OD}::test_prediction_distillation_hand_values"
MR_ATTENTION = f"{T_MR}::test_instructive_attention_weights_and_masks"
LORA_VFL_HAND = f"{T_LORA}::test_vfl_plus_equals_a_hand_computation_for_both_branches"

MUTATIONS = [
    # --- core: Hungarian matcher costs (Deformable DETR: class 2 x focal cost, L1 5, GIoU 2) ---------
    dict(id="matcher-focal-cost-sum", path=MATCHER,
         find="return pos - neg", replace="return pos + neg",
         rule="Deformable-DETR focal class cost = alpha (1-p)^gamma (-log p) MINUS (1-alpha) p^gamma (-log(1-p))",
         tests=[HUNGARIAN_VS_BRUTE_FORCE]),
    dict(id="matcher-focal-cost-alpha", path=MATCHER,
         find="neg = (1 - a) * p.pow(g)", replace="neg = a * p.pow(g)",
         rule="focal class cost: the negative term is weighted 1 - alpha (alpha 0.25)",
         tests=[HUNGARIAN_VS_BRUTE_FORCE]),
    dict(id="matcher-giou-cost-sign", path=MATCHER,
         find="c_giou = -generalized_box_iou(", replace="c_giou = generalized_box_iou(",
         rule="matching cost: cost_giou x (-GIoU), a better overlap is cheaper",
         tests=[HUNGARIAN_VS_BRUTE_FORCE]),
    dict(id="matcher-l1-cost-euclidean", path=MATCHER,
         find="*gt_boxes.shape), p=1)", replace="*gt_boxes.shape), p=2)",
         rule="matching cost: cost_bbox x L1 distance of the cxcywh boxes (not Euclidean)",
         tests=[HUNGARIAN_VS_BRUTE_FORCE]),
    dict(id="pair-costs-giou-sign", path=MATCHER,
         find="c_giou = paired_giou_loss(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt)) - 1",
         replace="c_giou = 1 - paired_giou_loss(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt))",
         rule="pair_costs (OD-DETR Eq. 4 ranking) equal the cost-matrix entries: -GIoU = (1 - GIoU) - 1",
         tests=[f"{T_CRITERION}::test_pair_costs_are_the_cost_matrix_entries"]),

    # --- core: one-to-many matcher (LoRA-DETR Eq. 7, Mr. DETR's rules) --------------------------------
    dict(id="o2m-quality-weights-swapped", path=MATCHER,
         find="return class_weight * cls + (1 - class_weight) * iou",
         replace="return (1 - class_weight) * cls + class_weight * iou",
         rule="LoRA-DETR Eq. 7 / Mr. DETR: M = 0.3 class probability + 0.7 IoU",
         tests=[f"{T_MATCHER}::test_matching_quality_hand_values"]),
    dict(id="o2m-threshold-strict", path=MATCHER,
         find="candidate = ~is_top1 & (best_m >= self.threshold)",
         replace="candidate = ~is_top1 & (best_m > self.threshold)",
         rule="one-to-many rule 2: a query is a candidate iff its best M >= tau (0.4), the boundary included",
         tests=[T_MATCHER, "-k", "one_to_many"]),
    dict(id="o2m-topk-ignores-top1", path=MATCHER,
         find="keep = candidate & (rank < self.topk - has_top1[best_gt])",
         replace="keep = candidate & (rank < self.topk)",
         rule="one-to-many rule 3: at most k positives per GT, its kept top-1 query counted",
         tests=[f"{T_MATCHER}::test_one_to_many_threshold_topk_and_top1_below_threshold"]),
    dict(id="o2m-cap-ignores-top1", path=MATCHER,
         find="- is_top1.sum()).clamp(min=0)", replace=").clamp(min=0)",
         rule="one-to-many rule 4: positives capped at 0.25 x queries, the top-1 pairs counted (and kept first)",
         tests=[f"{T_MATCHER}::test_one_to_many_positive_cap"]),
    dict(id="o2m-top1-tie-to-higher-gt", path=MATCHER,
         find='reduce="amin")', replace='reduce="amax")',
         rule="one-to-many rule 1: a query that is the top-1 of several GTs goes to the lowest GT index",
         tests=[f"{T_MATCHER}::test_one_to_many_top1_overrides_and_gt_tie"]),
    dict(id="o2m-dynamic-k-uncapped", path=MATCHER,
         find="taken = self._column_rank(quality) < counts.clamp(max=self.topk)[None]",
         replace="taken = self._column_rank(quality) < counts[None]",
         rule="Mr. DETR's dynamic k: GT j takes its top-min(c_j, k) queries",
         tests=[f"{T_MATCHER}::test_one_to_many_dynamic_k_rules_on_a_hand_made_matrix"]),

    # --- core: losses (focal, VFL+, QFL, multi-target QFL) and their normalisation -------------------
    dict(id="focal-alpha-flipped", path=LOSSES,
         find="alpha=alpha, gamma=gamma,", replace="alpha=1 - alpha, gamma=gamma,",
         rule="focal loss (Lin et al. Eq. 5): alpha (0.25) weighs the positives, 1 - alpha the negatives",
         tests=[f"{T_LOSSES}::test_sigmoid_focal_loss_hand_values"]),
    dict(id="vfl-plus-negatives-weighted-by-p", path=LOSSES,
         find="neg_weight = torch.exp(gamma * F.logsigmoid(logits))",
         replace="neg_weight = torch.exp(F.logsigmoid(logits))",
         rule="LoRA-DETR Eq. 8 (VFL+): negatives weighted p^gamma, gamma 1.5",
         tests=[f"{T_LOSSES}::test_vfl_plus_positive_and_negative"]),
    dict(id="vfl-plus-positives-focal-weighted", path=LOSSES,
         find="loss = torch.where(positive_mask, bce, neg_weight * bce)", replace="loss = neg_weight * bce",
         rule="LoRA-DETR Eq. 8 (VFL+): positives are plain BCE toward the soft target s (no p^gamma factor)",
         tests=[f"{T_LOSSES}::test_vfl_plus_positive_and_negative"]),
    dict(id="vfl-plus-matching-score-weights", path=LOSSES,
         find="score = self.quality_class_weight * matched_logits.float().sigmoid() + (1 - self.quality_class_weight) * iou",
         replace="score = (1 - self.quality_class_weight) * matched_logits.float().sigmoid() + self.quality_class_weight * iou",
         rule="LoRA-DETR Eq. 7-8: an o2m positive's soft target s = M = 0.3 p + 0.7 IoU",
         tests=[LORA_VFL_HAND]),
    dict(id="qfl-without-modulating-exponent", path=LOSSES,
         find=".abs().pow(gamma) * bce", replace=".abs() * bce",
         rule="OD-DETR Eq. 2 (QFL): modulating factor |t - s|^gamma, gamma 2",
         tests=[f"{T_LOSSES}::test_quality_focal_loss_hand_values"]),
    dict(id="mqfl-merge-by-max", path=LOSSES,
         find="merged = torch.where(mask_a.bool(), target_a, target_b)",
         replace="merged = torch.maximum(target_a, target_b)",
         rule="OD-DETR Eq. 3 (multi-target QFL): where both labels share a class the student's own target t is kept",
         tests=[f"{T_LOSSES}::test_multi_target_qfl_two_classes_one_class_and_teacher_only"]),
    dict(id="criterion-class-loss-mean", path=CRITERION,
         find='"class": class_loss.sum() / num_boxes', replace='"class": class_loss.mean()',
         rule="Deformable DETR criterion: every loss term is summed and divided by the number of GT boxes",
         tests=[f"{T_CRITERION}::test_class_targets_from_two_assignments_hand_values"]),
    dict(id="criterion-giou-not-normalised", path=CRITERION,
         find='"giou": giou.sum() / num_boxes', replace='"giou": giou.sum()',
         rule="Deformable DETR criterion: the GIoU term is divided by the number of GT boxes",
         tests=[f"{T_CRITERION}::test_per_pair_box_and_class_weights_hand_values"]),
    dict(id="criterion-later-assignment-wins", path=CRITERION,
         find="for k in reversed(range(len(class_indices))):", replace="for k in range(len(class_indices)):",
         rule="OD-DETR Eq. 3: where two assignments label the same (query, class), the first (own) target wins",
         tests=[f"{T_CRITERION}::test_class_targets_from_two_assignments_hand_values"]),
    dict(id="giou-without-enclosing-term", path=BOX_OPS,
         find="return 1 - (iou - (enclosing - union) / (enclosing + eps))", replace="return 1 - iou",
         rule="GIoU loss (Rezatofighi et al. Alg. 1): 1 - (IoU - |C - (A u B)| / |C|)",
         tests=[f"{T_LOSSES}::test_giou_box_loss_hand_values"]),
    dict(id="iou-union-counts-intersection-twice", path=BOX_OPS,
         find="union = area1 + area2 - inter", replace="union = area1 + area2",
         rule="IoU = |A n B| / |A u B| (the soft targets of VFL+ / QFL, OD-DETR's IoU')",
         tests=[f"{T_LOSSES}::test_box_ops_helpers"]),

    # --- core: iterative box refinement, look forward twice ---------------------------------------------
    dict(id="refine-without-inverse-sigmoid", path=DECODER,
         find="offset = inverse_sigmoid(reference, eps)", replace="offset = reference",
         rule="Deformable DETR Sec. A.4: b_i = sigmoid(delta_i + sigmoid^-1(b_(i-1)))",
         tests=["tests/test_dino_decoder.py::test_without_output_norm_the_step_is_the_deformable_one"]),
    dict(id="refine-2d-reference-offsets-size", path=DECODER,
         find="offset = F.pad(offset, (0, 2))", replace="offset = F.pad(offset, (2, 0))",
         rule="Deformable DETR Sec. A.4: a 2-d reference point offsets the centre only, sigmoid(head + [sigmoid^-1(p), 0, 0])",
         tests=["tests/test_model.py::test_published_single_stage_queries_and_static_positions"]),
    dict(id="look-forward-twice-detached", path=DECODER,
         find="boxes = refine_boxes(delta, stream.reference_for_grad, eps)",
         replace="boxes = refine_boxes(delta, stream.reference, eps)",
         rule="DINO Sec. 3.5 look forward twice: layer i's box loss reaches layer i-1's refinement",
         tests=["tests/test_model.py::test_look_forward_twice_reaches_one_refinement_back"]),
    dict(id="next-reference-not-detached", path=DECODER,
         find="following = refined.detach()", replace="following = refined",
         rule="Deformable DETR / DINO: the next layer's input reference is detached (never more than one refinement back)",
         tests=["tests/test_model.py::test_look_forward_twice_reaches_one_refinement_back"]),

    # --- core: EMA (OD-DETR's teacher), warm-up, Stop Update ----------------------------------------------
    dict(id="ema-weights-swapped", path=EMA,
         find="torch._foreach_add_(shadow, self._sources(model), alpha=1 - decay)",
         replace="torch._foreach_add_(shadow, self._sources(model), alpha=decay)",
         rule="EMA update: ema = decay x ema + (1 - decay) x weights (OD-DETR Sec. 3.1 teacher)",
         tests=[f"{T_ENGINE}::test_ema_update_matches_hand_computation"]),
    dict(id="ema-warmup-ramp-inverted", path=EMA,
         find="return self.decay * (1 - math.exp(-self.updates / self.warmup_iters))",
         replace="return self.decay * math.exp(-self.updates / self.warmup_iters)",
         rule="EMA warm-up: the decay ramps up as decay x (1 - exp(-updates / warmup_iters))",
         tests=[f"{T_ENGINE}::test_ema_warmup_decay"]),
    dict(id="ema-decay-before-count", path=EMA,
         find="self.updates += 1\n        decay = self.current_decay()",
         replace="decay = self.current_decay()\n        self.updates += 1",
         rule="EMA warm-up: update n uses the decay after n updates (off by one)",
         tests=[f"{T_ENGINE}::test_ema_warmup_decay"]),
    dict(id="stop-update-one-iteration-late", path=HOOKS,
         find="self.trainer.iter >= self.stop_update_iter", replace="self.trainer.iter > self.stop_update_iter",
         rule="OD-DETR Stop Update (Table 5): no EMA update from stop_update_iter on (exclusive bound)",
         tests=[f"{T_ENGINE}::test_ema_hook_stops_updating"]),
    dict(id="stop-update-at-lr-plateau", path=HOOKS,
         find="if value < previous:", replace="if value <= previous:",
         rule="OD-DETR Stop Update: the first iteration whose LR is LOWER than the one before (a plateau is no decay)",
         tests=[f"{T_ENGINE}::test_stop_update_at_the_first_lr_decay_follows_max_iter"]),

    # --- core: contrastive denoising (DINO Sec. 3.2) and group masks -------------------------------------
    dict(id="dn-groups-count-negatives", path=DENOISING,
         find="max(1, dn_number // largest_gt_count)", replace="max(1, dn_number // (2 * largest_gt_count))",
         rule="DINO: G = dn_number // (the batch's largest GT count), at least 1",
         tests=[f"{T_DENOISING}::test_group_count_is_dn_number_over_the_largest_gt_count"]),
    dict(id="dn-label-noise-not-halved", path=DENOISING,
         find="< label_noise_ratio * 0.5", replace="< label_noise_ratio",
         rule="DINO public code: label noise ratio 0.5 flips a label with probability 0.25",
         tests=[f"{T_DENOISING}::test_label_noise_flips_a_quarter_of_the_labels_at_ratio_one_half"]),
    dict(id="dn-negative-noise-from-zero", path=DENOISING,
         find="magnitude = torch.rand(boxes.shape, device=boxes.device) + negative[..., None].to(boxes.dtype)",
         replace="magnitude = torch.rand(boxes.shape, device=boxes.device) * (1 + negative[..., None].to(boxes.dtype))",
         rule="DINO Sec. 3.2: positive noise in [0, lambda), negative noise in [lambda, 2 lambda)",
         tests=[f"{T_DENOISING}::test_positive_noise_stays_inside_the_scale_and_negative_noise_between_it_and_twice_it"]),
    dict(id="dn-group-mask-splits-halves", path=DENOISING,
         find="per_group = size // groups if groups else 0", replace="per_group = size // (2 * groups) if groups else 0",
         rule="DINO attention mask: a group's positives and negatives see each other, groups do not",
         tests=[DN_LAYOUT]),
    dict(id="dn-positive-index-stride", path=DENOISING,
         find="starts = torch.arange(groups, device=device) * 2 * n_max",
         replace="starts = torch.arange(groups, device=device) * n_max",
         rule="DINO layout: GT i's positive in group g is query 2 g n_max + i",
         tests=[DN_LAYOUT]),
    dict(id="dn-loss-not-divided-by-groups", path=DENOISING,
         find="loss_scale=self.loss_scale / groups", replace="loss_scale=self.loss_scale",
         rule="DINO: denoising losses normalised by num_boxes x number of groups",
         tests=[f"{T_DENOISING}::test_positives_reconstruct_their_gt_and_negatives_go_to_background_normalised_by_num_boxes_times_groups"]),
    dict(id="matching-queries-see-groups", path=GROUPS,
         find="blocked[bounds[g] : bounds[g + 1], : bounds[1]] = False",
         replace="blocked[: bounds[1], bounds[g] : bounds[g + 1]] = False",
         rule="DINO attention mask: denoising queries read the matching queries, never the reverse",
         tests=[DN_LAYOUT]),

    # --- core: H-DETR's hybrid branch (Sec. 3.2.1) ------------------------------------------------------
    dict(id="hybrid-not-normalised-by-k", path=HYBRID,
         find="num_boxes * self.repeats", replace="num_boxes",
         rule="H-DETR: the one-to-many loss is normalised by the repeated box count k x num_boxes",
         tests=[f"{T_HYBRID}::test_each_gt_is_matched_k_times_and_the_loss_is_normalised_by_k_num_boxes"]),
    dict(id="hybrid-gt-index-divided", path=HYBRID,
         find='g % max(len(t["labels"]), 1)', replace='g // max(len(t["labels"]), 1)',
         rule="H-DETR: GT j of copy r is GT r n + j; the pairs name the original GT (index mod n)",
         tests=[f"{T_HYBRID}::test_each_gt_is_matched_k_times_and_the_loss_is_normalised_by_k_num_boxes"]),
    dict(id="hybrid-queries-overlap-primary", path=HYBRID,
         find="q.reference[:, primary:]", replace="q.reference[:, : self.num_queries]",
         rule="H-DETR: the one-to-many queries are the proposals ranked after the primary top-P",
         tests=[f"{T_HYBRID}::test_one_to_many_queries_are_the_proposals_ranked_after_the_primary_ones_and_masked_from_them"]),

    # --- core: multi-scale deformable attention (Deformable DETR Eq. 3) -----------------------------------
    dict(id="msda-offsets-normalised-by-hw", path=MS_DEFORM_ATTN,
         find="normalizer = spatial_shapes.flip(-1).to(offsets.dtype)",
         replace="normalizer = spatial_shapes.to(offsets.dtype)",
         rule="Deformable DETR Eq. 3: 2-d offsets are pixels of each level, normalised by (W_l, H_l) for (x, y)",
         tests=[MSDA_GEOMETRY]),
    dict(id="msda-box-offsets-not-halved", path=MS_DEFORM_ATTN,
         find="offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5",
         replace="offsets / P * reference_points[:, :, None, :, None, 2:]",
         rule="Deformable DETR Sec. A.4 (box references): location = centre + offset / P x (w, h) / 2",
         tests=[MSDA_GEOMETRY]),
    dict(id="msda-softmax-per-level", path=MS_DEFORM_ATTN,
         find=".view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)", replace=".view(B, Q, H, L, P).softmax(-1)",
         rule="Deformable DETR Eq. 3: attention weights normalised jointly over levels x points",
         tests=[MSDA_GEOMETRY]),
    dict(id="bilinear-tap-weights-swapped", path=MS_DEFORM_ATTN,
         find="tents = torch.stack([1 - offset.abs(), 1 - (offset - 1).abs_()]).clamp_(min=0)",
         replace="tents = torch.stack([1 - (offset - 1).abs(), 1 - offset.abs()]).clamp_(min=0)",
         rule="bilinear sampling: each tap weighs 1 - its distance to the point (first tap 1 - frac, second frac)",
         tests=[f"{T_MSDA}::test_single_pixel_hand_checkable"]),
    dict(id="bilinear-pixel-corner-convention", path=MS_DEFORM_ATTN,
         find="* pixel_scale).sub_(0.5)", replace="* pixel_scale)",
         rule="sampling convention (grid_sample, align_corners=False): pixel coordinate = x W - 0.5",
         tests=[f"{T_MSDA}::test_single_pixel_hand_checkable"]),
    dict(id="grid-sample-align-corners", path=MS_DEFORM_ATTN,
         find='padding_mode="zeros", align_corners=False)', replace='padding_mode="zeros", align_corners=True)',
         rule="the grid_sample formulation samples with align_corners=False, as the paper's op",
         tests=[f"{T_MSDA}::test_matches_naive_values_and_gradients"]),

    # --- core: sine position encodings (DETR Sec. A.4, DAB-DETR / DINO box embedding) ---------------------
    dict(id="sine-position-without-centre-offset", path=POSITION_ENCODING,
         find="offset=-0.5, eps=1e-6", replace="offset=0.0, eps=1e-6",
         rule="Deformable DETR's sine encoding: (cumsum - 0.5) / extent x 2 pi, a pixel encoded at its centre",
         tests=[f"{T_GEOMETRY}::test_position_embedding_sine_is_the_detr_formula"]),
    dict(id="sine-pair-frequency", path=POSITION_ENCODING,
         find='2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats', replace="dim_t / num_feats",
         rule="DETR Sec. A.4: each sin / cos pair shares the frequency 1 / T^(2 floor(i / 2) / F)",
         tests=[f"{T_GEOMETRY}::test_box_sine_embedding_is_the_dino_formula"]),
    dict(id="box-sine-order-xy", path=POSITION_ENCODING,
         find="for c in (cy, cx, w, h)", replace="for c in (cx, cy, w, h)",
         rule="DAB-DETR / DINO box sine embedding in the order (y, x, w, h)",
         tests=[f"{T_GEOMETRY}::test_box_sine_embedding_is_the_dino_formula"]),

    # --- core: Conditional DETR (Sec. 3.3, Eq. 2) and DAB-DETR (Eq. 6) -----------------------------------
    dict(id="conditional-first-layer-without-key-position", path=CONDITIONAL,
         find="q, k = q + self.q_position(context.query_pos), k + k_pos",
         replace="q, k = q + self.q_position(context.query_pos), k",
         rule="Conditional DETR: the first decoder layer adds the image position to the content key",
         tests=[f"{T_CONDITIONAL}::test_conditional_cross_attention_by_hand"]),
    dict(id="conditional-concat-before-head-split", path=CONDITIONAL,
         find="k = torch.cat([k.view(batch, num_k, heads, -1), k_pos.view(batch, num_k, heads, -1)], -1)",
         replace="k = torch.cat([k, k_pos], -1).view(batch, num_k, heads, -1)",
         rule="Conditional DETR Eq. 2: per head, key = [content_h ; position_h] (concatenated after the head split)",
         tests=[f"{T_CONDITIONAL}::test_conditional_cross_attention_by_hand"]),
    dict(id="conditional-lambda-in-first-layer", path=CONDITIONAL,
         find="spatial = sine if layer_index == 0 else sine * self.scale(query)",
         replace="spatial = sine * self.scale(query)",
         rule="Conditional DETR Sec. 3.3: p_s = lambda s with lambda = 1 in the first layer, MLP(f) after",
         tests=[f"{T_CONDITIONAL}::test_dab_spatial_query_modulation_by_hand"]),
    dict(id="dab-width-modulation-inverted", path=CONDITIONAL,
         find="ratio_x = (size[..., 0] / reference[..., 2])[..., None]",
         replace="ratio_x = (reference[..., 2] / size[..., 0])[..., None]",
         rule="DAB-DETR Eq. 6: the x features are scaled by w_ref / w",
         tests=[f"{T_CONDITIONAL}::test_dab_spatial_query_modulation_by_hand"]),

    # --- QR-DETR (Eq. 5-11) ---------------------------------------------------------------------------------
    dict(id="qr-sigma-ee-max-to-mean", path=EEQR,
         find="score.sigmoid().max(-1).values", replace="score.sigmoid().mean(-1)",
         rule="QR-DETR Eq. 6: sigma_EE = max over the router's sigmoid scores",
         tests=[f"{T_QR}::test_router_decision_and_exit_score_by_hand",
                f"{T_QR}::test_router_learns_through_the_exit_heads_only",
                f"{T_QR}::test_residual_gate_scales_each_passing_querys_update_by_its_sigma",
                f"{T_QR}::test_own_exit_heads_take_the_exit_loss_off_the_detection_heads"]),
    dict(id="qr-router-columns-swapped", path=EEQR,
         find="return score[..., 0] >= score[..., 1]", replace="return score[..., 1] >= score[..., 0]",
         rule="QR-DETR Eq. 5: a query passes when its pass score (column 0) is at least its bypass score",
         tests=[QR_EQUATIONS]),
    dict(id="qr-exit-heads-without-sigma", path=EEQR,
         find="exit_states = sigma[..., None] * x", replace="exit_states = x",
         rule="QR-DETR Sec. 4.1: the exit heads predict from sigma_EE x output, the router's only gradient path",
         tests=[f"{T_QR}::test_router_learns_through_the_exit_heads_only"]),
    dict(id="qr-sa-ca-wrappers-swapped", path=EEQR,
         find='"SA": ("self_attn",), "CA": ("cross_attn",)', replace='"SA": ("cross_attn",), "CA": ("self_attn",)',
         rule="QR-DETR Eq. 9-10: EEQR_SA routes self-attention, EEQR_CA cross-attention",
         tests=[QR_EQUATIONS]),
    dict(id="qr-ffn-on-every-query", path=EEQR,
         find='({"ffn"} if self.ffn_on == "routed" else set())', replace='({"ffn"} if self.ffn_on == "all" else set())',
         rule="QR-DETR Sec. 5.4 c: the FFN processes only the routed queries (ffn_on='routed')",
         tests=[QR_EQUATIONS]),
    dict(id="qr-bypassed-query-box-refined", path=EEQR,
         find='bypass_keeps_box = self.mode == "F" and self.ffn_on == "routed" and self.regroup == "scatter"',
         replace="bypass_keeps_box = False",
         rule="QR-DETR Eq. 11 (EEQR_F): a bypassed query skips the whole layer and keeps its reference box",
         tests=[f"{T_QR}::test_all_bypass_eeqr_f_is_the_identity_on_that_layer"]),
    dict(id="qr-gather-counts-a-padding-row", path=GATHER,
         find="valid = torch.arange(size, device=mask.device)[None] < counts[:, None]",
         replace="valid = torch.arange(size, device=mask.device)[None] <= counts[:, None]",
         rule="QR-DETR Eq. 7: per image exactly the passing queries are gathered (padding marked invalid)",
         tests=["tests/test_extension_points.py::test_query_subset_round_trip_with_unequal_counts", QR_EQUATIONS]),
    dict(id="qr-scatter-writes-padding-back", path=GATHER,
         find="values = torch.where(valid, values, self.gather(base))", replace="values = values",
         rule="QR-DETR Eq. 8: the processed queries are scattered back to their positions, padding rows never",
         tests=[QR_EQUATIONS]),

    # --- OD-DETR (Eq. 2-6, Sec. 3.4) ---------------------------------------------------------------------
    dict(id="od-wd-on-the-cheaper-pair", path=OD_MD,
         find="cheaper = (cost[None, :] < cost[:, None])", replace="cheaper = (cost[None, :] > cost[:, None])",
         rule="OD-DETR Eq. 4: of two queries on one GT, the one with the LARGER matching cost is weighted w_d",
         tests=[OD_MD_HAND]),
    dict(id="od-teacher-pair-of-matched-query-counts", path=OD_MD,
         find="~has_own[tq]])", replace="torch.ones_like(tq, dtype=torch.bool)])",
         rule="OD-DETR Eq. 4: a query with its own match regresses to it only; teacher pairs count for the others",
         tests=[OD_MD_HAND]),
    dict(id="od-tood-exponents-swapped", path=OD_PD,
         find="scores[b, q, labels].pow(self.alpha) * iou.pow(self.beta)",
         replace="scores[b, q, labels].pow(self.beta) * iou.pow(self.alpha)",
         rule="OD-DETR Eq. 5 (TOOD weight): c' <- c'^alpha IoU'^beta, alpha 0.25, beta 0.75",
         tests=[OD_PD_HAND]),
    dict(id="od-listen2stu-inverted", path=OD_PD,
         find="(teacher_iou > student_iou.to(teacher_iou.dtype))", replace="(teacher_iou < student_iou.to(teacher_iou.dtype))",
         rule="OD-DETR Sec. 3.3 Listen2stu: regress to the teacher's box only where its IoU beats the student's",
         tests=[OD_PD_HAND]),
    dict(id="od-pd-not-normalised", path=OD_PD,
         find="v / num_boxes * self.loss_weights.get(k, 0.0)", replace="v * self.loss_weights.get(k, 0.0)",
         rule="OD-DETR Eq. 6: the prediction-distillation sums are divided by the GT count",
         tests=[OD_PD_HAND]),
    dict(id="od-aux-groups-highest-cost", path=OD_AG,
         find="cost.topk(k, dim=0, largest=False)", replace="cost.topk(k, dim=0, largest=True)",
         rule="OD-DETR Sec. 3.4: per GT the two queries of LOWEST matching cost seed an auxiliary group",
         tests=[f"{T_OD}::test_auxiliary_groups_select_two_lowest_cost_queries_per_gt_per_stage"]),

    # --- Mr. DETR (routes, instructive self-attention, evaluation fusion) -----------------------------------
    dict(id="mr-token-keys-without-position", path=BLOCKS,
         find="k = torch.cat([prefix + prefix_pos, k], 1)", replace="k = torch.cat([prefix, k], 1)",
         rule="Mr. DETR instructive self-attention: the instruction tokens join the keys as content + position",
         tests=[MR_ATTENTION]),
    dict(id="mr-token-values-with-position", path=BLOCKS,
         find="v = torch.cat([prefix, v], 1)", replace="v = torch.cat([prefix + prefix_pos, v], 1)",
         rule="Mr. DETR instructive self-attention: the instruction tokens join the values as content only",
         tests=[MR_ATTENTION]),
    dict(id="mr-tokens-shown-to-query-groups", path=MR_INSTRUCTIVE,
         find="hide_tokens = None if self.instruct_groups else context.group_queries",
         replace="hide_tokens = context.group_queries if self.instruct_groups else None",
         rule="Mr. DETR (authors' DINO code): only the matching queries see the instruction tokens",
         tests=[MR_ATTENTION]),
    dict(id="mr-route3-shared-norm", path=MR_INSTRUCTIVE,
         find="return self.norm(query + shared.dropout(self.attend(query, context, shared)))",
         replace="return shared.norm(query + shared.dropout(self.attend(query, context, shared)))",
         rule="Mr. DETR: Route-3 has its own LayerNorm after self-attention",
         tests=[f"{T_MR}::test_route_gradients"]),
    dict(id="mr-o2m-quality-weights", path=MR_ROUTES,
         find="OneToManyMatcher(topk=6, threshold=0.4, class_weight=0.3, max_positive_ratio=0.25)",
         replace="OneToManyMatcher(topk=6, threshold=0.4, class_weight=0.7, max_positive_ratio=0.25)",
         rule="Mr. DETR o2m matcher: quality = 0.7 IoU + 0.3 class probability, tau 0.4, k 6, cap 0.25",
         tests=[f"{T_MR}::test_route_builder"]),
    dict(id="mr-score-fusion-exponents-swapped", path=MR_FUSION,
         find="logits.sigmoid() ** self.current_exponent + previous ** self.previous_exponent",
         replace="logits.sigmoid() ** self.previous_exponent + previous ** self.current_exponent",
         rule="Mr. DETR evaluation: f_l = sqrt((p_l^2.001 + f_(l-1)^1.853) / 2)",
         tests=[f"{T_MR}::test_the_authors_evaluation_fuses_the_layers_scores"]),

    # --- LoRA-DETR (Eq. 3-4, 7-8, Table 4) ----------------------------------------------------------------
    dict(id="lora-scaling-dropped", path=LORA,
         find="return linear(x) + self.scaling * (x @ a.t() @ b.t())", replace="return linear(x) + (x @ a.t() @ b.t())",
         rule="LoRA-DETR Eq. 4: W' = W + s B A (the branch's update scaled by s)",
         tests=[f"{T_LORA}::test_zero_b_branch_equals_main_ffn_exactly_and_follows_eq_3_4"]),
    dict(id="lora-vfl-scale-dropped", path=LORA_BRANCHES,
         find="DEFAULT_VFL_SCALE = 0.25", replace="DEFAULT_VFL_SCALE = 1.0",
         rule="LoRA-DETR public code: every VFL+ term x 0.25 before the sum / GT count",
         tests=[LORA_VFL_HAND]),
    dict(id="lora-branch-losses-not-averaged", path=LORA_BRANCHES,
         find="loss_scale=loss_scale / n", replace="loss_scale=loss_scale",
         rule="LoRA-DETR: for N_aux > 1 the auxiliary branches' losses are averaged (x 1 / N_aux)",
         tests=[f"{T_LORA}::test_each_branch_assigns_at_most_k_positives_per_gt_above_tau"]),
    dict(id="lora-branch-k-not-diverse", path=LORA_BRANCHES,
         find="OneToManyMatcher(topk=k, threshold=tau", replace="OneToManyMatcher(topk=6, threshold=tau",
         rule="LoRA-DETR Table 4: each branch assigns with its own k (diverse k: 2, 4, 6)",
         tests=[f"{T_LORA}::test_each_branch_assigns_at_most_k_positives_per_gt_above_tau"]),
    dict(id="lora-soft-target-iou", path=LORA_BRANCHES,
         find='quality="matching_score", quality_class_weight=alpha)', replace='quality="iou", quality_class_weight=alpha)',
         rule="LoRA-DETR Eq. 8: the o2m branches' soft target s is the matching score M of Eq. 7",
         tests=[LORA_VFL_HAND]),
    dict(id="lora-o2o-union-by-query-only", path=LORA_CRITERION,
         find="held = ((eq[:, None] == q[None]) & (eg[:, None] == g[None])).any(1)",
         replace="held = (eq[:, None] == q[None]).any(1)",
         rule="LoRA-DETR 900-query recipe: the o2o pairs join a branch's positives, no (query, GT) pair twice",
         tests=[f"{T_LORA}::test_o2o_positives_are_merged_into_the_branch_positives_once"]),
]

"""Entry-exit query routing (QR-DETR Sec. 4, Eq. 5-11) as decoder-layer wrappers of the shared core.

A wrapper holds the core ``DeformableDecoderLayer`` it wraps (built by the decoder's
``layer_wrapper`` factory) and a router ``Linear(d, 2)``; it composes the layer's blocks in their
order (``layer.blocks_for(variant)``), and only the queries the router passes go through the routed
block(s): they are gathered (``QuerySubset``, padded per image), processed with the gathered
context, and scattered back to their original positions. Every stream of the layer's inputs is
routed the same way: a decoder variant's (Mr. DETR's routes, LoRA-DETR's branches) goes through the
layer's blocks with the variant's blocks swapped in, so QR-DETR composes with them.
"""
from itertools import chain
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detr_plus.layers import MLP
from detr_plus.modeling import (PRIMARY, SHARED, TRAINING_ONLY_CHILD, LayerInputs, LayerOutput, PredictWith, QuerySubset,
                                init_detection_heads, selected_first)

MODES = ("SA", "CA", "F")
ROUTED_BLOCKS = {"SA": ("self_attn",), "CA": ("cross_attn",), "F": ("self_attn", "cross_attn")}
STARTS = ("random", "pass", "bypass")
EXIT_HEADS = ("shared", "own")
REGROUPS = ("scatter", "concat")
GATES = ("exit", "residual")
FFN_ON = ("routed", "all")


class EEQRLayer(nn.Module):
    """One decoder layer with entry-exit query routing.

    Router (Eq. 5-6): ``score = Linear(Q)`` (B, Q, 2); a query passes when its pass score (column 0)
    is at least its bypass score, and sigma_EE = max(sigmoid(score)). The routing decision has no
    gradient (the max); sigma_EE reaches the loss through the exit heads: ``predict["exit"] =
    sigma_EE * output``, predicted by the layer's detection heads and supervised by the set loss
    (Sec. 4.1 "Optimizing Router Layer"), in training only.

    ``mode`` (Eq. 9-11, with the block the printed Eq. 9-10 omit, as the text describes them):
    * "SA" (EEQR_SA): the passing queries through self-attention (among themselves), scattered back;
      then cross-attention on all queries;
    * "CA" (EEQR_CA): self-attention on all queries; the passing ones through cross-attention;
    * "F" (EEQR_F): the passing queries through the whole layer; a bypassed query keeps its query
      and its reference box (``LayerOutput.updated``).
    ``gate``: "exit" (sigma_EE only scales the exit heads' input, as printed) or "residual" (a
    diagnostic reading, Mixture-of-Depths style: a passing query's update by the routed block is
    scaled by its sigma_EE, ``q + sigma_EE * (block(q) - q)``, so the main loss tells the router
    whether the block helps that query; it changes inference too).
    ``ffn_on``: "routed" (the FFN processes only the queries the router passed, the better choice of
    Sec. 5.4 c) or "all" (every query, as printed in Eq. 9-11). ``regroup``: "scatter" (Eq. 8) or
    "concat" (Table 5's ablation: the processed queries first, then the bypassed ones, so contents
    leave the positions and boxes they belong to).
    """

    keeps_own_init = True  # the transformer's Xavier init of the layers leaves the router's ``start`` alone

    def __init__(self, layer: nn.Module, mode: str, d_model: int, regroup: str = "scatter", ffn_on: str = "routed",
                 start: str = "random", exit_heads: str = "shared", num_classes: int = 80, gate: str = "exit"):
        super().__init__()
        choices = {"mode": (mode, MODES), "regroup": (regroup, REGROUPS), "ffn_on": (ffn_on, FFN_ON),
                   "start": (start, STARTS), "exit_heads": (exit_heads, EXIT_HEADS), "gate": (gate, GATES)}
        wrong = {k: v for k, (v, allowed) in choices.items() if v not in allowed}
        if wrong:
            raise ValueError("EEQRLayer: " + ", ".join(f"{k}={v!r} (expected one of {choices[k][1]})" for k, v in wrong.items()))
        self.layer, self.mode, self.regroup, self.ffn_on, self.start = layer, mode, regroup, ffn_on, start
        self.gate = gate
        self.router = nn.Linear(d_model, 2)
        if exit_heads == "own":  # heads "similar to the final prediction heads"; the core's strip drops them
            heads = {"exit_class_head": nn.Linear(d_model, num_classes), "exit_box_head": MLP(d_model, d_model, 4, 3)}
            setattr(self, TRAINING_ONLY_CHILD, nn.ModuleDict(heads))
        self.last_passed = None  # (B,) queries passed per image in the last forward (routing statistics)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        own = self.own_exit_heads()
        if own is not None:  # as the detection heads: prior 0.01, boxes start at the reference
            init_detection_heads(own["exit_class_head"], own["exit_box_head"])
        self.init_router(self.start)

    @torch.no_grad()
    def init_router(self, start: str):
        """The router's init: "random" (Xavier weights, as the paper's transformer init, zero bias), or
        zero weights with a bias that makes every query "pass" (the layer starts as the plain one) or
        "bypass"."""
        if start == "random":
            nn.init.xavier_uniform_(self.router.weight)
            nn.init.zeros_(self.router.bias)
            return
        nn.init.zeros_(self.router.weight)
        self.router.bias.copy_(torch.tensor([1.0, -1.0] if start == "pass" else [-1.0, 1.0]))

    def own_exit_heads(self) -> Optional[nn.ModuleDict]:
        """The training-only exit heads (``exit_heads="own"``), or None when the exits use the layer's
        detection heads."""
        return getattr(self, TRAINING_ONLY_CHILD, None)

    def extra_repr(self):
        return f"mode={self.mode}, regroup={self.regroup}, ffn_on={self.ffn_on}, gate={self.gate}"

    def route(self, query):
        """(passes (B, Q) bool, sigma_EE (B, Q)) of Eq. 5-6."""
        score = self.router(query)
        return score[..., 0] >= score[..., 1], score.sigmoid().max(-1).values

    def through(self, blocks, x, context, subset: QuerySubset, passes, sigma, variant: Optional[nn.Module] = None,
                done: Optional[dict] = None, keys: Sequence = ()):
        """``blocks`` (a block, or a list applied one after the other) on the passing queries of ``x``,
        regrouped into the full set (``variant``: the layer variant whose blocks they may hold). With
        ``done`` and one key per block, each block's result on the gathered queries is kept under
        its key and reused (a stream that shares the first blocks of a segment)."""
        blocks = list(blocks) if isinstance(blocks, (list, tuple)) else [blocks]
        if subset.size == 0:
            # No query passes in the whole batch: the blocks are skipped, their parameters (and the
            # variant's) get a zero gradient so DDP with find_unused_parameters=False sees them used.
            own = blocks[0] if len(blocks) == 1 and isinstance(blocks[0], nn.Module) else self.layer
            params = chain(own.parameters(), variant.parameters() if variant is not None else ())
            return x + 0.0 * sum(p.sum() for p in params) if self.training else x
        done = {} if done is None else done
        keys = list(keys) or [object() for _ in blocks]  # no keys given: nothing to share
        gathered = subset.gather(x)
        selected = context.select(subset)
        out = gathered
        for block, key in zip(blocks, keys):
            if key not in done:
                done[key] = block(out, selected)
            out = done[key]
        if self.gate == "residual":
            out = gathered + subset.gather(sigma[..., None]) * (out - gathered)
        processed = subset.scatter(x, out)
        if self.regroup == "scatter":
            return processed
        return regroup_first(processed, passes)

    def segments(self, blocks: List[Tuple[str, Callable]]) -> List[Tuple[bool, List[Callable], Tuple[str, ...]]]:
        """The layer's blocks as (routed, blocks, block names) segments in their order: the blocks
        ``mode`` routes, and the FFN when ``ffn_on`` is "routed". EEQR_F routes its blocks as ONE
        segment: the passing queries go through the whole layer together (one gather, one scatter)."""
        routed = set(ROUTED_BLOCKS[self.mode]) | ({"ffn"} if self.ffn_on == "routed" else set())
        segments: List[Tuple[bool, list, list]] = []
        for name, block in blocks:
            if self.mode == "F" and name in routed and segments and segments[-1][0]:
                segments[-1][1].append(block)
                segments[-1][2].append(name)
            else:
                segments.append((name in routed, [block], [name]))
        return [(is_routed, parts, tuple(names)) for is_routed, parts, names in segments]

    def route_stream(self, name: str, inputs: LayerInputs, variant: Optional[nn.Module], done: dict):
        """Stream ``inputs.stream_of(name)`` through the routed layer with ``variant``'s blocks swapped
        in: (output, passes, sigma_EE, updated). ``done`` holds this call's work by name: the routing
        of each stream, and each stream's state after each block keyed by the owners of the blocks
        so far ("shared" or a variant's name), so a variant reuses what it shares with the primary
        stream (a LoRA branch reads the primary queries' routed CA o SA state, LoRA-DETR Eq. 6)."""
        stream_name = inputs.stream_of(name) if variant is not None else PRIMARY
        stream = inputs.streams[stream_name]
        if (stream_name, "routing") not in done:
            passes, sigma = self.route(stream.query)
            done[stream_name, "routing"] = passes, sigma, QuerySubset.of(passes)
        passes, sigma, subset = done[stream_name, "routing"]
        shared, blocks = dict(self.layer.blocks_for(None)), self.layer.blocks_for(variant)
        owner = {n: SHARED if block is shared[n] else name for n, block in blocks}
        x, owners = stream.query, ()
        for is_routed, parts, names in self.segments(blocks):
            inside = [(stream_name, "gathered", owners + tuple(owner[n] for n in names[: i + 1])) for i in range(len(names))]
            owners += tuple(owner[n] for n in names)
            key = (stream_name, owners)
            if key not in done:
                if is_routed:
                    done[key] = self.through(parts, x, stream.context, subset, passes, sigma, variant, done, inside)
                else:
                    done[key] = parts[0](x, stream.context)
            x = done[key]
            if is_routed and self.regroup == "concat":
                # The processed queries now come first: a later routed block (SA's or CA's FFN) takes
                # those rows, and sigma_EE follows its query.
                passes, sigma = regroup_first(passes, passes), regroup_first(sigma, passes)
                subset = QuerySubset.of(passes)
        bypass_keeps_box = self.mode == "F" and self.ffn_on == "routed" and self.regroup == "scatter"
        return x, passes, sigma, passes if bypass_keeps_box else None

    def forward(self, inputs: LayerInputs) -> LayerOutput:
        done = {}
        x, passes, sigma, updated = self.route_stream(PRIMARY, inputs, None, done)
        self.last_passed = passes.sum(1).detach()
        out = LayerOutput(x, updated=updated, extras={"passed": passes})
        for name, variant in inputs.variants.items():
            hidden, _, _, variant_updated = self.route_stream(name, inputs, variant, done)
            out.variants[name] = hidden
            if variant_updated is not None:
                out.variant_updated[name] = variant_updated
        if self.training:
            exit_states = sigma[..., None] * x
            own = self.own_exit_heads()
            out.predict["exit"] = exit_states if own is None else PredictWith(exit_states, own["exit_class_head"], own["exit_box_head"])
        return out


def regroup_first(x: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
    """``x`` (B, Q, ...) with each image's passing queries first, then the bypassed ones, each part in
    its order (Table 5's concatenation)."""
    order = selected_first(passes)
    return x.gather(1, order.view(*order.shape, *([1] * (x.dim() - 2))).expand_as(x))


class EEQRWrapper:
    """The decoder's ``layer_wrapper``: layer i gets mode ``scheme[i % len(scheme)]`` (the combined
    scheme F -> SA -> CA of Table 4's best row by default; ``["SA"]`` etc. for one wrapper alone;
    None in the scheme leaves that layer plain)."""

    def __init__(self, d_model: int, scheme: Sequence = ("F", "SA", "CA"), regroup: str = "scatter", ffn_on: str = "routed",
                 start: str = "random", exit_heads: str = "shared", num_classes: int = 80, gate: str = "exit"):
        self.d_model, self.scheme, self.regroup, self.ffn_on, self.start = d_model, list(scheme), regroup, ffn_on, start
        self.exit_heads, self.num_classes, self.gate = exit_heads, num_classes, gate

    def __call__(self, layer: nn.Module, index: int) -> nn.Module:
        mode = self.scheme[index % len(self.scheme)]
        return layer if mode is None else EEQRLayer(layer, mode, self.d_model, self.regroup, self.ffn_on, self.start,
                                                    self.exit_heads, self.num_classes, self.gate)


def exit_head_criteria(criterion: nn.Module) -> dict:
    """``DeformableDETR.extra_output_criteria`` for the exit heads: ``{"exit": criterion}``, the set loss
    of the detection heads (a builder, since detectron2 v0.6 does not instantiate inside a dict)."""
    return {"exit": criterion}

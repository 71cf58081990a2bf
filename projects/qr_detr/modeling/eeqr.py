"""Entry-exit query routing (QR-DETR Sec. 4, Eq. 5-11) as decoder-layer wrappers of the shared core.

A wrapper holds the core ``DeformableDecoderLayer`` it wraps (built by the decoder's
``layer_wrapper`` factory) and a router ``Linear(d, 2)``; only the queries the router passes go
through the routed block(s): they are gathered (``QuerySubset``, padded per image), processed with
the gathered context, and scattered back to their original positions.
"""
from typing import Sequence

import torch
from torch import nn

from detr_plus.layers import MLP
from detr_plus.modeling import LayerOutput, QuerySubset

MODES = ("SA", "CA", "F")
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
        if exit_heads == "own":  # training-only heads "similar to the final prediction heads"
            self.exit_class_head = nn.Linear(d_model, num_classes)
            self.exit_box_head = MLP(d_model, d_model, 4, 3)
        self.last_passed = None  # (B,) queries passed per image in the last forward (routing statistics)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        if hasattr(self, "exit_class_head"):  # as the detection heads: prior 0.01, boxes start at the reference
            nn.init.constant_(self.exit_class_head.bias, -4.59511985)
            nn.init.zeros_(self.exit_box_head.layers[-1].weight)
            nn.init.zeros_(self.exit_box_head.layers[-1].bias)
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

    def extra_repr(self):
        return f"mode={self.mode}, regroup={self.regroup}, ffn_on={self.ffn_on}, gate={self.gate}"

    def route(self, query):
        """(passes (B, Q) bool, sigma_EE (B, Q)) of Eq. 5-6."""
        score = self.router(query)
        return score[..., 0] >= score[..., 1], score.sigmoid().max(-1).values

    def through(self, block, x, context, subset: QuerySubset, passes, sigma):
        """``block`` on the passing queries of ``x``, regrouped into the full set."""
        if subset.size == 0:
            # No query passes in the whole batch: the block is skipped, its parameters get a zero
            # gradient so DDP with find_unused_parameters=False still sees them used.
            params = (block if isinstance(block, nn.Module) else self.layer).parameters()
            return x + 0.0 * sum(p.sum() for p in params) if self.training else x
        gathered = subset.gather(x)
        out = block(gathered, context.select(subset))
        if self.gate == "residual":
            out = gathered + subset.gather(sigma[..., None]) * (out - gathered)
        processed = subset.scatter(x, out)
        if self.regroup == "scatter":
            return processed
        order = torch.sort((~passes).to(torch.uint8), dim=1, stable=True).indices  # passing first, then bypassed
        return processed.gather(1, order[..., None].expand_as(processed))

    def whole_layer(self, query, context):
        """EEQR_F's routed block: the layer's SA -> CA (-> FFN) on the queries given."""
        layer = self.layer
        x = layer.cross_attn(layer.self_attn(query, context), context)
        return layer.ffn(x, context) if self.ffn_on == "routed" else x

    def forward(self, query, context, branches: Sequence = (), **unused) -> LayerOutput:
        if any(b is not None for b in branches):
            raise NotImplementedError("QR-DETR's routed layers do not take training-route branches")
        passes, sigma = self.route(query)
        subset = QuerySubset.of(passes)
        layer = self.layer
        ffn = layer.ffn
        updated = None
        if self.mode == "SA":
            x = layer.cross_attn(self.through(layer.self_attn, query, context, subset, passes, sigma), context)
        elif self.mode == "CA":
            x = self.through(layer.cross_attn, layer.self_attn(query, context), context, subset, passes, sigma)
        else:
            x = self.through(self.whole_layer, query, context, subset, passes, sigma)
            if self.ffn_on == "all":
                x = ffn(x, context)
            elif self.regroup == "scatter":
                updated = passes
        if self.mode != "F":
            x = self.through(ffn, x, context, subset, passes, sigma) if self.ffn_on == "routed" else ffn(x, context)
        self.last_passed = passes.sum(1).detach()
        out = LayerOutput(x, [None] * len(branches), updated, extras={"passed": passes})
        if self.training:
            exit_states = sigma[..., None] * x
            heads = (self.exit_class_head, self.exit_box_head) if hasattr(self, "exit_class_head") else ()
            out.predict["exit"] = (exit_states, *heads) if heads else exit_states
        return out


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

"""LoRA branches on the decoder FFN (LoRA-DETR Eq. 2-6, Fig. 1(d)).

A branch is a ``LayerVariant`` of the shared core: the decoder layer hands it the layer's shared
post-cross-attention state (``CA o SA (Q_j)``, Eq. 6) and its shared ``FFNBlock``; the branch runs
the block's FFN with its own low-rank updates inside the block's residual and shared norm. Its
output feeds only that layer's one-to-many prediction through the shared heads; only the primary
output goes on to the next layer (the core's ``DeformableDecoderLayer``).
"""
import math

import torch
from torch import nn

from detr_plus.modeling import FFN, FFNBlock, LayerVariant, QueryContext

LORA_INITS = ("zero_b", "normal", "xavier")


class LoRAFFNBranch(LayerVariant):
    """``FFN^{+LoRA_i}(x) = W2^i act(W1^i x + b1) + b2`` with ``W_j^i = W_j + s B_j^i A_j^i`` (Eq. 3-4).

    The base weights ``W_j, b_j`` are the SHARED FFN's (``shared.ffn.linear1/linear2``) and are not
    frozen (Sec. "LoRA Branches in Decoder Layer"): ``W_j x + s B_j (A_j x)`` is computed without
    merging, so the gradient of the branch's one-to-many losses reaches the base FFN as well as
    ``A_j, B_j``. Shapes: ``A1 (r, d)``, ``B1 (d_ffn, r)``, ``A2 (r, d_ffn)``, ``B2 (d, r)``, i.e.
    ``2 r (d + d_ffn)`` parameters per branch and layer (``lora_param_count``).

    ``init`` (the authors' two public copies differ, so it is a switch whose default is B = 0;
    docs/authors_code_facts.md#lora-detr-branches-and-lora-initialisation):
      * "zero_b" (default): B = 0 and A as ``nn.Linear``'s Kaiming-uniform, so the branch starts equal
        to the main FFN (one public copy of the code);
      * "normal": A, B ~ N(0, 1) / sqrt(r), what the other public copy draws;
      * "xavier": A and B both xavier-uniform, U(-sqrt(6 / (fan_in + fan_out)), +...) on each matrix,
        non-zero B: that copy's EFFECTIVE init, since its later xavier pass over every parameter with
        more than one dimension overwrites the N(0, 1) / sqrt(r) draw ("More facts ... LoRA-DETR").
        (Our core's xavier pass covers the transformer only, not the routes, so "zero_b" survives it.)
    ``scaling`` is s (1.0 in the authors' code). Dropout is the shared FFN's.
    """

    replaces_ffn = True

    def __init__(self, d_model=256, d_ffn=1024, rank=32, scaling=1.0, init="zero_b"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRAFFNBranch rank={rank}: must be >= 1")
        self.rank, self.scaling = rank, scaling
        self.lora_a1 = nn.Parameter(torch.empty(rank, d_model))
        self.lora_b1 = nn.Parameter(torch.empty(d_ffn, rank))
        self.lora_a2 = nn.Parameter(torch.empty(rank, d_ffn))
        self.lora_b2 = nn.Parameter(torch.empty(d_model, rank))
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init="zero_b"):
        if init not in LORA_INITS:
            raise ValueError(f"LoRAFFNBranch init={init!r}: expected one of {LORA_INITS}")
        for a, b in ((self.lora_a1, self.lora_b1), (self.lora_a2, self.lora_b2)):
            if init == "zero_b":
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)
            elif init == "xavier":
                nn.init.xavier_uniform_(a)
                nn.init.xavier_uniform_(b)
            else:
                nn.init.normal_(a, std=1.0 / math.sqrt(self.rank))
                nn.init.normal_(b, std=1.0 / math.sqrt(self.rank))

    def adapted_linear(self, linear: nn.Linear, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(W + s B A) x + bias`` (Eq. 4) as ``W x + bias + s B (A x)``."""
        return linear(x) + self.scaling * (x @ a.t() @ b.t())

    def adapted_ffn(self, base: FFN, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3 on the shared FFN ``base`` (its activation: ReLU, or DAB-DETR's PReLU)."""
        hidden = base.activation(self.adapted_linear(base.linear1, self.lora_a1, self.lora_b1, x))
        return base.dropout2(self.adapted_linear(base.linear2, self.lora_a2, self.lora_b2, base.dropout1(hidden)))

    def feed_forward(self, query, context: QueryContext, shared: FFNBlock):
        return shared(query, context, ffn=lambda x: self.adapted_ffn(shared.ffn, x))

    def extra_repr(self):
        return f"rank={self.rank}, scaling={self.scaling}"


def lora_param_count(num_layers: int, d_model: int, d_ffn: int, rank: int, num_branches: int = 1) -> int:
    """Training parameters the LoRA branches add: ``N_aux x layers x 2 r (d + d_ffn)`` (both FFN linears).

    The paper's parameter columns (Tables 1, 2, 6, 7; millions) follow from it with d = 256,
    d_ffn = 2048, 6 decoder layers:
      r = 32: 0.885M per branch -> 47.3 + 0.88 = 48.1 (N_aux 1), 49.0 (N_aux 2), 49.9 (N_aux 3);
      Deformable-DETR++ (47.5): 48.4 with N_aux 1 at r = 32, 51.4 with N_aux 3 at r = 48 (1.33M a branch).
    The naive independent FFN (Fig. 1(c)) adds ``layers x (2 d d_ffn + d + d_ffn)`` = 6.30M a
    branch: 53.6 / 59.9 / 66.2 / 78.8 for N_aux 1 / 2 / 3 / 5 (Table 1).
    """
    return num_branches * num_layers * 2 * rank * (d_model + d_ffn)

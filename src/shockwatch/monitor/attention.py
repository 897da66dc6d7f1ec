r"""Attention observables of the paper's §5.4 and §6, invariant under the heads' GL symmetries.

For each ``models.CausalSelfAttention`` (recomputed by its own ``attention`` from the input its forward hook sees):
    logit_max/<layer>       max |q_i . k_j| / sqrt(d_head) over heads and causal pairs: unchanged
                            by (W_Q, W_K) -> (M W_Q, M^-T W_K) per head (with the key bias shift)
    entropy_min/<layer>     min over heads of the head's mean softmax entropy over the causal rows
                            with two keys or more (0 = one-hot: the entropy collapse of §6 and of
                            Zhai et al. 2023; a row at position t has at most log(t + 1))
    entropy_mean/<layer>    the mean entropy over every row and head
    head_energy_max/<layer> max over heads of mean |W_O^h y_h|^2, a head's contribution to the output:
                            unchanged by (W_V, W_O) -> (M W_V, W_O M^-1)
and, for each ``models.gpt`` Block, branch_balance/<layer> = |attention branch| / (|attention branch|
+ |MLP branch|) (mean norms over tokens). Raw counterpart: qk_weight_norm/<layer> = |W_Q| |W_K|, which
a GL element changes while leaving every logit as it was.

``gl_invariants`` needs no batch and no class names: for every GL symmetry ``find_symmetries`` found
(any model: its labels end in "/qk" for a query-key pair, "/vo" for a value-output pair), with
A_in, A_out its slots as (units x rest) matrices (``symmetry.unit_matrix``) and (A_in, A_out) ->
(M A_in, M^-T A_out) the group action, the product A_in^T A_out (W_Q^h^T W_K^h, the bilinear form of
the head's logits; W_V^h^T W_O^h^T, its value-output map) is invariant:
    attention/qk_product_max = max over qk heads of |A_in^T A_out|_2   (symmetry-corrected)
    attention/qk_weight_max  = max over qk heads of |A_in|_F |A_out|_F (raw: a GL element moves it,
                               and |A_in^T A_out|_2 <= |A_in|_2 |A_out|_2 <= |A_in|_F |A_out|_F)
and the same for vo. The spectral norm comes from the small (units x units) side: with A_in^T = Q R,
|A_in^T A_out|_2 = |R A_out|_2, in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..models.gpt import Block, CausalSelfAttention
from ..symmetry import Kind, SymmetrySet, unit_matrix
from .._preserved import preserved

__all__ = ["attention_observables", "gl_invariants"]


@torch.no_grad()
def attention_observables(model: nn.Module, inputs: Tensor) -> dict[str, float]:
    """One forward pass of ``model(inputs)`` with hooks; {} for a model without our attention modules.
    The model's modes, buffers and the global RNG are left as they were (``_preserved.preserved``)."""
    names = {module: name or "model" for name, module in model.named_modules()}
    seen: dict[str, float] = {}
    branch: dict[str, dict[str, float]] = {}
    handles = []

    def attention_hook(module: CausalSelfAttention, args, output) -> None:
        x = args[0]
        length, d = x.shape[1], x.shape[2]
        scores, probabilities, v = module.attention(x)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # xlogy: 0 log 0 = 0 in any dtype (a clamp at 1e-300 underflows to 0 in float32: NaN)
        entropy = -torch.special.xlogy(probabilities, probabilities).sum(-1)
        y = probabilities @ v  # (batch, heads, length, d_head)
        w_o = module.o.weight.view(d, module.n_head, module.d_head)
        contribution = torch.einsum("ohe,bhte->bhto", w_o, y)
        energy = contribution.square().sum(-1).mean(dim=(0, 2))
        name = names[module]
        seen[f"logit_max/{name}"] = float(scores.masked_fill(~causal, 0.0).abs().max())
        # per head, the mean entropy over the rows with two keys or more (the first has one: always 0)
        per_head = entropy[..., 1:].mean(dim=(0, 2)) if length > 1 else entropy.mean(dim=(0, 2))
        seen[f"entropy_min/{name}"] = float(per_head.min())
        seen[f"entropy_mean/{name}"] = float(entropy.mean())
        seen[f"head_energy_max/{name}"] = float(energy.max())
        seen[f"qk_weight_norm/{name}"] = float(module.q.weight.norm() * module.k.weight.norm())

    def branch_hook(kind: str, block: Block):
        def hook(module, args, output) -> None:
            branch.setdefault(names[block], {})[kind] = float(output.norm(dim=-1).mean())
        return hook

    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            handles.append(module.register_forward_hook(attention_hook))
        if isinstance(module, Block):
            handles.append(module.attn.register_forward_hook(branch_hook("attention", module)))
            handles.append(module.mlp.register_forward_hook(branch_hook("mlp", module)))
    if not handles:
        return {}
    try:
        with preserved(model):  # a forward in train mode draws Dropout masks and moves running statistics
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    for name, norms in branch.items():
        total = norms.get("attention", 0.0) + norms.get("mlp", 0.0)
        seen[f"branch_balance/{name}"] = norms.get("attention", 0.0) / total if total > 0 else math.nan
    return seen


@torch.no_grad()
def gl_invariants(symmetries: SymmetrySet, params: Mapping[str, Tensor]) -> dict[str, float]:
    """The GL-invariant head products and their raw counterparts (module docstring); {} without GL
    symmetries. One QR and one SVD per head, on (units x units) and (units x rest) matrices."""
    products: dict[str, list[float]] = {}
    weights: dict[str, list[float]] = {}
    for sym in symmetries.of_kind(Kind.GL):
        pair = "qk" if sym.label.endswith("/qk") else "vo" if sym.label.endswith("/vo") else "gl"
        a_in = unit_matrix(sym, sym.incoming, params).double()
        a_out = unit_matrix(sym, sym.outgoing, params).double()
        r = torch.linalg.qr(a_in.T, mode="r").R  # A_in^T = Q R, R (units x units)
        products.setdefault(pair, []).append(float(torch.linalg.matrix_norm(r @ a_out, ord=2)))
        weights.setdefault(pair, []).append(float(a_in.norm() * a_out.norm()))
    out = {}
    for pair, found in products.items():
        out[f"attention/{pair}_product_max"] = max(found)
        out[f"attention/{pair}_weight_max"] = max(weights[pair])
    return out

r"""How a group action on some units flows through a traced ATen graph (the analysis behind detection).

A *walk* starts at the output of a parameterised linear map (a producer: ``linear``, ``addmm``,
``mm``/``matmul`` with a parameter, ``conv``) or of a norm's affine map, with a candidate action on
its units, and follows every use forward in graph order. Nothing here reads a module's class or a
parameter's name: only ATen operations and the shapes the trace recorded.

Modes (the group candidate being followed), with the rule each op must satisfy:

- ``DIAG``: unit i scaled by a_i > 0. A tensor carries ``idx`` (the unit index of every element,
  -1 for none) and a degree k (it is scaled by a^k). Positively homogeneous maps (ReLU, leaky
  ReLU, pooling, dropout, x*c, x/c) keep k; x**p, sqrt, rsqrt multiply it; a reduction over axes
  along which idx is constant keeps it; degree 0 is invariant (absorbed: a per-channel BatchNorm in
  training mode). A linear map contracting the unit axis compensates a degree-1 tensor with 1/a_i
  on its input columns (the rescale's outgoing slots). Adding two tagged tensors links their units
  (equal factors); contracting a query against a key links them inversely (a_q a_k = 1). The
  classes of this parity union-find are the symmetries: for rotary embeddings, rotate_half's
  slice/neg/cat links dimension i with i + d/2, so the query/key classes are the frequency pairs.
- ``SCALAR``: one a for all units; as DIAG but every reduction is allowed, so x / sqrt(mean x^2)
  (RMSNorm), layer_norm and batch_norm are degree 0: the scale symmetry.
- ``PERM``: the units permuted. Any elementwise map commutes; a norm over the unit axis commutes
  if its affine parameters are permuted too (added to the incoming slots); two tagged tensors may
  meet only with the same unit at the same place (a gated MLP's gate and up). Consumers'
  columns are permuted in unit-major blocks.
- ``GL``: A -> M A on blocks of units (attention heads). Only linear maps pass; a query block and a
  key block contracted against each other by ``scaled_dot_product_attention`` or ``q @ k^T`` become
  a GL(d) pair (M, M^{-T}); a value block passes attention (it is linear in v) to the output
  projection, whose columns take M^{-1}.
- ``SHIFT``: theta -> theta + c on a bias or a column. A float ``probe`` stands for the shift's
  shape (random where it may vary, constant where it is constant); it is absorbed by a softmax over
  an axis along which it is constant, by attention when it is constant along the keys, or by the
  output when the output is logits and it is constant along the classes.

A walk fails at the first operation that breaks its mode and names it; ``Walk.reason`` is what
``SymmetrySet.unanalysed`` reports for parameters no symmetry covers.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor, fx

from .trace import DROPOUT, TracedModel, packet

__all__ = ["GROUPED_PRODUCTS", "Mode", "Parity", "Producer", "Walk", "biased_maps", "find_producers", "is_lookup",
           "linear_inputs_reading", "linear_reads", "norm_affine_sources", "parameter_uses", "shape_only",
           "stream_sources", "walk", "weight_norm_parts"]


class Mode(enum.Enum):
    DIAG = "diag"
    SCALAR = "scalar"
    PERM = "perm"
    GL = "gl"
    SHIFT = "shift"


def shape(node) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in value.shape) if isinstance(value, Tensor) else None


_IDENTITY = {"clone", "contiguous", "alias", "detach", "to", "_to_copy", "type_as", "lift_fresh_copy", "identity",
             *DROPOUT}
_SHAPE = {"view", "reshape", "_unsafe_view", "transpose", "t", "permute", "unsqueeze", "squeeze", "expand",
          "expand_as", "flatten", "unflatten", "slice", "select", "narrow", "split", "split_with_sizes", "chunk",
          "unbind", "cat", "stack", "repeat_interleave", "movedim", "swapaxes", "getitem", "repeat"}
_SHAPE_ONLY = {"new_ones", "new_zeros", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like", "full_like",
               "sym_size", "size", "_shape_as_tensor", "sym_numel", "_assert_tensor_metadata"}
_POSITIVE = {"relu", "relu_", "leaky_relu", "leaky_relu_", "neg"}
_NONLINEAR = {"gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu", "softplus", "mish", "hardswish",
              "hardsigmoid", "hardtanh", "relu6", "erf", "exp", "log", "sin", "cos", "logsigmoid", "softsign",
              "gelu_", "silu_", "abs", "sign"}
_DEGREE = {"rsqrt": Fraction(-1, 2), "sqrt": Fraction(1, 2), "reciprocal": Fraction(-1), "square": Fraction(2),
           "abs": Fraction(1)}
_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
         "max_pool2d_with_indices"}
_REDUCE = {"mean": 1, "sum": 1, "amax": 1, "amin": 1, "var": 2, "std": 1, "norm": 1}
_BINARY = {"add", "sub", "mul", "div", "rsub"}
_SOFTMAX = {"softmax", "log_softmax", "_softmax", "_log_softmax"}
_NORM_AXES = {"layer_norm": -1, "rms_norm": -1}
# per-channel statistics: a batch norm in training mode, an instance norm (per sample) with input statistics
_BATCH_NORM = {"batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
               "_native_batch_norm_legit_no_training", "native_batch_norm", "instance_norm"}
_CONV = {"conv1d", "conv2d", "conv3d", "convolution"}
# transposed convolutions (a decoder's upsampling): weight (in, out / groups, ...), channels on axis 1
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_COMPARE = {"gt", "ge", "lt", "le"}
# a batched product of each row block with its own expert's weight, (tokens, in) x (experts, in, out) ->
# (tokens, out): Hugging Face's mixture-of-experts layers (torch._grouped_mm and its CPU fallback)
GROUPED_PRODUCTS = {"_grouped_mm", "grouped_mm_fallback"}


@dataclass(frozen=True)
class Producer:
    """A parameterised linear map: its output's units are ``weight``'s slices along ``out_dim``."""

    node: fx.Node
    weight: str
    out_dim: int
    in_dim: int
    bias: str | None
    units: int
    axis: int  # the output axis that carries the units
    grouped: bool  # a grouped / depthwise convolution: its units share input channels
    bias_dim: int = 0  # the bias's axis of units (1 for the experts' biases, one row per expert)
    offset: int = 0  # where its rows start in the weight: a linear map reading a slice of them
    # (nn.MultiheadAttention's in_proj_weight split into query and key/value rows)
    bias_offset: int = 0  # where its units start in the bias (in_proj_bias split likewise)
    normalised: bool = False  # weight normalisation, rows g v / |v|: ``weight`` names g, whose rows
    # scale the map's; v's rows move only with them (permutations, GL), which a slot of g cannot say


@dataclass(frozen=True)
class Consumer:
    """A linear map that contracts the walked units: ``columns[c]`` is the unit column c reads (-1: none)."""

    node: fx.Node
    weight: str
    in_dim: int
    columns: Tensor

    @functools.cached_property
    def positions(self) -> dict[int, list[int]]:
        """unit -> the columns that read it."""
        table: dict[int, list[int]] = {}
        for i, unit in enumerate(self.columns.tolist()):
            table.setdefault(unit, []).append(i)
        return table


class Parity:
    """Union-find with parity: link(a, b, inverse) says a_a = a_b (or a_a a_b = 1)."""

    def __init__(self, size: int):
        self.parent = list(range(size))
        self.parity = [0] * size
        self.broken = False

    def find(self, a: int) -> tuple[int, int]:
        path = 0
        while self.parent[a] != a:
            path ^= self.parity[a]
            a = self.parent[a]
        return a, path

    def link(self, a: int, b: int, inverse: bool) -> None:
        (ra, pa), (rb, pb) = self.find(a), self.find(b)
        want = int(inverse)
        if ra == rb:
            self.broken |= (pa ^ pb) != want
            return
        self.parent[rb] = ra
        self.parity[rb] = pa ^ pb ^ want

    def classes(self) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for unit in range(len(self.parent)):
            root, parity = self.find(unit)
            out.setdefault(root, []).append((unit, parity))
        return out


class _Tag(NamedTuple):
    value: object  # idx (long) or probe (float) tensor, or a tuple of them (split outputs)
    degree: Fraction = Fraction(1)


@dataclass
class Walk:
    ok: bool = True
    reason: str = ""
    consumers: list[Consumer] = field(default_factory=list)
    norm_slots: list[tuple[str, int, Tensor]] = field(default_factory=list)  # PERM: (param, dim, unit per index)
    pairs: list[tuple[fx.Node, Tensor, Tensor]] = field(default_factory=list)  # GL: (attention, query block, key block)
    value_blocks: list[tuple[fx.Node, Tensor]] = field(default_factory=list)  # GL: (attention, value block)
    absorbed: bool = False
    partner: fx.Node | None = None  # where a second producer is needed (the other operand)
    blocked: frozenset[int] = frozenset()  # GL: the units a factor varying across them multiplies (rotary dims)
    links: Parity | None = None
    uses: dict[str, int] = field(default_factory=dict)
    failed_at: fx.Node | None = None  # the operation named in ``reason``
    gains: bool = True  # DIAG: whether a per-unit parameter multiplier may compensate the units (``_binary``)
    gained: bool = False  # whether one did
    summed: bool = False  # DIAG: two producers walked together because their outputs are added (not a query and its key)

    def fail(self, node: fx.Node, why: str, partner: fx.Node | None = None) -> Walk:
        if self.ok:
            self.ok, self.reason, self.partner = False, f"{why} at {packet(node) or node.op} ({node.name})", partner
            self.failed_at = node
        return self


_CASTS = ("to", "_to_copy", "alias", "detach", "contiguous", "clone", "type_as", "lift_fresh_copy")
_TRANSPOSES = ("t", "transpose", "permute", "numpy_T")


def _param(node, traced: TracedModel) -> tuple[str, tuple[int, ...]] | None:
    """(parameter name, dims of the node in parameter order) for a parameter seen through casts and
    transposes, else None."""
    order: tuple[int, ...] | None = None
    while isinstance(node, fx.Node):
        if node.op == "placeholder":
            name = traced.parameters.get(node.name)
            if name is None:
                return None
            rank = len(shape(node) or ())
            return name, order if order is not None else tuple(range(rank))
        kind = packet(node)
        if kind in _CASTS:
            node = node.args[0]
        elif kind in _TRANSPOSES:
            rank = len(shape(node) or ())
            if kind == "permute":
                perm = tuple(d % rank for d in node.args[1])
            elif kind == "transpose" and len(node.args) == 3:
                a, b = node.args[1] % rank, node.args[2] % rank
                perm = list(range(rank))
                perm[a], perm[b] = perm[b], perm[a]
                perm = tuple(perm)
            else:
                perm = tuple(reversed(range(rank)))
            order = tuple(perm[d] for d in order) if order is not None else perm
            node = node.args[0]
        else:
            return None
    return None


def _elementwise_param(node, traced: TracedModel) -> tuple[str, tuple[int, ...]] | None:
    """A parameter seen through casts, transposes and elementwise maps with constants (Gemma's gain
    1 + w): permuting the parameter permutes the result the same way."""
    found = _param(node, traced)
    if found is not None or not isinstance(node, fx.Node):
        return found
    if packet(node) in _BINARY and len(node.args) == 2:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) == 1 and all(isinstance(a, (int, float)) for a in node.args if a is not tensors[0]):
            return _elementwise_param(tensors[0], traced)
    return None


def parameter_uses(traced: TracedModel) -> dict[str, int]:
    """How many operations read each parameter (through casts and transposes): a tied weight is read
    twice, and no action on it can be compensated in one place only."""
    uses: dict[str, int] = {}
    for node in traced.graph.nodes:
        if packet(node) in _CASTS or packet(node) in _TRANSPOSES or packet(node) in _SHAPE_ONLY:
            continue  # seen through by _param (the op that reads their output is the use), or metadata
        for arg in node.all_input_nodes:
            found = _param(arg, traced)
            if found:
                uses[found[0]] = uses.get(found[0], 0) + 1
    return uses


def _parameter_maps(traced: TracedModel):
    """(input operand, weight parameter) of every linear map (``linear``, ``addmm``, ``mm``, ``matmul``)
    whose weight is a parameter (through casts and transposes)."""
    for node in traced.graph.nodes:
        kind = packet(node)
        if kind not in ("linear", "addmm", "mm", "matmul"):
            continue
        x, w = (node.args[1], node.args[2]) if kind == "addmm" else (node.args[0], node.args[1])
        found = _param(w, traced) if isinstance(w, fx.Node) else None
        if found is not None:
            yield x, found[0]


def linear_reads(traced: TracedModel) -> dict[str, int]:
    """How many linear maps read each parameter as their weight (``_parameter_maps``)."""
    reads: dict[str, int] = {}
    for _, name in _parameter_maps(traced):
        reads[name] = reads.get(name, 0) + 1
    return reads


def linear_inputs_reading(traced: TracedModel, name: str) -> list[fx.Node]:
    """The input operands of the linear maps whose weight is parameter ``name`` (``_parameter_maps``):
    what a tied weight's other uses read."""
    return [x for x, weight in _parameter_maps(traced) if weight == name and isinstance(x, fx.Node)]


def biased_maps(traced: TracedModel) -> list[tuple[fx.Node, str]]:
    """(node, bias parameter) of every ``linear`` / ``addmm`` with a parameter bias: a producer's, or one
    whose weight is tied (an output head reading the token embedding)."""
    out = []
    for node in traced.graph.nodes:
        kind = packet(node)
        bias = node.args[0] if kind == "addmm" else (node.args[2] if kind == "linear" and len(node.args) > 2 else None)
        found = _param(bias, traced) if isinstance(bias, fx.Node) else None
        if found is not None:
            out.append((node, found[0]))
    return out


def _groups(node: fx.Node) -> int:
    """A convolution node's ``groups`` (conv1d/2d/3d take it 7th, aten.convolution 9th)."""
    position = 8 if packet(node) == "convolution" else 6
    return node.args[position] if len(node.args) > position else 1


def find_producers(traced: TracedModel, *, shared: bool = False) -> list[Producer]:
    """Every linear map of the graph whose weight is a parameter read nowhere else, with its unit axes;
    ``shared=True``: instead those whose weight (and bias) is read by several linear maps and nothing
    else (a layer applied more than once: ALBERT, a loop over one block), one producer per read."""
    out: list[Producer] = []
    uses = parameter_uses(traced)
    reads = linear_reads(traced) if shared else {}

    def wanted(name: str) -> bool:  # read once, or (shared) only by the linear maps reading it
        count = uses.get(name, 0)
        return count == 1 if not shared else count > 1 and reads.get(name, 0) == count
    for node in traced.graph.nodes:
        kind = packet(node)
        args = node.args
        if kind == "linear":
            weight_arg, bias_arg, dims, x = args[1], (args[2] if len(args) > 2 else None), (0, 1), args[0]
        elif kind == "addmm":
            weight_arg, bias_arg, dims, x = args[2], args[0], (1, 0), args[1]
        elif kind in ("mm", "matmul") and len(shape(args[1]) or ()) == 2:
            weight_arg, bias_arg, dims, x = args[1], None, (1, 0), args[0]
        elif kind in GROUPED_PRODUCTS and len(shape(args[1]) or ()) == 3:
            # every expert's unit j is one unit: a symmetry acts on it in all experts alike
            weight_arg, bias_arg, dims, x = args[1], None, (2, 1), args[0]
        elif kind in _CONV or kind in _CONV_T:
            transposed = kind in _CONV_T or (kind == "convolution" and len(args) > 6 and args[6])
            if transposed and (kind not in _CONV_T or _groups(node) != 1):
                continue  # aten.convolution's transposed form and grouped transposed ones: not analysed
            weight, bias = _param(args[1], traced), (_param(args[2], traced) if len(args) > 2 else None)
            gains = _normalised_gains(args[1], traced, uses) if weight is None and not transposed else None
            if weight is None and gains is None:
                continue
            name, order = weight if weight is not None else (gains, (0, 1))
            if shared or uses.get(name, 0) != 1:
                continue
            out_dim, in_dim = (order[1], order[0]) if transposed else (order[0], order[1])
            out.append(Producer(node, name, out_dim, in_dim, bias[0] if bias else None, shape(node)[1], 1,
                                _groups(node) != 1, normalised=gains is not None))
            continue
        else:
            continue
        weight = _param(weight_arg, traced)
        bias = _param(bias_arg, traced) if bias_arg is not None else None
        offset = bias_offset = 0
        normalised = False
        if kind == "linear" and weight is None:  # rows of a parameter (one part of a split)
            rows = _row_slice(weight_arg, traced)
            if rows is not None:
                (name, offset), weight = rows, (rows[0], (0, 1))
        if kind == "linear" and weight is None:  # rows g v / |v| (weight normalisation): g's rows scale them
            gains = _normalised_gains(weight_arg, traced, uses)
            if gains is not None:
                weight, normalised = (gains, (0, 1)), True
        if kind == "linear" and bias_arg is not None and bias is None:  # a block of a bias (in_proj_bias)
            cut = _row_slice(bias_arg, traced)
            if cut is not None:
                bias, bias_offset = (cut[0], (0,)), cut[1]
        if weight is None or (bias_arg is not None and bias is None):
            continue  # a weight or bias computed from parameters (not a parameter itself): not analysed
        name, order = weight
        out_shape = shape(node)
        if not wanted(name) or (bias and uses.get(bias[0], 0) != uses.get(name, 0)):
            continue
        if out_shape is None or len(shape(x) or ()) < 1:
            continue
        bias_dim = 0
        if bias is None and kind in ("mm", "matmul"):  # x @ W.T + b, as written by hand
            node, bias = _bias_added(node, out_shape[-1], uses, traced)
        elif bias is None and kind in GROUPED_PRODUCTS:  # each token's expert's bias row, gathered
            node, bias = _expert_bias_added(node, out_shape[-1], shape(weight_arg)[0], uses, traced)
            bias_dim = 1 if bias is not None else 0
        out.append(Producer(node, name, order[dims[0]], order[dims[1]], bias[0] if bias else None, out_shape[-1],
                            len(out_shape) - 1, False, bias_dim, offset, bias_offset, normalised))
    return out


def weight_norm_parts(node, traced: TracedModel) -> tuple[str, str | None, int] | None:
    """(v, g, dim) where ``node`` is ``_weight_norm(v, g, dim)`` (W = g v / |v| per slice along dim:
    torch.nn.utils' weight_norm, hooked or parametrised) with v a parameter as stored (g None where it
    is not a parameter); else None."""
    if not isinstance(node, fx.Node) or packet(node) != "_weight_norm" or len(node.args) < 2:
        return None
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    v, g = _param(node.args[0], traced), _param(node.args[1], traced)
    if v is None or v[1] != tuple(range(len(v[1]))) or not isinstance(dim, int):
        return None
    return v[0], (g[0] if g is not None else None), dim


def _normalised_gains(node, traced: TracedModel, uses: dict[str, int]) -> str | None:
    """g, where ``node`` is ``_weight_norm(v, g, 0)`` (rows g_i v_i / |v_i|) of parameters v and g read
    nowhere else; else None."""
    parts = weight_norm_parts(node, traced)
    if parts is None:
        return None
    v, g, dim = parts
    return g if dim == 0 and g is not None and uses.get(v) == 1 and uses.get(g) == 1 else None


def _row_slice(node, traced: TracedModel) -> tuple[str, int] | None:
    """(parameter, first row) where ``node`` is a block of a parameter's rows (dim 0) and nothing
    else: one part of ``split`` / ``split_with_sizes`` / ``chunk``, or a ``slice``; else None."""
    if not isinstance(node, fx.Node):
        return None
    kind = packet(node)
    if kind == "getitem" and isinstance(node.args[0], fx.Node) \
            and packet(node.args[0]) in ("split", "split_with_sizes", "chunk"):
        source, index = node.args[0], node.args[1]
        sizes, dim = source.args[1], (source.args[2] if len(source.args) > 2 else source.kwargs.get("dim", 0))
        whole = shape(source.args[0])
        if not whole or dim % len(whole) != 0 or not isinstance(index, int):
            return None
        if packet(source) == "chunk" and isinstance(sizes, int) and sizes > 0:
            start = index * -(-whole[0] // sizes)  # chunk(n) pieces of ceil(rows / n)
        elif isinstance(sizes, int):
            start = index * sizes
        elif isinstance(sizes, (list, tuple)) and all(isinstance(n, int) for n in sizes):
            start = sum(sizes[:index])
        else:
            return None
        found = _param(source.args[0], traced)
    elif kind == "slice" and len(node.args) >= 3 and node.args[1] % max(len(shape(node) or (1,)), 1) == 0:
        start = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], int) else 0
        step = node.args[4] if len(node.args) > 4 else 1
        found = _param(node.args[0], traced) if step == 1 and start >= 0 else None
    else:
        return None
    if found is None or found[1] != tuple(range(len(found[1]))):
        return None
    return found[0], int(start)


def _expert_bias_added(node: fx.Node, units: int, experts: int, uses: dict[str, int], traced: TracedModel
                       ) -> tuple[fx.Node, tuple[str, tuple[int, ...]] | None]:
    """Where a grouped expert product is followed by ``+ B[ids]``, B an (experts, units) parameter read
    nowhere else gathered by expert per token (GPT-OSS): that add, whose output is the map's, and B;
    else the product and None."""
    if len(node.users) != 1:
        return node, None
    user = next(iter(node.users))
    if packet(user) not in ("add", "add_") or len(user.args) != 2 or user.kwargs:
        return node, None
    other = user.args[1] if user.args[0] is node else user.args[0]
    if packet(other) != "index" or not isinstance(other.args[0], fx.Node):
        return node, None
    found = _param(other.args[0], traced)
    if found and shape(other.args[0]) == (experts, units) and uses.get(found[0], 0) == 1 and shape(user) == shape(node):
        return user, found
    return node, None


def _bias_added(node: fx.Node, units: int, uses: dict[str, int], traced: TracedModel
                ) -> tuple[fx.Node, tuple[str, tuple[int, ...]] | None]:
    """Where a product x @ W.T is followed (through reshapes that keep its last axis, as torch writes
    a batched matmul) by ``+ b`` with b a parameter of shape (units,) read nowhere else: that add,
    whose output is the linear map's (the walk starts there, b among the producer's slots), and b;
    else the product itself and None."""
    end = node
    while len(end.users) == 1:
        user = next(iter(end.users))
        kind = packet(user)
        if kind in ("view", "_unsafe_view", "reshape") and (shape(user) or (None,))[-1] == units:
            end = user
            continue
        # h + b, or h += b (in place on h, which nothing else reads)
        if (kind == "add" or kind == "add_" and user.args[0] is end) and len(user.args) == 2 and not user.kwargs:
            other = user.args[1] if user.args[0] is end else user.args[0]
            found = _param(other, traced)
            if found and shape(other) == (units,) and uses.get(found[0], 0) == 1 and shape(user) == shape(end):
                return user, found
        break
    return node, None


def norm_affine_sources(traced: TracedModel) -> list[tuple[fx.Node, int, list[str]]]:
    """(node, unit axis, affine parameters) for norms' affine maps: layer_norm / rms_norm / batch_norm /
    group_norm with weight (and bias), and a gain parameter that multiplies a tensor directly, w * x, elementwise
    along the last axis (RMSNorm as Hugging Face writes it), used nowhere else."""
    out = []
    uses = parameter_uses(traced)
    for node in traced.graph.nodes:
        kind = packet(node)
        if kind in _NORM_AXES or kind in _BATCH_NORM or kind == "group_norm":
            # a group norm's gain and bias (args 2, 3) act per channel (axis 1), as a batch norm's
            positions = (1, 2) if kind in _BATCH_NORM else ((2, 3) if kind in ("layer_norm", "group_norm") else (2,))
            params = [p[0] for i in positions if len(node.args) > i and (p := _param(node.args[i], traced))]
            if params and all(uses.get(p) == 1 for p in params) and len(node.args) > positions[0] and _param(node.args[positions[0]], traced):
                if shape(node) is None:  # (output, statistics...), a functionalised batch norm's: item 0
                    firsts = [user for user in node.users if packet(user) == "getitem" and user.args[1] == 0]
                    if len(firsts) != 1:
                        continue
                    node = firsts[0]
                out.append((node, 1 if kind in _BATCH_NORM or kind == "group_norm" else -1, params))
        elif kind == "mul" and len(node.args) == 2:
            for gain, other in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
                found = _param(gain, traced)
                out_shape = shape(node)
                if (found and isinstance(other, fx.Node) and _param(other, traced) is None and out_shape
                        and shape(gain) == (out_shape[-1],) and uses.get(found[0]) == 1):
                    out.append((node, -1, [found[0]]))
    return out


def shape_only(node) -> bool:
    """Whether a node reads only the shape, dtype or device of its inputs (``new_ones``, ``zeros_like``):
    no value flows through it."""
    return packet(node) in _SHAPE_ONLY


def stream_sources(traced: TracedModel, *, tied: bool = False) -> list[tuple[fx.Node, str]]:
    """Where parameters enter a residual stream directly: an embedding lookup of a weight read nowhere
    else (``tied``: or read elsewhere too, an output head tied to it), and a parameter added or
    concatenated as it is (a class token, learned positions)."""
    uses = parameter_uses(traced)
    out = []
    for node in traced.graph.nodes:
        if is_lookup(node):
            found = _param(node.args[0], traced)
            if found and found[1] == (0, 1) and (tied or uses.get(found[0]) == 1):
                out.append((node, found[0]))
        elif node.op == "placeholder" and node.name in traced.parameters:
            name = traced.parameters[node.name]
            users = list(node.users)
            # (a parameter plus a constant is not added to the stream: LayerNorm1P's gain 1 + w)
            if uses.get(name) == 1 and len(users) == 1 and packet(users[0]) in ("add", "cat", "expand") and (
                    packet(users[0]) != "add" or all(isinstance(a, fx.Node) for a in users[0].args)):
                out.append((node, name))
    return out


def is_lookup(node) -> bool:
    """An embedding lookup: ``embedding``, or ``table[ids]`` as written by hand (aten.index with one
    integer index tensor on a 2-D tensor's first axis). Either way the table's dim 1 is the output's
    last axis."""
    if packet(node) == "embedding":
        return True
    if packet(node) != "index" or len(node.args) < 2 or len(shape(node.args[0]) or ()) != 2:
        return False
    indices = node.args[1]
    if not isinstance(indices, (list, tuple)) or len(indices) != 1 or not isinstance(indices[0], fx.Node):
        return False
    value = indices[0].meta.get("val")
    return isinstance(value, Tensor) and not value.is_floating_point() and value.dtype is not torch.bool


def unit_index(out_shape: tuple[int, ...], axis: int, units: int, offset: int = 0) -> Tensor:
    """The unit index of every element of a tensor whose ``axis`` carries ``units`` units."""
    view = [1] * len(out_shape)
    view[axis] = units
    return (torch.arange(units) + offset).reshape(view).expand(out_shape)


def walk(traced: TracedModel, seeds: dict[fx.Node, Tensor], mode: Mode, *, classes: int | None, units: int,
         epsilons: frozenset[str] = frozenset(), uses: dict[str, int] | None = None, gains: bool = True) -> Walk:
    """Follow ``seeds`` (node -> idx, or probe for SHIFT) forward through the graph (module docstring).
    ``gains=False``: a per-unit parameter multiplier does not end a DIAG walk (what the units meet after it)."""
    result = Walk(links=Parity(units) if mode is Mode.DIAG else None, uses=uses if uses is not None else {},
                  gains=gains)
    tags: dict[fx.Node, _Tag] = {node: _Tag(value) for node, value in seeds.items()}
    for node in traced.graph.nodes:
        if not result.ok:
            continue
        tagged = [arg for arg in node.all_input_nodes if arg in tags]
        if node in seeds:
            kind = packet(node)
            if tagged and (kind in ("linear", "addmm", "mm", "matmul", "bmm") or kind in _CONV or kind in _CONV_T
                           or kind in GROUPED_PRODUCTS):
                # a seeded linear map that reads the units too (a layer applied to its own output):
                # its columns are a consumer all the same
                _step(node, tags, mode, result, traced, epsilons)
            continue
        if not tagged:
            continue
        if node.op == "output":
            if mode is Mode.SHIFT and classes is not None and _constant_along(tags[tagged[0]].value, classes):
                result.absorbed = True
                continue
            result.fail(node, "the transformed units reach the model's output")
            continue
        tag = _step(node, tags, mode, result, traced, epsilons)
        tag = tag if isinstance(tag, _Tag) else None
        if mode is Mode.SHIFT and tag is not None and isinstance(tag.value, Tensor) and not bool(tag.value.any()):
            # a shift cancelled against itself (x - amax(x) of a softmax written by hand) is absorbed; a
            # zero part of a fused projection (its query and value parts) is simply no shift
            if packet(node) in ("sub", "add") and len(tagged) == 2:
                result.absorbed = True
            continue
        if mode is not Mode.SHIFT and tag is not None and isinstance(tag.value, Tensor) \
                and not tag.value.is_floating_point() and bool((tag.value < 0).all()):
            continue  # no unit anywhere (the masked half of a fused projection): untransformed
        if tag is not None and result.ok:
            tags[node] = tag
    return result


def _constant_along(value: Tensor, axis: int) -> bool:
    return bool((value == value.narrow(axis, 0, 1)).all())


def _units_along(value: Tensor, axis: int) -> Tensor | None:
    """The unit index (1-D, a copy) of each position along ``axis`` of a tagged tensor, where the tag
    is constant along every other axis (the units live on that axis alone); else None."""
    axis %= value.dim()
    others = [a for a in range(value.dim()) if a != axis]
    if not all(_constant_along(value, a) for a in others):
        return None
    for a in others:
        value = value.narrow(a, 0, 1)
    return value.reshape(-1).clone()


def _fill(node, tags, mode):
    """Arguments with tagged nodes replaced by their idx / probe and other tensors by -1 / 0."""
    def convert(arg):
        if isinstance(arg, fx.Node):
            if arg in tags:
                return tags[arg].value
            arg_shape = shape(arg)
            if arg_shape is None:
                return arg.meta.get("val")
            return torch.full(arg_shape, -1, dtype=torch.long) if mode is not Mode.SHIFT else torch.zeros(arg_shape, dtype=torch.float64)
        if isinstance(arg, (list, tuple)):
            return type(arg)(convert(a) for a in arg)
        return arg
    return [convert(a) for a in node.args], {k: convert(v) for k, v in node.kwargs.items()}


def _step(node, tags, mode: Mode, result: Walk, traced: TracedModel, epsilons) -> _Tag | None:
    kind = packet(node)
    first = node.args[0] if node.args else None
    tag = tags.get(first) if isinstance(first, fx.Node) else None
    degree = tag.degree if tag is not None else Fraction(1)
    if kind in _SHAPE_ONLY:
        return None  # reads only the shape, dtype or device
    if kind in _IDENTITY:
        return tag if tag is not None else result.fail(node, "a tagged tensor enters an unsupported argument") and None
    if kind in _SHAPE:
        args, kwargs = _fill(node, tags, mode)
        target = node.target
        if kind in ("view", "_unsafe_view"):
            target = torch.ops.aten.reshape.default
        try:
            value = target(*args, **kwargs) if kind != "getitem" else args[0][args[1]]
        except Exception as error:
            return result.fail(node, f"shape map failed ({type(error).__name__})") and None
        degrees = {tags[a].degree for a in node.all_input_nodes if a in tags}
        if len(degrees) > 1:
            return result.fail(node, "joins tensors of different degree") and None
        return _Tag(value, degrees.pop())
    if kind in _POSITIVE:
        if mode in (Mode.GL, Mode.SHIFT) and kind != "neg":
            return result.fail(node, "a nonlinear map breaks a linear action") and None
        return tag
    if kind in _DEGREE and mode in (Mode.DIAG, Mode.SCALAR):
        return _Tag(tag.value, degree * _DEGREE[kind])
    if kind in _DEGREE and mode is Mode.PERM:  # elementwise (a squared ReLU's square): permutes with the units
        return tag
    if kind in _NONLINEAR:
        if mode is Mode.PERM:
            return tag
        return result.fail(node, "a map that is not positively homogeneous breaks the action") and None
    if kind == "pow" and mode is Mode.PERM and isinstance(node.args[1], (int, float)):
        return tag
    if kind == "pow" and mode in (Mode.DIAG, Mode.SCALAR) and isinstance(node.args[1], (int, float)):
        return _Tag(tag.value, degree * Fraction(node.args[1]).limit_denominator(64))
    if kind in _POOL:
        return _pool(node, tag, mode, result)
    if kind in _REDUCE:
        return _reduce(node, tag, mode, result)
    if kind in _BINARY or (kind.endswith("_") and kind[:-1] in _BINARY):
        if kind.endswith("_") and _read_again(first, node):
            return result.fail(node, "an in-place update of a tensor that is read again after it") and None
        return _binary(node, tags, mode, result, epsilons, traced)
    if kind in ("where", "masked_fill"):
        return _masked(node, tags, mode, result)
    if kind in _SOFTMAX:
        return _softmax(node, tag, mode, result)
    if kind in _NORM_AXES or kind in _BATCH_NORM or kind == "group_norm":
        return _norm(node, tags, mode, result, traced)
    if kind in ("linear", "addmm", "mm", "matmul", "bmm") or kind in _CONV or kind in _CONV_T or kind in GROUPED_PRODUCTS:
        return _contraction(node, tags, mode, result, traced)
    if kind in ("index", "index_select"):
        return _index(node, tags, mode, result)
    if kind in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        return _recurrent_input(node, tags, mode, result, traced)
    if kind in ("constant_pad_nd", "pad"):
        return _pad(node, tag, mode, result)
    if kind.startswith(("upsample_", "_upsample_")):
        return _resampled(node, tag, mode, result)
    if kind == "scaled_dot_product_attention":
        return _attention(node, tags, mode, result)
    if kind == "baddbmm":  # beta input + alpha (a @ b): scores with an additive bias (ALiBi, BLOOM)
        if isinstance(node.args[0], fx.Node) and node.args[0] in tags:
            return result.fail(node, "a transformed tensor added to a batched product") and None
        return _product(node, tags, mode, result, node.args[1], node.args[2])
    if kind in ("clamp", "clamp_min", "clamp_max"):
        return _clamp(node, tags, mode, result)
    if kind in _COMPARE:
        return _compare(node, tags, mode, result)
    if kind in ("maximum", "minimum", "fmax", "fmin"):
        return _extreme(node, tags, mode, result, traced)
    if kind in ("prelu", "_prelu_kernel"):
        return _prelu(node, tags, mode, result, traced)
    if kind == "topk" and mode is Mode.SHIFT:
        return _topk_shift(node, tag, result)
    return result.fail(node, "an operation the analysis does not know") and None


def _topk_shift(node, tag, result):
    """The top k of scores shifted by c, constant along the top-k axis (a router's logits, one shift
    for all experts): the same entries are kept, so the indices are unchanged and the values shift
    by c. Any other shift can change which entries are kept."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1)
    values = _spread(tag.value, {dim % tag.value.dim()}, tuple(node.meta["val"][0].shape))
    if values is None:
        return result.fail(node, "a shift that varies along the top-k axis changes the entries kept") and None
    return _Tag((values, torch.zeros(values.shape, dtype=torch.float64)), tag.degree)


def _spread(value: Tensor, axes: set[int], out_shape: tuple[int, ...]) -> Tensor | None:
    """``value`` (a tag) read at any one position along ``axes`` and broadcast to ``out_shape``: what an
    op that moves, copies or mixes positions along axes the tag is constant on (padding, resampling,
    a top k) leaves of it; None where the tag varies along one of them."""
    if not all(_constant_along(value, axis) for axis in axes):
        return None
    for axis in axes:
        value = value.narrow(axis, 0, 1)
    return value.expand(out_shape).clone()


def _pad(node, tag, mode, result):
    """Zeros padded along axes where the units do not vary (Swin's windows, a convolution's "same"
    padding written out): a per-unit scale, a permutation or a GL element leaves a zero a zero, so the
    padded tensor carries the units as the input did; a shift would not (the zeros are not shifted)."""
    if packet(node) == "pad":  # aten.pad(input, pad, mode="constant", value=None)
        fill_mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    else:  # aten.constant_pad_nd(input, pad, value=0)
        fill_mode, value = "constant", node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    if mode is Mode.SHIFT:
        return result.fail(node, "zeros padded to a shifted tensor are not shifted") and None
    if fill_mode != "constant" or value not in (0, 0.0, None):
        return result.fail(node, "a padding that is not zeros") and None
    widths = node.args[1]
    padded = _spread(tag.value, {tag.value.dim() - 1 - i // 2 for i in range(len(widths)) if widths[i]}, shape(node))
    if padded is None:
        return result.fail(node, "zeros padded along the transformed units") and None
    return _Tag(padded, tag.degree)


def _resampled(node, tag, mode, result):
    """Spatial resampling (``F.interpolate``: nearest, bilinear, bicubic, ...): each output position a
    weighted sum of the same channel's input positions, the weights summing to 1, so a per-channel
    scale, a permutation, a GL element on the channels and a shift constant in space all pass, where
    the units live on the channel axis (1) alone."""
    resampled = _spread(tag.value, set(range(2, tag.value.dim())), shape(node))
    if resampled is None:
        return result.fail(node, "a resampling along the transformed units") and None
    return _Tag(resampled, tag.degree)


def _recurrent_input(node, tags, mode, result, traced):
    """A recurrent layer (one ATen op, its first layer's input weights first in its parameter list)
    reading the units as its input features: they are the columns of that weight, linear in each
    gate; nothing else of the op may carry them."""
    data, flat = node.args[0], node.args[2] if len(node.args) > 2 else ()
    if data not in tags or any(isinstance(a, fx.Node) and a in tags for a in node.all_input_nodes if a is not data):
        return result.fail(node, "a transformed tensor in a recurrent layer's state or weights") and None
    if mode not in (Mode.PERM, Mode.DIAG, Mode.GL) or not flat:
        return result.fail(node, "reaches a recurrent layer before any norm or softmax") and None
    # the first layer's input weights: of each direction where bidirectional (the reverse one a layer's
    # parameters later: 4 with biases, 2 without)
    per_layer = 4 if (len(node.args) > 3 and node.args[3]) else 2
    firsts = [flat[0], *([flat[per_layer]] if len(node.args) > 7 and node.args[7] and len(flat) > per_layer else [])]
    found = [_param(w, traced) if isinstance(w, fx.Node) else None for w in firsts]
    columns = _units_along(tags[data].value, -1)
    if any(f is None or result.uses.get(f[0], 1) != 1 for f in found) or columns is None:
        return result.fail(node, "a recurrent layer whose input weights are not a parameter read once") and None
    if mode is Mode.DIAG and tags[data].degree != 1:
        return result.fail(node, f"reaches a recurrent layer at degree {tags[data].degree}") and None
    for weight in found:
        result.consumers.append(Consumer(node, weight[0], 1, columns))
    return None


def _index(node, tags, mode, result):
    """``x[i, j, ...]`` (``aten.index``) or ``index_select(x, dim, i)`` with untransformed indices on
    axes along which the tag is constant (tokens gathered for an expert, or put back in order): the
    same positions of the tag, read with any valid index (here 0)."""
    kind = packet(node)
    data = node.args[0]
    if kind == "index":
        indices, axes = list(node.args[1]), [a for a, i in enumerate(node.args[1]) if i is not None]
    else:
        indices, axes = [node.args[2]], [node.args[1] % len(shape(data) or (0,))]
    if data not in tags or any(isinstance(i, fx.Node) and i in tags for i in indices):
        return result.fail(node, "a transformed tensor used as an index") and None
    value = tags[data].value
    if not all(_constant_along(value, axis) for axis in axes):
        return result.fail(node, "an index along the transformed units") and None
    zeros = [torch.zeros(shape(i), dtype=torch.long) if isinstance(i, fx.Node) else None for i in indices]
    picked = torch.ops.aten.index.Tensor(value, zeros) if kind == "index" else value.index_select(axes[0], zeros[0])
    return _Tag(picked, tags[data].degree)


def _only_first_tagged(node, tags) -> bool:
    return isinstance(node.args[0], fx.Node) and node.args[0] in tags and not any(
        a in tags for a in node.all_input_nodes if a is not node.args[0])


def _clamp(node, tags, mode, result):
    """clamp(x, min, max) with number bounds: elementwise (commutes with a permutation), and positively
    homogeneous where every bound is 0 or absent (clamp(x, min=0) is ReLU)."""
    names = {"clamp": ("min", "max"), "clamp_min": ("min",), "clamp_max": ("max",)}[packet(node)]
    bounds = {**dict(zip(names, node.args[1:])), **node.kwargs}
    low, high = bounds.get("min"), bounds.get("max")
    if not _only_first_tagged(node, tags) or any(isinstance(b, fx.Node) for b in (low, high)):
        return result.fail(node, "a clamp with transformed or tensor bounds") and None
    tag = tags[node.args[0]]
    if (low is None and high is None) or mode is Mode.PERM:
        return tag
    if mode in (Mode.DIAG, Mode.SCALAR) and all(b is None or b == 0 for b in (low, high)):
        return tag
    return result.fail(node, "a clamp at a nonzero bound is not positively homogeneous" if mode is not Mode.GL
                       else "a nonlinear map breaks a linear action") and None


def _compare(node, tags, mode, result):
    """x > c and its kin, with c a number: elementwise (permuted with the units); for c = 0 a mask
    no positive scale changes (untransformed: x * (x > 0) is then as homogeneous as x)."""
    other = node.args[1] if len(node.args) > 1 else None
    if not _only_first_tagged(node, tags) or isinstance(other, fx.Node):
        return result.fail(node, "compares a transformed tensor with a tensor") and None
    if mode is Mode.PERM:
        return tags[node.args[0]]
    if mode in (Mode.DIAG, Mode.SCALAR) and other == 0:
        return None
    return result.fail(node, "a comparison that a scale or shift of the units changes") and None


def _is_zero(node, traced: TracedModel) -> bool:
    """A tensor that is zero whatever the parameters: zeros(_like), a full or scalar tensor of 0, a
    lifted constant of zeros, seen through casts and broadcasts."""
    while isinstance(node, fx.Node) and packet(node) in (*_CASTS, "detach_", "expand", "expand_as", "view", "reshape"):
        node = node.args[0]
    if isinstance(node, (int, float)):
        return node == 0
    if not isinstance(node, fx.Node):
        return False
    if node.op == "placeholder":
        constant = traced.constants.get(node.name)
        return constant is not None and not bool(constant.any())
    kind = packet(node)
    if kind in ("zeros", "zeros_like", "new_zeros"):
        return True
    fill = {"full": 1, "new_full": 2, "full_like": 1, "scalar_tensor": 0}.get(kind)
    return fill is not None and len(node.args) > fill and isinstance(node.args[fill], (int, float)) and node.args[fill] == 0


def _extreme(node, tags, mode, result, traced):
    """maximum / minimum: of two transformed tensors on the same units (and degree), or of one and a
    zero tensor (maximum(x, 0) is ReLU); elementwise, so permuted with the units against anything
    that does not vary across them."""
    a, b = node.args[0], node.args[1]
    ta, tb = tags.get(a) if isinstance(a, fx.Node) else None, tags.get(b) if isinstance(b, fx.Node) else None
    out_shape = shape(node)
    if ta is not None and tb is not None:
        va, vb = (t.value.expand(out_shape) if out_shape else t.value for t in (ta, tb))
        if mode in (Mode.PERM, Mode.DIAG, Mode.SCALAR) and ta.degree == tb.degree and bool((va == vb).all()):
            return _Tag(va, ta.degree)
        return result.fail(node, "a maximum of differently transformed tensors") and None
    tag, other = (ta, b) if ta is not None else (tb, a)
    value = tag.value.expand(out_shape) if out_shape else tag.value
    if mode is Mode.PERM and (not isinstance(other, fx.Node) or _is_zero(other, traced)
                              or _broadcast_constant_on_units(shape(other), tag.value)):
        return _Tag(value, tag.degree)
    if mode in (Mode.DIAG, Mode.SCALAR) and _is_zero(other, traced):
        return _Tag(value, tag.degree)
    return result.fail(node, "a maximum with a tensor other than zero") and None


def _prelu(node, tags, mode, result, traced):
    """PReLU: positively homogeneous (its slopes untouched by a positive scale); under a permutation
    of the channels its per-channel slopes are permuted with them."""
    if not _only_first_tagged(node, tags):
        return result.fail(node, "a transformed tensor in PReLU's slopes") and None
    tag = tags[node.args[0]]
    if mode in (Mode.DIAG, Mode.SCALAR):
        return tag
    weight = node.args[1] if len(node.args) > 1 else None
    found = _param(weight, traced) if isinstance(weight, fx.Node) else None
    if mode is Mode.PERM and isinstance(weight, fx.Node) and shape(weight) in ((1,), ()):
        return tag  # one slope for every channel: elementwise
    if mode is Mode.PERM and found is not None:
        axis = 1 if tag.value.dim() > 1 else 0
        index = _units_along(tag.value, axis)
        if shape(weight) == (tag.value.shape[axis],) and index is not None and result.uses.get(found[0]) == 1 \
                and bool((index >= 0).all()):
            result.norm_slots.append((found[0], 0, index))
            return tag
    return result.fail(node, "PReLU's slopes do not follow the action") and None


def _pool(node, tag, mode, result):
    if mode in (Mode.GL, Mode.SHIFT):
        return result.fail(node, "pooling breaks a linear action") and None
    value = tag.value
    rank = value.dim()
    spatial = tuple(range(2, rank))
    if mode is not Mode.SCALAR and not all(_constant_along(value, a) for a in spatial):
        return result.fail(node, "pooling mixes units") and None
    out_shape = shape(node) if shape(node) is not None else shape(next(iter(node.users)))
    index = value
    for a in spatial:
        index = index.narrow(a, 0, 1)
    return _Tag(index.expand(out_shape) if out_shape else index, tag.degree)


def _dims(node, rank: int) -> tuple[tuple[int, ...], bool]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", None)
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None or dims == []:
        dims = tuple(range(rank))
    elif isinstance(dims, int):
        dims = (dims,)
    return tuple(d % rank for d in dims), bool(keep)


def _reduce(node, tag, mode, result):
    value = tag.value
    dims, keep = _dims(node, value.dim())
    if mode is Mode.SHIFT:
        if packet(node) in ("mean", "sum"):
            out = value.mean(dim=dims, keepdim=keep) if packet(node) == "mean" else value.sum(dim=dims, keepdim=keep)
            return _Tag(out)
        if packet(node) in ("amax", "amin") and all(_constant_along(value, d) for d in dims):
            return _Tag(value.amax(dim=dims, keepdim=keep))  # max(x + c) = max(x) + c, c constant along dims
        return result.fail(node, "a nonlinear reduction breaks a shift") and None
    varying = [a for a in range(value.dim()) if not _constant_along(value, a)]
    if mode is Mode.PERM and varying and set(varying) <= set(dims) and bool((value >= 0).all()) \
            and packet(node) in ("mean", "sum", "amax", "amin", "var", "std", "norm"):
        return None  # a symmetric function of all the units: invariant under their permutation
    if mode is not Mode.SCALAR and not all(_constant_along(value, d) for d in dims):
        return result.fail(node, "a reduction over the units mixes them") and None
    out = value.amax(dim=dims, keepdim=keep) if dims else value
    return _Tag(out, tag.degree * _REDUCE[packet(node)])


def _broadcast_constant_on_units(other_shape, value: Tensor) -> bool:
    """An untagged operand that cannot vary where the units vary (size 1 on every axis along which
    the tagged idx is not constant)."""
    if other_shape is None:
        return True
    rank = value.dim()
    padded = (1,) * (rank - len(other_shape)) + tuple(other_shape)
    return all(padded[a] == 1 or _constant_along(value, a) for a in range(rank))


def _read_again(tensor, node: fx.Node) -> bool:
    """Whether ``tensor`` has a user after ``node`` in graph order (an in-place ``node`` then changes
    what that user reads; otherwise the update is its own value, as ``x = x + y`` is)."""
    if not isinstance(tensor, fx.Node):
        return False
    later, current = set(), node.next
    while current.op != "root":
        later.add(current)
        current = current.next
    return any(user in later for user in tensor.users if user is not node)


def _binary(node, tags, mode, result, epsilons, traced):
    kind = packet(node).removesuffix("_")  # add_ (x += y) as add where nothing reads x again
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
    ta, tb = tags.get(a) if isinstance(a, fx.Node) else None, tags.get(b) if isinstance(b, fx.Node) else None
    out_shape = shape(node)
    if ta is not None and tb is not None:
        va, vb = (t.value.expand(out_shape) if out_shape else t.value for t in (ta, tb))
        if mode is Mode.SHIFT:
            if kind in ("add", "sub"):
                return _Tag(va + vb if kind == "add" else va - vb)
            return result.fail(node, "a product of two shifted tensors") and None
        if kind in ("add", "sub"):
            if ta.degree != tb.degree:
                return result.fail(node, "adds tensors of different degree") and None
            degree = ta.degree
        elif kind == "mul":
            if mode is Mode.GL:
                return result.fail(node, "a product of two transformed tensors") and None
            degree = ta.degree + tb.degree
        else:
            if mode is Mode.GL or mode is Mode.PERM:
                return result.fail(node, "a quotient of two transformed tensors") and None
            degree = ta.degree - tb.degree
        if degree == 0:
            result.absorbed = True  # x * rsqrt(mean x^2): the normalisation of a hand-written norm
        if mode is Mode.SCALAR:
            return _Tag(va, degree) if degree != 0 else None
        if mode is Mode.DIAG:
            both = (va >= 0) & (vb >= 0)
            if not bool(((va >= 0) == (vb >= 0)).all()):
                return result.fail(node, "combines transformed and untransformed entries") and None
            for x, y in set(zip(va[both].tolist(), vb[both].tolist())):
                if x != y:
                    result.links.link(x, y, False)
            return _Tag(va, degree) if degree != 0 else None
        if not bool((va == vb).all()):
            return result.fail(node, "combines differently ordered units") and None
        return _Tag(va, degree)
    tag, other = (ta, b) if ta is not None else (tb, a)
    tagged_first = ta is not None
    value = tag.value
    if isinstance(other, (int, float)) or other is None:
        if kind in ("add", "sub", "rsub"):
            if mode in (Mode.PERM, Mode.SHIFT):
                return tag
            if mode in (Mode.DIAG, Mode.SCALAR) and (tag.degree == 0 or node.name in epsilons):
                return tag
            return result.fail(node, "adds a constant to a transformed tensor") and None
        if kind == "div" and not tagged_first:
            if mode in (Mode.DIAG, Mode.SCALAR):
                return _Tag(value, -tag.degree)
            return result.fail(node, "divides by a transformed tensor") and None
        if mode is Mode.SHIFT:
            return _Tag(value * float(other) if kind == "mul" else value / float(other))
        return tag
    other_shape = shape(other)
    if kind in ("add", "sub", "rsub"):
        if mode is Mode.SHIFT:
            return _Tag(value.expand(out_shape).clone() if out_shape else value)
        if mode is Mode.PERM and _broadcast_constant_on_units(other_shape, value):
            return _Tag(value.expand(out_shape) if out_shape else value)
        if mode in (Mode.DIAG, Mode.SCALAR) and tag.degree == 0:
            return None
        return result.fail(node, "adds an untransformed tensor (e.g. a residual) to the transformed units",
                           partner=other)
    if kind == "div" and not tagged_first:
        if mode in (Mode.DIAG, Mode.SCALAR):
            return _Tag(value.expand(out_shape), -tag.degree)
        return result.fail(node, "divides by a transformed tensor") and None
    if mode is Mode.SHIFT:
        factor = torch.randn(other_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(node.name)))
        return _Tag(value * factor if kind == "mul" else value / factor)
    if mode is Mode.DIAG and kind == "mul" and tag.degree == 1 and result.gains:
        # a learned per-unit multiplier (a layer scale, x + g * branch) compensates the units' factors
        # itself: g_i -> g_i / a_i, one more consumer (in_dim 0), and the product is unchanged
        found = _param(other, traced)
        index = _units_along(value, -1)
        if found is not None and result.uses.get(found[0]) == 1 and other_shape == (value.shape[-1],) \
                and index is not None and bool((index >= 0).all()):
            result.consumers.append(Consumer(node, found[0], 0, index))
            result.gained = True
            return None
    if mode in (Mode.DIAG, Mode.SCALAR):
        return _Tag(value.expand(out_shape) if out_shape else value, tag.degree)
    if _broadcast_constant_on_units(other_shape, value):
        return _Tag(value.expand(out_shape) if out_shape else value, tag.degree)
    gain = _elementwise_param(other, traced) if mode is Mode.PERM and kind == "mul" else None
    index = _units_along(value, -1) if gain is not None else None
    if gain is not None and result.uses.get(gain[0]) == 1 and other_shape == (value.shape[-1],) \
            and index is not None and bool((index >= 0).all()):  # a gain on the units: permuted with them
        result.norm_slots.append((gain[0], 0, index))
        return _Tag(value.expand(out_shape) if out_shape else value, tag.degree)
    if mode is Mode.GL and result.ok:
        result.blocked = frozenset(int(u) for u in value[value >= 0].unique().tolist())
    return result.fail(node, "multiplies the units by a tensor that varies across them", partner=other)


def _masked(node, tags, mode, result):
    kind = packet(node)
    if kind == "where" and len(node.args) > 2 and any(isinstance(a, fx.Node) and a in tags
                                                      for a in (node.args[0], node.args[2])):
        return _where(node, tags, mode, result)  # a transformed condition or fill
    data = node.args[1] if kind == "where" else node.args[0]
    tag = tags.get(data) if isinstance(data, fx.Node) else None
    mask = node.args[0] if kind == "where" else node.args[1]
    if tag is None or (isinstance(mask, fx.Node) and mask in tags):
        return result.fail(node, "a transformed tensor used as a mask or fill") and None
    if mode is Mode.SHIFT:
        return _Tag(tag.value.expand(shape(node)).clone())
    if mode is Mode.PERM and _broadcast_constant_on_units(shape(mask), tag.value):
        return _Tag(tag.value.expand(shape(node)))
    return result.fail(node, "masking breaks the action") and None


def _where(node, tags, mode, result):
    """where(c, a, b) with the condition or both branches transformed (leaky ReLU written as
    where(x > 0, x, 0.2 x)): elementwise, so permuted with the units where every transformed operand
    is on the same units; under a positive scale homogeneous where both branches have one degree on
    the same units (or a branch is the number 0) and the condition is unchanged (a sign test)."""
    cond, a, b = node.args[0], node.args[1], node.args[2]
    out_shape = shape(node)
    tc, ta, tb = (tags.get(x) if isinstance(x, fx.Node) else None for x in (cond, a, b))
    branches = [t for t in (ta, tb) if t is not None]
    if mode in (Mode.GL, Mode.SHIFT) or not branches:
        return result.fail(node, "a transformed condition or branch of where") and None
    if any(isinstance(x, fx.Node) and x not in tags for x in (a, b)):
        return result.fail(node, "where with an untransformed tensor branch") and None
    if any(not isinstance(x, fx.Node) and x != 0 for x in (a, b)):
        return result.fail(node, "where with a nonzero number branch") and None
    values = [t.value.expand(out_shape) if out_shape else t.value for t in branches]
    if len({t.degree for t in branches}) > 1 or any(not bool((v == values[0]).all()) for v in values[1:]):
        return result.fail(node, "where joins differently transformed branches") and None
    if mode is Mode.PERM and tc is not None and not bool((tc.value.expand(out_shape) == values[0]).all()):
        return result.fail(node, "where with a condition on other units") and None
    if mode is Mode.PERM and tc is None and not _broadcast_constant_on_units(shape(cond), values[0]):
        return result.fail(node, "where with a condition that varies across the units") and None
    if mode in (Mode.DIAG, Mode.SCALAR) and tc is not None:
        return result.fail(node, "a condition that a scale of the units changes") and None
    return _Tag(values[0], branches[0].degree)


def _softmax(node, tag, mode, result):
    value = tag.value
    dim = node.args[1] % value.dim()
    if mode is Mode.SHIFT:
        if _constant_along(value, dim):
            result.absorbed = True
            return None
        return result.fail(node, "a shift that varies along the softmax axis") and None
    if mode is Mode.PERM:
        whole = bool((value >= 0).all()) if not _constant_along(value, dim) else True
        return tag if whole else result.fail(node, "a softmax over part of the units") and None
    return result.fail(node, "a softmax does not commute with the action") and None


def _statistics_of_input(node) -> bool:
    """Whether a batch or instance norm normalises by its input's statistics (``training``,
    ``use_input_stats``: read where the operation's schema puts it; True where it is not given)."""
    schema = getattr(node.target, "_schema", None)
    names = [argument.name for argument in schema.arguments] if schema is not None else []
    for name in ("training", "use_input_stats"):
        if name in names:
            position = names.index(name)
            if position < len(node.args):
                return bool(node.args[position])
            return bool(node.kwargs.get(name, True))
    return True


def _group_norm(node, value, mode, result):
    """group_norm(x, G, ...) normalises each sample's channels [g C/G, (g+1) C/G) together: a scale
    common to the units of a group is absorbed (the units linked to one factor: a scale symmetry per
    group), a scale that differs inside a group, or reaches part of it, is not."""
    if mode is not Mode.DIAG:
        return result.fail(node, "a group norm mixes units") and None
    index = _units_along(value, 1)
    groups = node.args[1] if len(node.args) > 1 else None
    if index is None or not isinstance(groups, int) or groups < 1 or len(index) % groups:
        return result.fail(node, "a group norm whose channel axis does not carry the units") and None
    for block in index.reshape(groups, -1):
        transformed = block >= 0
        if not bool(transformed.any()):
            continue
        if not bool(transformed.all()):
            return result.fail(node, "a group norm over partly transformed units") and None
        first = int(block[0])
        for unit in set(block.tolist()) - {first}:
            result.links.link(first, unit, False)
    result.absorbed = True
    return None


def _norm(node, tags, mode, result, traced):
    kind = packet(node)
    x = node.args[0]
    tag = tags.get(x)
    if tag is None or any(a in tags for a in node.all_input_nodes if a is not x):
        return result.fail(node, "a transformed tensor in a norm's parameters") and None
    value = tag.value
    if kind in _BATCH_NORM:
        axis, weight_at = 1, (1, 2)
        if not _statistics_of_input(node):
            return result.fail(node, "a batch norm in eval mode is affine, not scale-invariant") and None
    elif kind == "group_norm":
        axis, weight_at = None, ()
    else:
        normalized = node.args[1]
        if len(normalized) != 1:
            return result.fail(node, "a norm over several axes") and None
        axis, weight_at = -1, ((2, 3) if kind == "layer_norm" else (2,))
    if mode is Mode.SCALAR:
        if bool((value >= 0).all()):
            result.absorbed = True
            return None
        return result.fail(node, "a norm over partly transformed units") and None
    if axis is None:
        return _group_norm(node, value, mode, result)
    index = _units_along(value, axis)
    if index is None:
        return result.fail(node, "a norm whose axis does not carry the units") and None
    if mode is Mode.DIAG and kind in _BATCH_NORM:
        result.absorbed = True
        return None
    if mode is Mode.PERM:
        if bool((index < 0).any()):
            return result.fail(node, "a norm over part of the units") and None
        for position in weight_at:
            affine = node.args[position] if len(node.args) > position else None
            if not isinstance(affine, fx.Node):
                continue
            # a parameter, or one plus a constant (LayerNorm1P's 1 + w): permuted with the units
            found = _elementwise_param(affine, traced)
            if found is None:
                return result.fail(node, "a norm whose gain or bias is computed (not a parameter)") and None
            result.norm_slots.append((found[0], 0, index))
        # a functionalised batch norm returns (output, statistics...): the units are item 0's, and
        # reading a statistic (item 1 on) fails, as no walk follows one
        return _Tag((tag.value,), tag.degree) if isinstance(node.meta.get("val"), (tuple, list)) else tag
    return result.fail(node, "a norm over the units does not commute with a per-unit action") and None


def _contraction(node, tags, mode, result, traced):
    kind = packet(node)
    args = node.args
    if kind == "addmm":
        x, w, bias = args[1], args[2], args[0]
    elif kind in _CONV or kind in _CONV_T or kind == "linear":
        x, w, bias = args[0], args[1], (args[2] if len(args) > 2 else None)
    else:
        x, w, bias = args[0], args[1], None
    weight = _param(w, traced) if isinstance(w, fx.Node) else None
    if weight is not None and x in tags and not any(a in tags for a in (w, bias) if isinstance(a, fx.Node)):
        if mode is Mode.PERM and kind in _CONV and _depthwise(node, tags[x].value):
            return _depthwise_permutes(node, tags[x], weight, bias, traced, result)
        if kind == "linear" and mode in (Mode.PERM, Mode.DIAG) and _along_another_axis(tags[x].value):
            # a map along another axis than the units' (an MLP-Mixer's token mixing): it acts on each
            # unit's slice alike, so a permutation passes through it, and a scaling where no bias is added
            if mode is Mode.DIAG and bias is not None:
                return result.fail(node, "a linear map along another axis adds a bias to the scaled units") and None
            return _Tag(tags[x].value.narrow(-1, 0, 1).expand(shape(node)), tags[x].degree)
        return _consume(node, tags[x], weight, kind, mode, result)
    if kind in ("matmul", "bmm"):
        return _product(node, tags, mode, result)
    return result.fail(node, "a transformed tensor enters a linear map's weight") and None


def _along_another_axis(value: Tensor) -> bool:
    """Whether the units live on other axes than the last, which a linear map contracts: the tag is
    the same along the last axis and differs along another (a tag the same everywhere is one unit over
    every column, which the map's weight must compensate)."""
    return value.dim() > 1 and bool((value >= 0).any()) and _constant_along(value, -1) \
        and not all(_constant_along(value, axis) for axis in range(value.dim() - 1))


def _depthwise(node, value: Tensor) -> bool:
    """Whether a convolution gives each input channel its own filter and output channel (groups =
    in channels = out channels: MobileNet's, EfficientNet's, ConvNeXt's depthwise convolutions)."""
    channels = value.shape[1] if value.dim() > 1 else 0
    out = shape(node)
    return channels > 1 and _groups(node) == channels and out is not None and len(out) > 1 and out[1] == channels


def _depthwise_permutes(node, tag, weight, bias, traced, result):
    """A depthwise convolution: channel c's filter (weight row c) and bias are its own, so a permutation
    of the channels permutes them along and the output's channels with it."""
    columns = _units_along(tag.value, 1)
    if columns is None or bool((columns < 0).any()):
        return result.fail(node, "a depthwise convolution over part of the units") and None
    name = weight[0]
    if result.uses.get(name, 1) != 1:
        return result.fail(node, "reaches a weight that is also read elsewhere (tied)") and None
    result.norm_slots.append((name, 0, columns))
    if isinstance(bias, fx.Node):
        found = _param(bias, traced)
        if found is None:
            return result.fail(node, "a depthwise convolution whose bias is computed (not a parameter)") and None
        result.norm_slots.append((found[0], 0, columns))
    out = shape(node)
    view = [1] * len(out)
    view[1] = len(columns)
    return _Tag(columns.reshape(view).expand(out), tag.degree)


def _consume(node, tag, weight, kind, mode, result):
    """A linear map with a parameter weight reads the transformed units as its input columns."""
    if mode in (Mode.SCALAR, Mode.SHIFT):
        return result.fail(node, "reaches a linear map before any norm or softmax") and None
    value = tag.value
    filters = 0  # depthwise: how many output channels (filters) read each input channel alone
    if kind in _CONV_T and _groups(node) != 1:
        return result.fail(node, "a grouped transposed convolution ties input channels to output channels") and None
    if kind in _CONV:
        groups = _groups(node)
        if groups != 1 and not (mode is Mode.DIAG and groups == value.shape[1]):
            return result.fail(node, "a grouped convolution ties input channels to output channels") and None
        if groups != 1:
            filters = (shape(node) or (0, 0))[1] // groups
    columns = _units_along(value, 1 if kind in _CONV or kind in _CONV_T else -1)
    if columns is None:
        return result.fail(node, "a linear map whose input axis does not carry the units") and None
    if mode is Mode.DIAG and tag.degree != 1:
        return result.fail(node, f"reaches a linear map at degree {tag.degree}") and None
    name, order = weight
    if result.uses.get(name, 1) != 1:
        return result.fail(node, "reaches a weight that is also read elsewhere (tied)") and None
    # a transposed convolution's weight is (in, out / groups, ...): its input channels are dim 0; x @ W
    # (mm, matmul, bmm; W (in, out) or (batch, in, out), Llama 4's experts): W's second-to-last
    in_dim = (order[1] if kind in ("linear",) or kind in _CONV or kind in GROUPED_PRODUCTS
              else order[0] if kind in _CONV_T else order[-2])
    if filters:
        # a depthwise filter is its output channel's alone: the compensation 1/a_c goes on the rows
        # (dim 0) of the filters that read input channel c
        in_dim, columns = order[0], columns.repeat_interleave(filters)
    result.consumers.append(Consumer(node, name, in_dim, columns))
    return None


def _product(node, tags, mode, result, a=None, b=None):
    """matmul / bmm of two activations (``a`` @ ``b``, by default the node's first two arguments):
    q @ k^T (a contraction of units) or probabilities @ v."""
    a, b = (node.args[0], node.args[1]) if a is None else (a, b)
    ta, tb = tags.get(a), tags.get(b)
    if ta is not None and tb is not None:
        if mode not in (Mode.GL, Mode.DIAG):
            return result.fail(node, "a product of two transformed tensors") and None
        # units of a along its last axis meet units of b along its second-to-last axis
        qa = ta.value
        kb = tb.value.transpose(-1, -2)
        return _pair(node, qa, kb, mode, result)
    if tb is not None:
        value = tb.value
        if mode is Mode.SHIFT:
            # small integers: every sum exact whatever order the BLAS adds in (random floats summed in
            # another order at the matrix's edge columns differ in the last bit, and a shift constant along
            # the keys read as varying on some CPUs)
            left = torch.randint(-4, 5, shape(a), generator=torch.Generator().manual_seed(1)).to(torch.float64)
            return _Tag(left @ value)
        if not _constant_along(value, -2):
            return result.fail(node, "a key without its query (a product contracting the units)", partner=a) and None
        return _values(node, value, tb.degree, mode, result)
    value = ta.value
    if mode is Mode.SHIFT or not _constant_along(value, -1):
        return result.fail(node, "a query without its key (a product contracting the units)", partner=b) and None
    return _Tag(value.narrow(-1, 0, 1).expand(shape(node)), ta.degree)


def _pair(node, q: Tensor, k: Tensor, mode: Mode, result: Walk):
    """q (..., Tq, d) and k (..., Tk, d) contracted along d: per head row, q's units against k's."""
    if not (_constant_along(q, -2) and _constant_along(k, -2)):
        return result.fail(node, "query/key units vary along the sequence") and None
    q_rows = q.narrow(-2, 0, 1).reshape(-1, q.shape[-1])
    k_rows = k.narrow(-2, 0, 1).expand(*q.shape[:-2], 1, k.shape[-1]).reshape(-1, k.shape[-1])
    untransformed = q_rows < 0
    if bool(untransformed.all()) and bool((k_rows < 0).all()):
        # every dimension of query and key left out (a fused query-key-value projection whose rotary
        # query and key are masked while the walk follows its values): the scores are untransformed
        return None
    if bool(untransformed.any()) or bool((k_rows < 0).any()):
        # GL on part of a head (the dimensions of a partial rotary embedding that no rotation
        # multiplies): the untransformed dimensions of query and key must meet each other
        if mode is not Mode.GL or not torch.equal(untransformed, k_rows < 0) or bool(untransformed.all(-1).any()):
            return result.fail(node, "a query or key with untransformed dimensions") and None
    seen = set()
    for qr, kr, skip in zip(q_rows, k_rows, untransformed):
        qr, kr = qr[~skip], kr[~skip]
        key = (tuple(qr.tolist()), tuple(kr.tolist()))
        if key in seen:
            continue
        seen.add(key)
        if mode is Mode.DIAG:
            for x, y in zip(key[0], key[1]):
                result.links.link(x, y, True)
        else:
            result.pairs.append((node, qr.clone(), kr.clone()))
    return None


def _attention(node, tags, mode, result):
    q, k, v = node.args[0], node.args[1], node.args[2]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node) and mask in tags:
        if not (mode is Mode.SHIFT and _constant_along(tags[mask].value, -1)):
            return result.fail(node, "a transformed attention mask") and None
        result.absorbed = True  # an additive mask shifted equally along the keys: softmax absorbs it
    tq, tk, tv = tags.get(q), tags.get(k), tags.get(v)
    out = None
    if tq is not None or tk is not None:
        if mode is Mode.SHIFT:
            if tq is None and tk is not None and _constant_along(tk.value, -2):
                result.absorbed = True  # q . (k + c) shifts every score of a query equally
            else:
                return result.fail(node, "a shift of queries, or of keys that varies along the sequence") and None
        elif tq is None or tk is None or mode not in (Mode.GL, Mode.DIAG):
            return result.fail(node, "a query without its key (or a key without its query)",
                                partner=k if tk is None else q) and None
        else:
            groups = tq.value.shape[-3] // tk.value.shape[-3] if tq.value.dim() >= 3 else 1
            keys = tk.value.repeat_interleave(groups, dim=-3) if groups > 1 else tk.value
            _pair(node, tq.value, keys, mode, result)
            if not result.ok:
                return None
    if tv is not None:
        value = tv.value
        out_shape = shape(node)
        if mode is Mode.SHIFT:
            if not _constant_along(value, -2):
                return result.fail(node, "a value shift that varies along the sequence") and None
            groups = out_shape[-3] // value.shape[-3] if value.dim() >= 3 else 1
            value = value.repeat_interleave(groups, dim=-3) if groups > 1 else value
            return _Tag(value.narrow(-2, 0, 1).expand(out_shape).clone())
        if not _constant_along(value, -2):
            return result.fail(node, "value units vary along the sequence") and None
        groups = out_shape[-3] // value.shape[-3] if value.dim() >= 3 else 1
        value = value.repeat_interleave(groups, dim=-3) if groups > 1 else value
        out = _values(node, value, tv.degree, mode, result)
    return out


def _values(node, value: Tensor, degree, mode: Mode, result: Walk) -> _Tag | None:
    """Attention weights (per head) times values: linear in each value row, so a per-unit scale or a
    GL element on a head's block passes; a permutation may not move units across heads."""
    if mode is Mode.PERM and not all(_constant_along(value, a) for a in range(value.dim() - 1)):
        return result.fail(node, "a permutation across attention heads") and None
    if mode is Mode.GL:
        rows = value.narrow(-2, 0, 1).reshape(-1, value.shape[-1])
        for row in {tuple(r.tolist()) for r in rows}:
            result.value_blocks.append((node, torch.tensor(row)))
    return _Tag(value.narrow(-2, 0, 1).expand(shape(node)), degree)

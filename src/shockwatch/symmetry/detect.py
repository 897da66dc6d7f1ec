r"""Find the continuous symmetries of a real ``nn.Module`` by tracing its graph (torch.fx).

Rules (Kunin et al. 2021, §3; Miyagawa 2026, §5):
- translation: a Linear whose output is the model's output (logits fed to softmax /
  cross-entropy), or feeds an explicit (log-)softmax: each input column W[:, j] and the bias
  vector, since adding c to all logits changes nothing.
- scale: a Linear/Conv followed directly by BatchNorm (each output unit: row j and bias j, under
  batch statistics, i.e. in training mode) or by LayerNorm / RMSNorm over its features (the whole
  layer at once: normalisation is per sample, across units).
- rescale: a unit j whose pre-activation parameters (the Linear/Conv row j and bias j, or the
  affine weight/bias j of a norm right after it) pass through positively homogeneous maps only
  (ReLU, LeakyReLU, identity, dropout, max/avg pooling, flatten, multiplication or division by a
  fixed number) into exactly one Linear/Conv,
  whose input columns for unit j are the outgoing slots (a block of columns after a flatten).
- GELU, SiLU, tanh, sigmoid are not positively homogeneous: no rescale is reported through them.
- permutation: the units of a layer (rows of its Linear/Conv with their biases and per-unit norm
  parameters, and the matching columns of the one consumer) through elementwise maps of any kind;
  one discrete symmetry per layer of >= 2 units.
Every branch (a unit read by two consumers, e.g. a residual add) stops the search: nothing is
guessed. Modules with parameters that no rule covers are listed in ``SymmetrySet.unanalysed``.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..models.gpt import CausalSelfAttention
from .group import Kind, Slot, Symmetry, SymmetrySet, act, act_gl, permute, random_gl_element

__all__ = ["find_symmetries"]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYER_NORM = (nn.LayerNorm, nn.RMSNorm)
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu, F.dropout, F.max_pool1d, F.max_pool2d,
                          F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool2d)
_SOFTMAX_FUNCTIONS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
# elementwise but not positively homogeneous: they commute with permutations of units only
_ELEMENTWISE_MODULES = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Mish, nn.Hardtanh)
_ELEMENTWISE_FUNCTIONS = (F.gelu, F.silu, torch.tanh, torch.sigmoid, F.elu, F.softplus)
_KNOWN_PARAMETRISED = _AFFINE + _BATCH_NORM + _LAYER_NORM


def find_symmetries(model: nn.Module, example_input: torch.Tensor, *, logits: bool = True,
                    check_samples: int = 16) -> SymmetrySet:
    """The translation, scale, rescale, permutation and GL symmetries of ``model`` (module docstring).

    ``example_input``: one batch the model accepts (used to trace shapes on a copy: the model's own
    parameters and buffers are not touched). ``logits``: the model's output feeds a softmax /
    cross-entropy (classifiers); set False for regression outputs (no translation).
    A model torch.fx cannot trace as a whole (data-dependent control flow) is analysed child by
    child, each with the input it receives in one forward pass: symmetries within a child are
    found, none across children's boundaries is claimed; such modules are listed in
    ``SymmetrySet.partial``, children that cannot be analysed at all in ``unanalysed``.
    Every candidate is checked on ``example_input`` before it is reported: the model's output
    (log-probabilities when ``logits``) under a finite group element, for all candidates of a kind
    at once and for ``check_samples`` of them one by one; a kind whose joint check fails is
    checked candidate by candidate. A candidate whose output moves by more than 1e-2 (relative) is
    rejected and named in ``SymmetrySet.rejected``; the others carry the measured change as
    ``Symmetry.defect`` where they were checked alone (BatchNorm's eps shows there, ~1e-6).
    Raises: ValueError for a model without parameters or an example input the model does not accept.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    parameters = dict(model.named_parameters())
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to analyse")
    device = next(iter(parameters.values())).device
    found: list[Symmetry] = []
    partial: list[str] = []
    unanalysed: list[str] = []
    _analyse(copy.deepcopy(model), example_input, logits, "", found, partial, unanalysed)
    covered: set[str] = set()  # parametrised modules that a structural rule below analyses
    for name, module in model.named_modules():
        if isinstance(module, CausalSelfAttention):
            found.extend(_attention_symmetries(name, module))
        elif _is_hf_gpt2_attention(module):
            found.extend(_hf_gpt2_attention_symmetries(name, module))
            covered.update({f"{name}.c_attn", f"{name}.c_proj"})
        elif _is_hf_gpt2_mlp(module):
            found.extend(_hf_gpt2_mlp_symmetries(name, module))
            covered.update({f"{name}.c_fc", f"{name}.c_proj"})
    unanalysed += [
        name for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) and not isinstance(module, _KNOWN_PARAMETRISED)
        and name not in unanalysed and name not in covered
    ]
    unanalysed = [name for name in unanalysed if name not in covered]
    kept, rejected = _checked_candidates(model, example_input, found, logits, check_samples)
    sizes = tuple(((name, dim), size) for name, p in parameters.items() for dim, size in enumerate(p.shape))
    return SymmetrySet(tuple(kept), device, tuple(unanalysed), sizes, tuple(partial), tuple(rejected))


def _analyse(module: nn.Module, example_input, logits: bool, prefix: str, found: list[Symmetry],
             partial: list[str], unanalysed: list[str], inputs: dict[str, object] | None = None) -> None:
    """Trace ``module`` and collect its symmetries (names prefixed); else recurse into children.

    ``inputs``: every descendant's input in one forward pass of the root (qualified name ->
    its single positional tensor, or None), recorded on the first fallback.
    """
    graph_module = _traced(module, example_input)
    if graph_module is not None:
        modules = dict(graph_module.named_modules())
        parameters = dict(module.named_parameters())
        for node in graph_module.graph.nodes:
            if node.op == "call_module" and isinstance(modules[node.target], _AFFINE):
                found.extend(_prefixed(sym, prefix) for sym in _symmetries_of_producer(node, modules, parameters, logits))
        return
    if inputs is None:  # the root: its own input must work
        inputs = _descendant_inputs(module, example_input)
    partial.append(prefix.rstrip(".") or "<model>")
    for name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue
        qualified = f"{prefix}{name}"
        child_input = inputs.get(qualified)
        if child_input is None and not any(True for _ in child.children()):
            unanalysed.append(qualified)  # a leaf never called, or called with several inputs
            continue
        _analyse(child, child_input, False, qualified + ".", found, partial, unanalysed, inputs)


def _traced(module: nn.Module, example_input) -> fx.GraphModule | None:
    """The module traced by torch.fx with shapes propagated, or None where either step fails."""
    if example_input is None:
        return None
    try:
        graph_module = fx.symbolic_trace(module)
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    except Exception:  # torch.fx raises many types (control flow, unsupported calls, kwargs)
        return None
    return graph_module


def _descendant_inputs(root: nn.Module, example_input) -> dict[str, object]:
    """One forward pass of ``root`` recording each descendant's single positional tensor input."""
    inputs: dict[str, object] = {}

    def record(name):
        def hook(_module, args, kwargs):
            single = len(args) == 1 and isinstance(args[0], torch.Tensor) and not any(
                isinstance(v, torch.Tensor) for v in kwargs.values())
            inputs.setdefault(name, args[0] if single else None)
        return hook

    hooks = [module.register_forward_pre_hook(record(name), with_kwargs=True)
             for name, module in root.named_modules() if name]
    try:
        with torch.no_grad():
            root(example_input)
    except Exception as error:
        raise ValueError(f"{type(root).__name__} does not accept the example input "
                         f"(shape {tuple(getattr(example_input, 'shape', ()))}): {type(error).__name__}: {error}") from None
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def _prefixed(sym: Symmetry, prefix: str) -> Symmetry:
    """The same symmetry with parameter names and the label's layer name under ``prefix``."""
    if not prefix:
        return sym
    kind, _, rest = sym.label.partition("/")
    slots = lambda slots: tuple(dataclasses.replace(s, param=prefix + s.param) for s in slots)  # noqa: E731
    return dataclasses.replace(sym, label=f"{kind}/{prefix}{rest}", incoming=slots(sym.incoming),
                               outgoing=slots(sym.outgoing))


def _module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is(node: fx.Node, modules, module_types: tuple, functions: tuple = ()) -> bool:
    module = _module(node, modules)
    if module is not None:
        return isinstance(module, module_types)
    return node.op == "call_function" and node.target in functions


def _is_constant_scaling(node: fx.Node) -> bool:
    """x * c, c * x or x / c with c a Python number (not a tensor, not another node)."""
    if node.op != "call_function" or node.target not in (operator.mul, operator.truediv, torch.mul, torch.div):
        return False
    numbers = [arg for arg in node.args if isinstance(arg, (int, float)) and not isinstance(arg, bool)]
    nodes = [arg for arg in node.args if isinstance(arg, fx.Node)]
    if node.target in (operator.truediv, torch.div):
        return len(node.args) == 2 and isinstance(node.args[0], fx.Node) and node.args[1] in numbers and node.args[1] != 0
    return len(numbers) == 1 and len(nodes) == 1


def _is_flatten(node: fx.Node, modules) -> bool:
    module = _module(node, modules)
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    return False


def _units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _unit_slots(name: str, module: nn.Module, j: int) -> tuple[Slot, ...]:
    slots = [Slot(f"{name}.weight", 0, j, j + 1)]
    if getattr(module, "bias", None) is not None:
        slots.append(Slot(f"{name}.bias", 0, j, j + 1))
    return tuple(slots)


def _symmetries_of_producer(node: fx.Node, modules, parameters, logits: bool) -> list[Symmetry]:
    name = node.target
    producer = modules[name]
    units = _units(producer)
    out: list[Symmetry] = []
    user = _sole_user(node)
    if user is None:
        return out
    # translation: logits straight out, or through an explicit softmax
    if isinstance(producer, nn.Linear) and (
        (logits and user.op == "output") or (_is(user, modules, (nn.Softmax, nn.LogSoftmax), _SOFTMAX_FUNCTIONS))
    ):
        out.extend(Symmetry(Kind.TRANSLATION, f"translation/{name}/column{j}", (Slot(f"{name}.weight", 1, j, j + 1),))
                   for j in range(producer.in_features))
        if producer.bias is not None:
            out.append(Symmetry(Kind.TRANSLATION, f"translation/{name}/bias", (Slot(f"{name}.bias", 0, 0, units),)))
        return out
    # scale: a normalisation right after the producer
    unit_params: Callable[[int], tuple[Slot, ...]] = lambda j: _unit_slots(name, producer, j)  # noqa: E731
    chain_start = user
    norm = _module(user, modules)
    if isinstance(norm, _BATCH_NORM):
        out.extend(Symmetry(Kind.SCALE, f"scale/{name}/unit{j}", _unit_slots(name, producer, j)) for j in range(units))
    elif isinstance(norm, _LAYER_NORM) and isinstance(producer, nn.Linear) and tuple(norm.normalized_shape) == (units,):
        whole = [Slot(f"{name}.weight", 0, 0, units)]
        if producer.bias is not None:
            whole.append(Slot(f"{name}.bias", 0, 0, units))
        out.append(Symmetry(Kind.SCALE, f"scale/{name}", tuple(whole)))
    per_unit_norm = isinstance(norm, _BATCH_NORM) or (
        isinstance(norm, _LAYER_NORM) and isinstance(producer, nn.Linear) and tuple(norm.normalized_shape) == (units,))
    if isinstance(norm, _BATCH_NORM + _LAYER_NORM) and not per_unit_norm:
        return out  # a norm over other axes mixes the units: nothing more is claimed
    rescalable = True
    if per_unit_norm:
        if getattr(norm, "weight", None) is None:
            rescalable = False  # no affine weight: the norm fixes each unit's scale
        else:
            norm_name = user.target
            has_bias = getattr(norm, "bias", None) is not None
            unit_params = lambda j: tuple(  # noqa: E731
                [Slot(f"{norm_name}.weight", 0, j, j + 1)] + ([Slot(f"{norm_name}.bias", 0, j, j + 1)] if has_bias else []))
        chain_start = _sole_user(user)
        if chain_start is None:
            return out
    # permutation: through elementwise maps of any kind into exactly one consumer
    consumer, block = _consumer(chain_start, modules, homogeneous_only=False)
    if consumer is not None and units >= 2:
        per_unit = [Slot(f"{name}.weight", 0, 0, units)]
        if getattr(producer, "bias", None) is not None:
            per_unit.append(Slot(f"{name}.bias", 0, 0, units))
        if chain_start is not user:  # a norm with affine parameters sits between
            per_unit += [Slot(f"{user.target}.{p}", 0, 0, units) for p in ("weight", "bias")
                         if getattr(norm, p, None) is not None]
        out.append(Symmetry(Kind.PERMUTATION, f"permutation/{name}", tuple(per_unit),
                            (Slot(f"{consumer.target}.weight", 1, 0, units * block),)))
    # rescale: through positively homogeneous maps into exactly one consumer
    consumer, block = _consumer(chain_start, modules, homogeneous_only=True)
    if consumer is not None and rescalable:
        consumer_name = consumer.target
        out.extend(
            Symmetry(Kind.RESCALE, f"rescale/{name}/unit{j}", unit_params(j),
                     (Slot(f"{consumer_name}.weight", 1, j * block, (j + 1) * block),))
            for j in range(units)
        )
    return out


def _consumer(node: fx.Node | None, modules, homogeneous_only: bool) -> tuple[fx.Node | None, int]:
    """The Linear/Conv reached from ``node`` through per-unit maps (positively homogeneous ones
    only, or any elementwise map), and how many of its input columns each unit feeds (1, or the
    spatial size after a flatten)."""
    block = 1
    while node is not None:
        consumer = _module(node, modules)
        if isinstance(consumer, _AFFINE):
            if isinstance(consumer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and consumer.groups != 1:
                return None, 1
            return node, block
        if _is(node, modules, _HOMOGENEOUS_MODULES + _POOL_MODULES, _HOMOGENEOUS_FUNCTIONS):
            pass  # ReLU, max(x, slope x), pooling and dropout commute with a positive per-unit scale
        elif not homogeneous_only and _is(node, modules, _ELEMENTWISE_MODULES, _ELEMENTWISE_FUNCTIONS):
            pass
        elif _is_constant_scaling(node):
            pass  # x * c, x / c (a fixed number, e.g. NTK's 1/sqrt(width)): linear, so it commutes too
        elif _is_flatten(node, modules) and block == 1:
            shape = node.args[0].meta["tensor_meta"].shape
            block = int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
        else:
            return None, 1
        node = _sole_user(node)
    return None, 1


def _attention_symmetries(name: str, attention: CausalSelfAttention) -> list[Symmetry]:
    """Per head h (rows h*d..(h+1)*d of q, k, v and those columns of o): GL(d) on (W_Q, W_K) and on
    (W_V, W_O^T); the key bias, irrelevant to a softmax over keys (q.(k + c) shifts every score of
    a query equally), as d translations per head; and the permutation of the heads."""
    d, heads = attention.d_head, attention.n_head
    out: list[Symmetry] = []

    def rows(projection: str, lo: int, hi: int) -> tuple[Slot, Slot]:
        return Slot(f"{name}.{projection}.weight", 0, lo, hi), Slot(f"{name}.{projection}.bias", 0, lo, hi)

    for h in range(heads):
        lo, hi = h * d, (h + 1) * d
        out.append(Symmetry(Kind.GL, f"gl/{name}/head{h}/qk", rows("q", lo, hi), rows("k", lo, hi), units=d))
        out.append(Symmetry(Kind.GL, f"gl/{name}/head{h}/vo", rows("v", lo, hi),
                            (Slot(f"{name}.o.weight", 1, lo, hi),), units=d))
        out.extend(Symmetry(Kind.TRANSLATION, f"translation/{name}/head{h}/key_bias{i}",
                            (Slot(f"{name}.k.bias", 0, lo + i, lo + i + 1),)) for i in range(d))
    if heads >= 2:
        width = heads * d
        incoming = tuple(Slot(f"{name}.{p}.{t}", 0, 0, width) for p in ("q", "k", "v") for t in ("weight", "bias"))
        out.append(Symmetry(Kind.PERMUTATION, f"permutation/{name}/heads", incoming,
                            (Slot(f"{name}.o.weight", 1, 0, width),), units=heads))
    return out


# Hugging Face GPT-2 (optional: recognised by structure, so transformers is never imported here).
# Its Conv1D computes y = x W + b with W of shape (in, out): output units run along dim 1.
def _is_conv1d(module: nn.Module | None, shape: tuple[int, int] | None = None) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2
            and getattr(module, "bias", None) is not None and (shape is None or tuple(weight.shape) == shape))


def _is_hf_gpt2_attention(module: nn.Module) -> bool:
    heads, d_head = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if type(module).__name__ != "GPT2Attention" or not heads or not d_head or getattr(module, "is_cross_attention", False):
        return False
    width = heads * d_head
    return (_is_conv1d(getattr(module, "c_attn", None), (width, 3 * width))
            and _is_conv1d(getattr(module, "c_proj", None), (width, width)))


def _is_hf_gpt2_mlp(module: nn.Module) -> bool:
    c_fc, c_proj = getattr(module, "c_fc", None), getattr(module, "c_proj", None)
    return (type(module).__name__ == "GPT2MLP" and _is_conv1d(c_fc) and _is_conv1d(c_proj)
            and c_fc.weight.shape[1] == c_proj.weight.shape[0])


def _hf_gpt2_attention_symmetries(name: str, attention: nn.Module) -> list[Symmetry]:
    """As ``_attention_symmetries``, on the fused c_attn = [q | k | v] columns and c_proj rows."""
    d, heads = attention.head_dim, attention.num_heads
    width = d * heads
    weight, bias, proj = f"{name}.c_attn.weight", f"{name}.c_attn.bias", f"{name}.c_proj.weight"
    out: list[Symmetry] = []

    def columns(part: int, lo: int, hi: int) -> tuple[Slot, ...]:
        return Slot(weight, 1, part * width + lo, part * width + hi), Slot(bias, 0, part * width + lo, part * width + hi)

    for h in range(heads):
        lo, hi = h * d, (h + 1) * d
        out.append(Symmetry(Kind.GL, f"gl/{name}/head{h}/qk", columns(0, lo, hi), columns(1, lo, hi), units=d))
        out.append(Symmetry(Kind.GL, f"gl/{name}/head{h}/vo", columns(2, lo, hi), (Slot(proj, 0, lo, hi),), units=d))
        out.extend(Symmetry(Kind.TRANSLATION, f"translation/{name}/head{h}/key_bias{i}",
                            (Slot(bias, 0, width + lo + i, width + lo + i + 1),)) for i in range(d))
    if heads >= 2:
        incoming = tuple(slot for part in range(3) for slot in columns(part, 0, width))
        out.append(Symmetry(Kind.PERMUTATION, f"permutation/{name}/heads", incoming, (Slot(proj, 0, 0, width),),
                            units=heads))
    return out


def _hf_gpt2_mlp_symmetries(name: str, mlp: nn.Module) -> list[Symmetry]:
    """The hidden units of c_fc -> elementwise activation -> c_proj can be permuted."""
    units = mlp.c_fc.weight.shape[1]
    if units < 2:
        return []
    incoming = (Slot(f"{name}.c_fc.weight", 1, 0, units), Slot(f"{name}.c_fc.bias", 0, 0, units))
    return [Symmetry(Kind.PERMUTATION, f"permutation/{name}", incoming, (Slot(f"{name}.c_proj.weight", 0, 0, units),))]


_REJECT = 1e-2  # relative output change that marks a candidate as no symmetry at all
_CHECK_AMOUNT = {Kind.TRANSLATION: 0.5, Kind.SCALE: 0.5, Kind.RESCALE: 0.5}


def _checked_candidates(model: nn.Module, example_input, candidates: list[Symmetry], logits: bool,
                        samples: int) -> tuple[list[Symmetry], list[str]]:
    """The candidates that keep the model's output on ``example_input``, with measured defects."""
    if not candidates:
        return [], []
    shadow = copy.deepcopy(model)
    has_batch_norm = any(isinstance(m, _BATCH_NORM) for m in shadow.modules())
    shadow.train(has_batch_norm)  # BatchNorm's scale symmetry needs batch statistics
    for module in shadow.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            module.eval()  # a dropout mask is not equivariant under permutations of heads
    params = {name: p.detach() for name, p in shadow.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in shadow.named_buffers()}
    random = torch.Generator().manual_seed(0)

    def output(values) -> torch.Tensor:
        with torch.no_grad():
            out = torch.func.functional_call(shadow, {**values, **{k: b.clone() for k, b in buffers.items()}},
                                             (example_input,))
        out = getattr(out, "logits", out)
        return torch.log_softmax(out, dim=-1) if logits else out

    reference = output(params)
    size = float(reference.abs().max()) or 1.0

    def change(sym: Symmetry, values) -> dict:
        return _moved(sym, values, random)

    def defect(moved) -> float:
        return float((output(moved) - reference).abs().max()) / size

    by_kind: dict[Kind, list[Symmetry]] = {}
    for sym in candidates:
        by_kind.setdefault(sym.kind, []).append(sym)
    kept: list[Symmetry] = []
    rejected: list[str] = []
    for members in by_kind.values():
        joint = {k: v.clone() for k, v in params.items()}
        for sym in members:
            joint = change(sym, joint)
        individually = members if defect(joint) > _REJECT else members[:: max(1, len(members) // max(samples, 1))][:samples]
        measured = {sym.label: defect(change(sym, params)) for sym in individually}
        for sym in members:
            value = measured.get(sym.label)
            if value is not None and value > _REJECT:
                rejected.append(sym.label)
            else:
                kept.append(dataclasses.replace(sym, defect=value) if value is not None else sym)
    order = {sym.label: i for i, sym in enumerate(candidates)}
    kept.sort(key=lambda sym: order[sym.label])
    return kept, rejected


def _moved(sym: Symmetry, values: dict, random: torch.Generator) -> dict:
    """``values`` moved by one finite element of ``sym``'s group (new tensors where touched)."""
    if sym.kind.one_parameter:
        return act(sym, values, _CHECK_AMOUNT[sym.kind])
    if sym.kind is Kind.PERMUTATION:
        return permute(sym, values, torch.randperm(sym.unit_count, generator=random))
    return act_gl(sym, values, random_gl_element(sym.unit_count, 0.3, random))

r"""A model's whole computation as an ATen graph (torch.export), and its exact float64 evaluation.

``export_model`` accepts inputs as users pass them (a tensor, a tuple of positional inputs, a
dict of keyword inputs such as ``input_ids`` / ``attention_mask`` / ``pixel_values``) and outputs as
models return them (a tensor, a tuple, a ``ModelOutput`` with ``.logits`` or
``.last_hidden_state``). Hugging Face models are traced with ``use_cache=False`` where their forward
takes it (their ``DynamicCache`` does not export).

``ExactEvaluator`` runs the exported graph with every floating tensor in float64, every dtype cast
to a lower precision turned into float64, and every normalisation's epsilon set to 0 in effect
(``EXACT_EPSILON``, 1e-300, which keeps a zero vector at 0 rather than 0 / 0; the known
breaker of the scale symmetries: x / sqrt(var + eps) is homogeneous of degree 0 only at eps = 0).
A true symmetry then leaves the output unchanged to float64 round-off, so the acceptance threshold
follows from round-off (see ``EXACT_TOLERANCE``), not from a guess like 1e-2.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import math
import operator
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, fx, nn

__all__ = ["EXACT_TOLERANCE", "Call", "ExactEvaluator", "TraceError", "TracedModel", "call_arguments", "epsilon_nodes", "export_model", "output_tensors", "unwrapped_model",
           "model_output", "packet"]

# Relative output change (max |change| / max |output|) below which a candidate is exact in float64.
# Measured on the models of tests/symmetry: true symmetries move the output by 1e-16..3e-13 (GL
# elements of condition ~3 on 2-layer Llama/BERT/GPT-2 blocks); the false candidates we could
# construct (depthwise-conv permutation, GELU rescale, query/key GL under rotary embeddings, a gain
# that enters as (1 + w)) by 1e-5..1. 1e-9 leaves four orders of magnitude on either side.
EXACT_TOLERANCE = 1e-9
# the epsilon every normalisation gets in the exact graph: 0 in effect (below 1e-280 of any mean square
# a float64 activation has, so x / sqrt(mean x^2 + eps) is degree 0 to round-off), yet an all-zero
# vector (a padding token's embedding) stays 0 / sqrt(eps) = 0 instead of 0 / 0
EXACT_EPSILON = 1e-300
# the largest constant added under a hand-written norm's square root read as its epsilon (the usual
# 1e-5, 1e-6, TensorFlow ports' 1e-3 are below it)
EPSILON_LIMIT = 1e-2


class TraceError(ValueError):
    """The model could not be traced whole; the message names the blocking operation."""


def unwrapped_model(model):
    """The module a wrapper holds, through every layer of wrapping: torch.compile's ``_orig_mod`` and
    DistributedDataParallel's ``module`` (the same parameter tensors, named without the wrapper's
    prefix); anything else as it is."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module) and type(model).__name__ == "OptimizedModule":
            model = model._orig_mod
        else:
            return model


def model_output(out) -> Tensor:
    """The tensor a loss reads from what a model returns: the tensor itself, ``.logits``,
    ``.last_hidden_state``, or the first tensor of a tuple / list."""
    if isinstance(out, Tensor):
        return out
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, Mapping):
        for value in out.values():
            if isinstance(value, Tensor):
                return value
    if isinstance(out, (tuple, list)):
        for value in out:
            if isinstance(value, Tensor):
                return value
    raise ValueError(f"cannot find the output tensor in a {type(out).__name__}: return a tensor, a tuple "
                     "whose first tensor is the output, or an object with .logits / .last_hidden_state")


@dataclass(frozen=True, eq=False)
class Call:
    """The arguments one call of a module received, as they were (a submodule's, recorded in a forward
    pass of its model, to trace it alone)."""

    args: tuple
    kwargs: dict


def call_arguments(model: nn.Module, example_input) -> tuple[tuple, dict]:
    """(args, kwargs) for ``model`` from a tensor, a tuple / list (positional), a dict (keyword; or the
    one positional argument of a ``forward(self, batch)`` that names none of its keys) or a recorded
    ``Call``."""
    if isinstance(example_input, Call):
        args, kwargs = tuple(example_input.args), dict(example_input.kwargs)
    elif isinstance(example_input, Mapping):
        args, kwargs = (), dict(example_input)
    elif isinstance(example_input, (tuple, list)):
        args, kwargs = tuple(example_input), {}
    elif isinstance(example_input, Tensor):
        args, kwargs = (example_input,), {}
    else:
        raise ValueError(f"example_input must be a tensor, a tuple of tensors or a dict of tensors, "
                         f"got {type(example_input).__name__}")
    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepted = {}
    if isinstance(example_input, Mapping) and accepted and _takes_one_mapping(accepted, kwargs):
        args, kwargs = (dict(example_input),), {}  # forward(self, batch): the dict is its one argument
    if "use_cache" in accepted and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a Hugging Face cache object does not export
    return args, kwargs


def _takes_one_mapping(accepted: Mapping[str, inspect.Parameter], keys: Mapping) -> bool:
    """Whether a forward with these parameters takes a dict as its one positional argument rather than
    its keys as keywords: none of the keys is a parameter's name, no ``**kwargs``, and one parameter
    without a default (``def forward(self, batch)``)."""
    kinds = [p.kind for p in accepted.values()]
    if inspect.Parameter.VAR_KEYWORD in kinds or any(key in accepted for key in keys):
        return False
    required = [p for p in accepted.values() if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


def output_tensors(out) -> tuple[Tensor, ...]:
    """Every tensor in what a model returns (a tensor, tuples, dicts, a ``ModelOutput``), in order."""
    return tuple(leaf for leaf in torch.utils._pytree.tree_leaves(out) if isinstance(leaf, Tensor))


class _Selected(nn.Module):
    """The model with its output reduced to one tensor (``model_output``); ``every``: to every tensor
    it returns (a submodule traced alone: its caller may read each of them)."""

    def __init__(self, model: nn.Module, every: bool = False):
        super().__init__()
        self.model, self.every = model, every

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if not self.every:
            return model_output(out)
        tensors = output_tensors(out)
        return tensors if len(tensors) != 1 else tensors[0]


@dataclass(frozen=True, eq=False)
class TracedModel:
    """An exported graph and the model names of its placeholders."""

    graph_module: fx.GraphModule
    parameters: dict[str, str]  # placeholder node name -> parameter name in the model
    buffers: dict[str, str]  # placeholder node name -> buffer name
    constants: dict[str, Tensor]  # placeholder node name -> lifted tensor constant
    inputs: tuple[str, ...]  # user-input placeholder names, in order
    args: tuple
    kwargs: dict
    training: bool

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    def flat_inputs(self) -> list:
        """The user inputs in placeholder order (tensors and the non-tensor flags the graph keeps)."""
        flat, _ = torch.utils._pytree.tree_flatten((self.args, self.kwargs))
        return flat


def export_model(model: nn.Module, example_input, *, training: bool, every_output: bool = False) -> TracedModel:
    """``model`` traced whole by torch.export (non-strict) on a copy, in train or eval mode; its output
    the tensor a loss reads (``model_output``), or with ``every_output`` every tensor it returns.

    Raises: TraceError naming the operation that stopped the trace.
    """
    args, kwargs = call_arguments(model, example_input)
    shadow = copy.deepcopy(model)
    shadow.train(training)
    if "_original_forward" in vars(shadow):
        # Accelerate's mixed precision replaces forward by an autocast wrapper (torch.export keeps
        # an autocast region as one opaque higher-order op) and keeps the model's own forward; the
        # symmetries are those of the model's arithmetic, so the copy is traced without it
        shadow.forward = vars(shadow)["_original_forward"]
    wrapped = _Selected(shadow, every_output)
    try:
        # without gradients: a region that turns them off (a reentrant activation checkpoint runs its
        # function under no_grad) is then no change of mode, which torch.export would keep as one
        # opaque higher-order op; the values are the same either way
        with _quiet_torch_logs(), torch.no_grad():
            exported = torch.export.export(wrapped, args, kwargs, strict=False)
    except Exception as error:  # torch.export raises many types; the first line names the operation
        raise TraceError(f"torch.export could not trace {type(model).__name__}: {_blocking(error)}") from None
    table = _decompositions()
    if any(node.target in table for node in exported.graph.nodes):
        try:  # einsum, glu, reshape_as as the operations the analysis reads
            with _quiet_torch_logs(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, at every call
                exported = exported.run_decompositions(table)
        except Exception:  # noqa: BLE001 -- the operation stays, one the analysis does not know
            pass
    _static_sizes(exported.graph_module, type(model).__name__)
    signature = exported.graph_signature
    _user_outputs_only(exported.graph_module, signature)
    strip = lambda name: name[len("model."):] if name.startswith("model.") else name  # noqa: E731
    # tied weights (an embedding shared with the output head) appear under one of their names:
    # map every alias to the name named_parameters() reports
    canonical = {id(p): name for name, p in model.named_parameters()}
    alias = {name: canonical[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    parameters = {k: alias.get(strip(v), strip(v)) for k, v in signature.inputs_to_parameters.items()}
    buffers = {k: strip(v) for k, v in signature.inputs_to_buffers.items()}
    constants = {}
    for placeholder, name in getattr(signature, "inputs_to_lifted_tensor_constants", {}).items():
        constants[placeholder] = exported.constants[name]
    inputs = tuple(spec.arg.name for spec in signature.input_specs
                   if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT)
    return TracedModel(exported.graph_module, parameters, buffers, constants, inputs, args, kwargs, training)


def _static_sizes(graph_module: fx.GraphModule, name: str) -> None:
    """TraceError where a tensor's size depends on the values (``h[mask]``, ``nonzero``): the analysis
    reads every size as a number, and such a size is a symbol (the operation and its module named)."""
    for node in graph_module.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, Tensor) and not all(isinstance(size, int) for size in value.shape):
            modules = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values() if path]
            inside = modules[-1].removeprefix("model").lstrip(".") if modules else ""
            raise TraceError(f"torch.export traced {name} with a size that depends on the data ({packet(node)} "
                             f"gives shape {tuple(value.shape)}{f' in {inside}' if inside else ''}, as h[mask] "
                             "or nonzero do)")


def _user_outputs_only(graph_module: fx.GraphModule, signature) -> None:
    """The graph made to return the model's outputs alone: a functionalised graph (after
    ``run_decompositions``) also returns each buffer it updates (BatchNorm's running statistics in
    training mode), which are no output of the model and move under its symmetries."""
    kinds = [spec.kind for spec in signature.output_specs]
    user = [i for i, kind in enumerate(kinds) if kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]
    if len(user) == len(kinds):
        return
    (output,) = [node for node in graph_module.graph.nodes if node.op == "output"]
    values = output.args[0]
    output.args = (type(values)(values[i] for i in user),)
    graph_module.graph.eliminate_dead_code()  # the buffers' updates, read by nothing now
    graph_module.recompile()


def _blocking(error: Exception) -> str:
    """One line from a torch.export error: its kind, first line, and the user's line that raised it
    (torch names it after "The following call raised this error:")."""
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else ""
    where = re.search(r'raised this error:\s*File "([^"]+)", line (\d+), in (\S+)\s*\n\s*(.*)', text)
    if where:
        path, line, function, code = where.groups()
        code = f": {code.strip()[:120]}" if code.strip() and not code.lstrip().startswith("The error") else ""
        return f"{type(error).__name__}: {first} (at {Path(path).name}:{line} in {function}{code})"
    return f"{type(error).__name__}: {first}"


@contextlib.contextmanager
def _quiet_torch_logs():
    """A failed torch.export prints its partial graph to stderr and logs warnings about it; our
    TraceError names what stopped it instead. stderr is held back while tracing (and passed on
    if the trace succeeds) and torch's loggers are raised above ERROR (the fake-tensor layer logs a
    whole traceback at ERROR for an input of the wrong shape; its handler writes to the stderr it
    was made with, which no redirection reaches)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held), warnings.catch_warnings():
            # torch's recurrent layers reassign their flat weight list while exported: harmless here
            warnings.filterwarnings("ignore", message=".*were assigned during export.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    sys.stderr.write(held.getvalue())  # reached only when the trace succeeded


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_double(value):
    if isinstance(value, torch.dtype) and value in _FLOATS:
        return torch.float64
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.double()
    return value


class ExactEvaluator:
    """The traced model evaluated in float64 with every normalisation epsilon set to 0.

    ``__call__(params)`` returns the output for a mapping of parameter name -> tensor (any float
    dtype; used in float64). Buffers, constants and the example input are the model's own, in
    float64. Dropout is off (a mask is not equivariant under a group element; the symmetry holds
    for every fixed mask only in distribution); other random draws in the forward are the same at
    every call (one seed, the global generators left as they were). ``epsilons``: node -> the epsilon that was zeroed.
    The graph is copied and rewritten once (dtype arguments to float64, epsilons to 0, metadata
    asserts and dropout removed), then run as generated code.
    """

    def __init__(self, traced: TracedModel, model: nn.Module):
        self.traced = traced
        named_buffers = dict(model.named_buffers())
        self.buffers = {node: _as_double(named_buffers[name].detach().clone()) for node, name in traced.buffers.items()}
        self.constants = {node: _as_double(value) for node, value in traced.constants.items()}
        flat = traced.flat_inputs()
        self.user_inputs = [_as_double(v) if isinstance(v, Tensor) and v.is_floating_point() else v for v in flat]
        self.graph_module, self.epsilons = _exact_graph(traced.graph_module)
        self._order = [node.name for node in self.graph_module.graph.nodes if node.op == "placeholder"]

    def __call__(self, params: Mapping[str, Tensor]) -> Tensor:
        """The output at ``params`` (float64, eps 0); where the trace returns several tensors (a
        submodule's every output), all of them flattened into one vector."""
        values = []
        user = iter(self.user_inputs)
        for name in self._order:
            if name in self.traced.parameters:
                values.append(_as_double(params[self.traced.parameters[name]].detach()))
            elif name in self.buffers:
                values.append(self.buffers[name].clone())
            elif name in self.constants:
                values.append(self.constants[name])
            else:
                values.append(next(user))
        # random numbers drawn inside the forward (a random patch mask, noise) are the same at every
        # call: each runs from one seed, the caller's generators put back after it
        cuda = sorted({v.device.index or 0 for v in values if isinstance(v, Tensor) and v.is_cuda})
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(0)
            out = self.graph_module(*values)
        if not isinstance(out, (tuple, list)):
            return out
        return out[0] if len(out) == 1 else torch.cat([o.reshape(-1) for o in out if isinstance(o, Tensor)])


def _exact_graph(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, float]]:
    """A copy of the graph in float64 with epsilons at 0, dropout and metadata asserts removed."""
    copied = fx.GraphModule(graph_module, copy.deepcopy(graph_module.graph))
    zero = epsilon_nodes(copied.graph)
    record: dict[str, float] = {}
    for node in list(copied.graph.nodes):
        if node.op != "call_function":
            continue
        name = packet(node)
        if name in ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"):
            copied.graph.erase_node(node) if not node.users else None
            continue
        node.args = tuple(_as_double(a) if isinstance(a, torch.dtype) else a for a in node.args)
        node.kwargs = {k: _as_double(v) if isinstance(v, torch.dtype) else v for k, v in node.kwargs.items()}
        position = zero.get(node.name)
        if position is not None and position < len(node.args) and isinstance(node.args[position], (int, float)):
            record[node.name] = float(node.args[position])
            node.args = node.args[:position] + (EXACT_EPSILON,) + node.args[position + 1:]
        elif position is not None:
            key = node.target._schema.arguments[position].name
            if isinstance(node.kwargs.get(key), (int, float)):
                record[node.name] = float(node.kwargs[key])
                node.kwargs = {**node.kwargs, key: EXACT_EPSILON}
        if name in DROPOUT:
            node.replace_all_uses_with(node.args[0])
            copied.graph.erase_node(node)
        elif name == "scaled_dot_product_attention":
            if len(node.args) > 4:
                node.args = node.args[:4] + (0.0,) + node.args[5:]
            elif "dropout_p" in node.kwargs:
                node.kwargs = {**node.kwargs, "dropout_p": 0.0}
    copied.recompile()
    return copied, record


# dropout in every form torch.export records (the in-place ones from nn.Dropout(inplace=True))
DROPOUT = frozenset(f"{base}{suffix}" for base in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
                    for suffix in ("", "_"))


def _decompositions() -> dict:
    """The operations written out before analysis, each as ones the analysis reads: ``einsum``
    (``_einsum_by_matmul``), ``glu`` (``_glu_by_halves``) and ``reshape_as``."""
    return {torch.ops.aten.einsum.default: _einsum_by_matmul, torch.ops.aten.glu.default: _glu_by_halves,
            torch.ops.aten.reshape_as.default: _reshape_as}


def _reshape_as(x: Tensor, other: Tensor) -> Tensor:
    """``x.reshape_as(other)`` as the reshape it is (``x.reshape(other.shape)``)."""
    return x.reshape(other.shape)


def _glu_by_halves(x: Tensor, dim: int = -1) -> Tensor:
    """glu(x) = a * sigmoid(b), x = [a | b] split in halves along ``dim`` (``torch.nn.functional.glu``)."""
    half = x.shape[dim] // 2
    return x.narrow(dim, 0, half) * torch.sigmoid(x.narrow(dim, half, half))


def _einsum_by_matmul(equation: str, operands, path=None):
    r"""``torch.einsum`` of one or two operands as permutes, reshapes, sums and one matmul:

        C[batch, free_a, free_b] = sum_k A[batch, free_a, k] B[batch, k, free_b],

    labels of one operand absent from the other and from the output summed first, the output
    permuted to its order. NotImplemented (the einsum kept) for an ellipsis, a repeated label in one
    operand (a diagonal) or more than two operands."""
    equation = equation.replace(" ", "")
    if "..." in equation or "->" not in equation:
        return NotImplemented
    inputs, out = equation.split("->")
    specs = inputs.split(",")
    if len(specs) != len(operands) or len(specs) > 2 or any(len(set(s)) != len(s) for s in (*specs, out)):
        return NotImplemented
    sizes = {label: n for spec, tensor in zip(specs, operands) for label, n in zip(spec, tensor.shape)}

    def kept(tensor, spec: str, keep: set[str]):
        drop = [i for i, label in enumerate(spec) if label not in keep]
        return (tensor.sum(dim=drop) if drop else tensor), "".join(label for label in spec if label in keep)

    if len(specs) == 1:
        tensor, spec = kept(operands[0], specs[0], set(out))
        return tensor.permute([spec.index(label) for label in out])
    (a, b), (sa, sb) = operands, specs
    a, sa = kept(a, sa, set(sb) | set(out))
    b, sb = kept(b, sb, set(sa) | set(out))
    batch = [label for label in sa if label in sb and label in out]
    contracted = [label for label in sa if label in sb and label not in out]
    free_a, free_b = [label for label in sa if label not in sb], [label for label in sb if label not in sa]
    size = lambda labels: math.prod(sizes[label] for label in labels)  # noqa: E731

    def arranged(tensor, spec: str, order: list[str], shape: list[int]):  # no permute or reshape that does nothing
        permutation = [spec.index(label) for label in order]
        if permutation != sorted(permutation):
            tensor = tensor.permute(permutation)
        return tensor if list(tensor.shape) == shape else tensor.reshape(shape)

    leading = [sizes[label] for label in batch]
    # without batch labels the free labels of a stay as they are: x (..., k) @ W (k, n), a linear map
    a_shape = leading + ([size(free_a)] if batch else [sizes[label] for label in free_a]) + [size(contracted)]
    a = arranged(a, sa, batch + free_a + contracted, a_shape)
    b = arranged(b, sb, batch + contracted + free_b, leading + [size(contracted), size(free_b)])
    product = torch.matmul(a, b)
    order = batch + free_a + free_b
    product = arranged(product, "".join(order), order, [sizes[label] for label in order])
    return arranged(product, "".join(order), list(out), [sizes[label] for label in out])


def epsilon_nodes(graph: fx.Graph) -> dict[str, int]:
    """Nodes whose argument at the given position is a normalisation epsilon.

    layer_norm / group_norm / batch_norm / rms_norm carry it as an argument (whatever its size: the
    model declares it an epsilon, and verification names its size among the breakers); a hand-written
    norm adds a positive Python number up to ``EPSILON_LIMIT`` to a mean / variance right before sqrt,
    rsqrt or a reciprocal. A larger constant is part of the function: x rsqrt(mean x^2 + 1) is no
    norm, and a scale of x no symmetry of it, even approximately.
    """
    found: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = packet(node)
        position = _epsilon_position(node) if "norm" in name else None
        if position is not None:
            found[node.name] = position
        elif (name == "add" and len(node.args) == 2 and isinstance(node.args[1], float)
              and 0 <= node.args[1] <= EPSILON_LIMIT):  # 0: a model configured with eps 0
            source = node.args[0]
            users = list(node.users)
            if (isinstance(source, fx.Node) and packet(source) in ("mean", "var", "sum", "var_mean")
                    and users and all(packet(u) in ("rsqrt", "sqrt", "reciprocal") for u in users)):
                found[node.name] = 1
    return found


def _epsilon_position(node: fx.Node) -> int | None:
    """Where a norm operation takes its epsilon: the schema's argument named ``eps`` (or ``epsilon``,
    cuDNN's), read per overload (``_native_batch_norm_legit.no_stats`` has it at 5, ``.default`` at 7;
    ``group_norm`` at 4, after ``num_groups``, weight and bias); None for an operation without one."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    for position, argument in enumerate(schema.arguments):
        if argument.name in ("eps", "epsilon"):
            return position
    return None


def packet(node) -> str:
    """The ATen operation a graph node calls ("linear", "layer_norm", ...), "" for other nodes."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return ""
    target = node.target
    found = getattr(target, "_overloadpacket", None)
    if found is not None:
        return found.__name__
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))

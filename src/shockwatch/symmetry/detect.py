r"""Find the symmetries of a real ``nn.Module`` from its traced computation (torch.export, ATen ops).

No rule reads a module's class or a parameter's name: a Hugging Face Llama, a BERT, a ViT and a
user's re-implementation with other names are analysed by the same rules (``flow`` follows a
candidate action through the graph). The families, each derived by hand:

- translation (Kunin §3): the logits z = W x + b feed a softmax (or are the output of a classifier,
  ``logits=True``): W[:, j] -> W[:, j] + c 1 shifts every logit by c x_j, b -> b + c 1 by c, and
  softmax(z + s 1) = softmax(z). A key bias: q.(k + c) = q.k + q.c shifts every score of a query
  equally, so softmax over keys is unchanged, but only where no rotation follows the key (a rotary
  embedding multiplies the shift by cos/sin of the position, so it varies along the keys).
- scale: x -> a x before a normalisation x / sqrt(mean x^2 + eps) (RMSNorm), layer_norm, or
  batch_norm in training mode (per channel) leaves its output unchanged at eps = 0: the whole
  layer (one symmetry) for a norm over the features, each unit for a per-channel BatchNorm.
- rescale: unit i's incoming parameters times a > 0 and its outgoing columns times 1/a, through
  positively homogeneous maps only (ReLU, leaky ReLU, pooling, x*c). A gated MLP act(g x) * (u x):
  up row i against down column i (the product is linear in u x), never through act (SiLU and GELU
  are not homogeneous). A norm's affine map y = gamma * xhat + beta (or w * xhat for RMSNorm, where
  the gain multiplies the normalised input directly) against column i of every consumer.
- permutation: a layer's units, through any elementwise map, with a norm's affine parameters
  permuted along; a gated MLP's gate and up rows permuted jointly with down's columns.
- GL(d_head) (Miyagawa §5.3): q_h . k_h = (M q_h) . (M^{-T} k_h) for every M, so (W_Q, W_K) rows of
  head h -> (M W_Q, M^{-T} W_K); under grouped-query attention one M acts on the shared key block
  and on every query head that reads it. softmax(.) v_h W_O[:, h] = softmax(.) (M v_h) (W_O M^{-1}):
  one M on the value block and the output columns of every query head that reads it. With rotary
  embeddings only the subgroup commuting with the rotations survives on (q, k): per frequency pair
  the rotation-scalings a R(b), found as the rescale (q_i, q_{i+d/2}) x a against (k_i, k_{i+d/2}) / a
  and the rotation (``Kind.ROTATION``) of both pairs by one R(b) (its generator is antisymmetric, so
  it has no Noether charge, but it is an orbit direction the quotient removes). With a partial rotary
  embedding the dimensions no rotation multiplies keep the full GL(d_pass): the GL walk is run again
  with the rotated units left out.
- the residual stream (pre- or post-norm): its scale where every path ends in a norm, and its
  permutation (embeddings' columns, branch outputs' rows, every norm's affine parameters, readers'
  columns; a head tied to the embedding reads the columns the embedding permutes).
- a relative position bias table whose lookups only shift attention scores: one translation per
  column (T5).
- head permutations: the heads of an attention with one key per query head, q, k, v rows and the
  output columns together; with several query heads per key/value head (grouped or multi-query),
  the query heads of each group (q rows, output columns) and the groups; where a rotary embedding
  leaves no query/key GL over whole heads, the heads read from the projections behind
  ``scaled_dot_product_attention`` or behind the scores of attention written out (separate, or fused
  head by head).
- where the walks also pass: ``x @ W.T + b`` (the add is the linear map's bias), ``table[ids]`` (a
  lookup), ReLU written as clamp / maximum / where / a sign mask, PReLU (slopes permuted with the
  units), a learned per-unit multiplier and a depthwise convolution (both compensate a rescale),
  a softmax written as exp(s - max s) / sum (it absorbs a shift).
- a permutation is checked under both generators of S_n (an n-cycle and a transposition).

Every candidate is then checked on the example input in float64 with every norm epsilon set to 0
(``trace.ExactEvaluator``): it is kept only if the output moves by less than ``EXACT_TOLERANCE``
(round-off) under a finite group element, jointly for a kind and one by one for a sample.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, fx, nn

from .._preserved import preserved
from .flow import (GROUPED_PRODUCTS, Consumer, Mode, Producer, Walk, biased_maps, find_producers, is_lookup,
                   linear_inputs_reading, linear_reads, norm_affine_sources, parameter_uses, shape, shape_only,
                   stream_sources, unit_index, walk, weight_norm_parts)
from .group import (Kind, Slot, Symmetry, SymmetrySet, act, act_gl, act_rotation, permutation_generators, permute, slot_fits,
                    random_gl_element)
from .trace import (EXACT_TOLERANCE, Call, ExactEvaluator, TracedModel, TraceError, call_arguments, epsilon_nodes, export_model,
                    model_output, output_tensors, packet, unwrapped_model)

__all__ = ["ExampleInputError", "check_input", "exact_check", "exact_defects", "find_symmetries"]


class ExampleInputError(ValueError):
    """The model does not run on the example input it was given (a wrong shape, a missing argument)."""

_CHECK_AMOUNT = {Kind.TRANSLATION: 0.5, Kind.SCALE: 0.5, Kind.RESCALE: 0.5}


def find_symmetries(model: nn.Module, example_input, *, logits: bool = True, class_dim: int = -1,
                    check_samples: int = 4) -> SymmetrySet:
    """The translation, scale, rescale, permutation and GL symmetries of ``model`` (module docstring).

    ``example_input``: one batch as the model takes it: a tensor, a tuple of positional inputs, or a
    dict of keyword inputs (``input_ids``, ``attention_mask``, ``pixel_values``). The output may be
    a tensor, a tuple or a ``ModelOutput`` (``.logits`` / ``.last_hidden_state``). ``logits``: the
    output feeds a softmax / cross-entropy (classifiers, language models); False for regression
    (no translation of the output head). ``class_dim``: the output's class axis, the one the softmax
    normalises over (-1 for a classifier's or language model's (..., classes) logits; 1 for
    channel-first logits, a segmentation head's (batch, classes, H, W) as ``F.cross_entropy`` reads
    them). The model is traced on a copy (its parameters, buffers,
    mode and the global RNG are left as they were), in training mode when it has a batch norm
    (whose scale symmetry needs batch statistics), else in eval mode (dropout off).
    A model torch.export cannot trace whole is analysed child by child, each child with the input it
    receives; such modules are named in ``SymmetrySet.partial``, and ``SymmetrySet.reasons`` says
    for each parameter no symmetry covers why (the operation that stopped the analysis).
    Every candidate is checked in float64 with norm epsilons at 0: all of a kind at once (each with
    its own finite element), and ``check_samples`` of the kind alone (every one alone where the joint
    change is not round-off); one whose output moves by more than EXACT_TOLERANCE (relative) is
    named in ``SymmetrySet.rejected``; the others carry the measured change as ``Symmetry.defect``
    where they were checked alone.
    Raises: ValueError for a model without parameters or an example input the model does not accept.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    model = unwrapped_model(model)  # torch.compile's and DDP's wrappers: their parameters, named as inside
    parameters = dict(model.named_parameters())
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to analyse")
    device = next(iter(parameters.values())).device
    rng = torch.get_rng_state()
    try:
        returned = check_input(model, example_input)
        classes = class_axis(logits, class_dim, model_output(returned) if logits else None)
        if isinstance(returned, (tuple, list)) and sum(t.is_floating_point() for t in output_tensors(returned)) > 1:
            warnings.warn(f"{type(model).__name__} returns several tensors: these are the symmetries of the first "
                          "(the output a loss reads); a loss that reads the others too may not keep them", stacklevel=2)
        kept: list[Symmetry] = []
        rejected: list[str] = []
        partial: list[str] = []
        reasons: dict[str, str] = {}
        epsilons: list[float] = []
        _analyse(model, example_input, classes, "", kept, rejected, partial, reasons, check_samples, None, epsilons)
    finally:
        torch.set_rng_state(rng)
    covered = {slot.param for sym in kept for slot in sym.slots}
    uncovered = {name: reasons.get(name, "no symmetry acts on it") for name in parameters if name not in covered}
    touched = {_module_of(name) for name in covered}
    unanalysed = tuple(dict.fromkeys(_module_of(name) for name in uncovered if _module_of(name) not in touched))
    sizes = tuple(((name, dim), size) for name, p in parameters.items() for dim, size in enumerate(p.shape))
    return SymmetrySet(tuple(kept), device, unanalysed, sizes, tuple(partial), tuple(rejected),
                       tuple(sorted(uncovered.items())), epsilons=tuple(sorted(set(epsilons))), class_dim=classes)


def check_input(model: nn.Module, example_input):
    """What the model returns in one forward pass in eval mode, without gradients (no buffer changes;
    every module's mode put back): an input the model does not take (a wrong shape, a token id past the vocabulary) is one
    ValueError here, before the trace, whose fake tensors check neither values nor every shape."""
    try:
        args, kwargs = call_arguments(model, example_input)
        with preserved(model), torch.no_grad():  # a forward that writes a buffer (a counter, a cache) too
            model.eval()
            return model(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 -- whatever the model raises, the input is what the user can change
        what = (f"shape {tuple(example_input.shape)}" if isinstance(example_input, Tensor)
                else f"a {type(example_input).__name__}")
        raise ExampleInputError(f"{type(model).__name__} does not accept the example input ({what}): "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:400]) from None


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else param


def class_axis(logits: bool, class_dim: int, output: Tensor | None = None) -> int | None:
    """The axis the softmax normalises the output over (``class_dim``) where the output is ``logits``,
    else None. One-line errors for a ``class_dim`` that is not an int or not an axis of ``output``."""
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise TypeError(f"class_dim must be an int, the axis the softmax normalises over (-1, or 1 for channel-first "
                        f"logits), got {class_dim!r}")
    if output is not None and not -output.dim() <= class_dim < output.dim():
        raise ValueError(f"class_dim {class_dim} is not an axis of the model's output of shape {tuple(output.shape)}: "
                         "-1 for (..., classes) logits, 1 for (batch, classes, ...)")
    return class_dim if logits else None


def _traced(model: nn.Module, example_input, *, every_output: bool = False) -> TracedModel:
    """``export_model`` in training mode where the model has a batch norm (whose scale symmetry needs
    batch statistics), in eval mode (dropout off) otherwise; ``every_output``: a submodule analysed
    alone, whose every returned tensor its caller may read."""
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return export_model(model, example_input, training=has_batch_norm, every_output=every_output)


def _analyse(module: nn.Module, example_input, classes: int | None, prefix: str, found: list[Symmetry],
             rejected: list[str], partial: list[str], reasons: dict[str, str], samples: int,
             inputs: dict | None, epsilons: list[float], shared: frozenset[int] = frozenset(),
             more: tuple = (), heads: Mapping[str, int] | None = None) -> None:
    """Trace ``module`` whole and collect its checked symmetries (refuted labels in ``rejected``; the
    norms' positive epsilons in ``epsilons``); where that fails, its children. ``shared``: the ids of
    parameters also used outside ``module`` by parts analysed apart (a layer two children share): no
    symmetry of ``module`` alone may act on them, since it cannot see their other uses. ``more``: the
    arguments of the module's other calls in the example forward pass (a child called twice, perhaps
    in another mode): a symmetry is kept only where the exact check passes at every call. ``heads``:
    the descendants whose first call returns the model's output itself (its head, where the model is
    analysed child by child), by qualified name, with the output's class axis: their output is logits."""
    traced = None
    if example_input is not None:
        try:
            traced = _traced(module, example_input, every_output=bool(prefix))
        except TraceError as error:
            blocking = str(error)
    else:
        blocking = "never called with a tensor in the example forward pass"
    if traced is not None:
        nodes = {node.name: node for node in traced.graph.nodes}
        epsilons.extend(float(nodes[name].args[position]) for name, position in epsilon_nodes(traced.graph).items()
                        if position < len(nodes[name].args) and isinstance(nodes[name].args[position], (int, float))
                        and nodes[name].args[position] > 0)
        candidates, why = _candidates(traced, classes)
        if shared:
            outside = {name for name, p in module.named_parameters(remove_duplicate=False) if id(p) in shared}
            for sym in candidates:
                for slot in sym.slots:
                    if slot.param in outside:
                        why.setdefault(slot.param, "shared with another part of the model, which was analysed apart")
            candidates = [sym for sym in candidates if not any(slot.param in outside for slot in sym.slots)]
        kept, refuted = _checked(module, traced, candidates, classes, samples)
        kept, also = _at_every_call(module, kept, more, samples, why)
        refuted += also
        found.extend(_prefixed(sym, prefix) for sym in kept)
        rejected.extend(_prefixed(sym, prefix).label for sym in refuted)
        for name, reason in why.items():
            reasons.setdefault(prefix + name, reason)
        return
    if inputs is None:
        inputs, returning = _descendant_inputs(module, example_input)
        heads = {name: classes for name in returning} if classes is not None else {}
    partial.append(prefix.rstrip(".") or "<model>")
    for name, _ in module.named_parameters(recurse=False):
        reasons.setdefault(prefix + name, blocking)
    # a parameter in two children (or in a child and this module itself) is used where each cannot see
    owners: dict[int, set[str]] = {}
    for name, child in module.named_children():
        for p in child.parameters():
            owners.setdefault(id(p), set()).add(name)
    for p in module.parameters(recurse=False):
        owners.setdefault(id(p), set()).add("")
    shared = shared | {key for key, names in owners.items() if len(names) > 1}
    for name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue
        qualified = f"{prefix}{name}"
        calls = inputs.get(qualified, [None])
        child_input = calls[0]
        if child_input is None and not any(True for _ in child.children()):
            for param, _ in child.named_parameters():
                reasons.setdefault(f"{qualified}.{param}", "never called with a tensor in the example forward pass")
            continue
        _analyse(child, child_input, (heads or {}).get(qualified), qualified + ".", found, rejected, partial, reasons,
                 samples, inputs, epsilons, shared, tuple(calls[1:]), heads)
    # what a child's analysis says stops at the child's edge: name why the child stood alone
    context = (f"{prefix.rstrip('.') or 'the model'} could not be traced whole ({blocking}), so its children "
               "were analysed one by one and no symmetry crosses between them")
    for name, _ in module.named_parameters():
        reason = reasons.get(prefix + name)
        if reason is None:
            reasons[prefix + name] = context
        elif "could not be traced whole" not in reason and reason != blocking:
            reasons[prefix + name] = f"{reason}; {context}"


def _descendant_inputs(root: nn.Module, example_input) -> tuple[dict[str, list], list[str]]:
    """One forward pass of ``root`` recording each descendant's calls, in order: its single positional
    tensor, else its arguments as they were (``Call``: a Hugging Face attention's hidden states,
    rotary tables and mask), or None for a call without a tensor; and the descendants whose first
    call returned the very tensor ``root`` returns (``model_output``: its head, nothing after it)."""
    inputs: dict[str, list] = {}
    first_outputs: dict[str, object] = {}

    def returned(name):
        def hook(_module, _args, output):
            first_outputs.setdefault(name, output)
        return hook

    def record(name):
        def hook(_module, args, kwargs):
            single = len(args) == 1 and isinstance(args[0], torch.Tensor) and not kwargs  # a flag too: a Call
            tensors = any(isinstance(leaf, torch.Tensor) for leaf in torch.utils._pytree.tree_leaves((args, kwargs)))
            inputs.setdefault(name, []).append(args[0] if single else Call(args, dict(kwargs)) if tensors else None)
        return hook

    hooks = [module.register_forward_pre_hook(record(name), with_kwargs=True)
             for name, module in root.named_modules() if name]
    hooks += [module.register_forward_hook(returned(name)) for name, module in root.named_modules() if name]
    args, kwargs = call_arguments(root, example_input)
    was_training = root.training
    try:
        with torch.no_grad():
            final = root(*args, **kwargs)
    except Exception as error:
        raise ExampleInputError(f"{type(root).__name__} does not accept the example input "
                         f"(shape {tuple(getattr(example_input, 'shape', ()))}): {type(error).__name__}: {error}") from None
    finally:
        root.train(was_training)
        for hook in hooks:
            hook.remove()
    try:
        final = model_output(final)
    except ValueError:
        return inputs, []
    return inputs, [name for name, output in first_outputs.items() if output is final]


_MOST_CALLS = 32  # a module called more often than this in the example pass keeps no symmetry


def _at_every_call(module: nn.Module, kept: list[Symmetry], more: tuple, samples: int,
                   why: dict[str, str]) -> tuple[list[Symmetry], list[Symmetry]]:
    """``kept`` (checked at a module's first call) checked again at each of its other calls, traced
    with their own arguments: (those exact at every call, the rest). A call that cannot be traced,
    or has no tensor, or more than ``_MOST_CALLS`` calls, leaves none (reason in ``why``)."""
    if not kept or not more:
        return kept, []
    refuted: list[Symmetry] = []
    reason = None
    if len(more) >= _MOST_CALLS:
        reason = f"called {len(more) + 1} times in the example forward pass (more than {_MOST_CALLS} to check one by one)"
    elif any(call is None for call in more):
        reason = "called again without a tensor, which cannot be traced"
    else:
        for number, call in enumerate(more, start=2):
            try:
                traced = _traced(module, call, every_output=True)
            except TraceError as error:
                reason = f"its call {number} in the example forward pass cannot be traced: {error}"
                break
            kept, wrong = _checked(module, traced, kept, None, samples)
            refuted += wrong
            if not kept:
                break
    if reason is None:
        return kept, refuted
    for slot in (slot for sym in kept for slot in sym.slots):
        why.setdefault(slot.param, reason)
    return [], refuted


def _prefixed(sym: Symmetry, prefix: str) -> Symmetry:
    """The same symmetry with parameter names and the label's layer name under ``prefix``."""
    if not prefix:
        return sym
    kind, _, rest = sym.label.partition("/")
    layer, sep, tail = rest.partition("/")
    # a parameter of the module itself (``_module_of("weight")``: no child's name) names no layer: the module does
    direct = "." not in layer and not any(slot.param.startswith(layer + ".") for slot in sym.slots)
    layer = prefix.rstrip(".") if direct else prefix + layer
    slots = lambda slots: tuple(dataclasses.replace(s, param=prefix + s.param) for s in slots)  # noqa: E731
    return dataclasses.replace(sym, label=f"{kind}/{layer}{sep}{tail}", incoming=slots(sym.incoming),
                               outgoing=slots(sym.outgoing))


# ---------------------------------------------------------------------------------------------
# candidates from the graph


def _rows(producer: Producer, start: int, stop: int) -> list[Slot]:
    slots = [Slot(producer.weight, producer.out_dim, start + producer.offset, stop + producer.offset)]
    if producer.bias is not None:
        slots.append(Slot(producer.bias, producer.bias_dim, start + producer.bias_offset, stop + producer.bias_offset))
    return slots


def _runs(consumer: Consumer, wanted: list[int]) -> list[tuple[int, int]] | None:
    """Contiguous column runs of ``consumer`` reading exactly the units ``wanted``."""
    table = consumer.positions
    positions = sorted(i for unit in set(wanted) for i in table.get(unit, ()))
    if not positions:
        return []
    runs, start = [], positions[0]
    for a, b in zip(positions, positions[1:] + [None]):
        if b != a + 1:
            runs.append((start, a + 1))
            start = b
    return runs


def _candidates(traced: TracedModel, classes: int | None) -> tuple[list[Symmetry], dict[str, str]]:
    """Every candidate the graph supports, and for parameters in none of them, why."""
    producers = find_producers(traced)
    by_node = {p.node: p for p in producers}
    epsilons = frozenset(epsilon_nodes(traced.graph))
    out: list[Symmetry] = []
    why: dict[str, str] = {}
    labels: set[str] = set()

    position = {node: i for i, node in enumerate(traced.graph.nodes)}
    where = [0]  # the graph position of the source being analysed: symmetries come out in graph order

    scaled: set[str] = set()  # weights that lead (first incoming slot) an emitted scale symmetry

    acting: set[tuple] = set()  # (kind, slots) of what was emitted: one action found by two walks is one symmetry

    def emit(sym: Symmetry) -> None:
        # a slot reached twice (a map both seeded and reading the units) is acted on once
        sym = dataclasses.replace(sym, incoming=tuple(dict.fromkeys(sym.incoming)),
                                  outgoing=tuple(dict.fromkeys(sym.outgoing)))
        action = (sym.kind, frozenset(sym.incoming), frozenset(sym.outgoing), sym.units)
        if sym.label not in labels and action not in acting:
            labels.add(sym.label)
            acting.add(action)
            out.append((where[0], len(out), sym))
            if sym.kind is Kind.SCALE:
                scaled.add(sym.incoming[0].param)

    failed_at: dict[str, int] = {}

    def note(param: str | None, walk_: Walk) -> None:
        """The reason of the walk that got furthest through the graph before it failed (a rescale
        stopped by a tanh says less than a permutation stopped by an offset after it)."""
        if param is None or walk_.ok:
            return
        at = position.get(walk_.failed_at, -1)
        if param not in why or at > failed_at[param]:
            why[param], failed_at[param] = walk_.reason, at

    uses = parameter_uses(traced)

    def run(seeds, mode, units, uses_=uses, gains=True):
        return walk(traced, seeds, mode, classes=classes, units=units, epsilons=epsilons, uses=uses_, gains=gains)

    gl_done: set[fx.Node] = set()
    stream: list[Producer] = []  # producers whose output is added to a residual stream
    perm_done: set[fx.Node] = set()
    attention: dict[fx.Node, dict] = {}
    for producer in producers:
        node, units, module = producer.node, producer.units, _module_of(producer.weight)
        where[0] = position[node]
        out_shape = shape(node)
        seed = unit_index(out_shape, producer.axis, units)
        # translation: logits head (constant along the units) or a key bias (a function of the unit)
        along = list(out_shape)
        along[producer.axis] = 1
        generator = torch.Generator().manual_seed(0)
        column = torch.randn(along, dtype=torch.float64, generator=generator).expand(out_shape)
        shifted = run({node: column}, Mode.SHIFT, units)
        if shifted.ok and shifted.absorbed:
            # a column is every row's: only for a map of all its weight's rows, the weight itself (not a
            # normalised map's gains)
            whole = shape(_placeholder(traced, producer.weight))[producer.out_dim] == units and not producer.normalised
            for j in range(_in_size(traced, producer) if whole else 0):
                emit(Symmetry(Kind.TRANSLATION, f"translation/{module}/column{j}", (Slot(producer.weight, producer.in_dim, j, j + 1),)))
            if producer.bias is not None:
                emit(Symmetry(Kind.TRANSLATION, f"translation/{module}/bias{producer.bias_offset or ''}",
                              (Slot(producer.bias, producer.bias_dim, producer.bias_offset,
                                    producer.bias_offset + units),)))
        # GL: attention blocks (query/key pairs, value blocks); else a per-unit action
        has_scale = False
        if node not in gl_done:
            # a weight-normalised map (rows g v / |v|): only per-unit scales of g act on its rows alone
            gl, members, rotated = (_walk_gl(run, producer, seed, by_node, gl_done) if not producer.normalised
                                    else (None, [producer], frozenset()))
            if gl is not None and gl.ok and not (gl.pairs or gl.value_blocks) and not rotated and len(members) == 1 \
                    and _emit_bottleneck(gl, producer, len(shape(_placeholder(traced, producer.weight)) or ()), emit):
                gl_done.add(node)
            elif gl is not None and gl.ok and (gl.pairs or gl.value_blocks):
                gl_done.update(m.node for m in members)
                _emit_gl(gl, members, emit, attention)
                if rotated:  # the rotated dimensions of a partial rotary embedding: their frequency pairs
                    diag = run({m.node: unit_index(shape(m.node), m.axis, m.units, offset)
                                for m, offset in zip(members, _offsets(members))}, Mode.DIAG, sum(m.units for m in members))
                    if diag.ok and not diag.links.broken:
                        _emit_diag(diag, members, emit, label="pair", only=rotated)
                        _emit_rotations(diag, members, emit, only=rotated)
            else:
                diag, members = _walk_with_partner(run, producer, seed, Mode.DIAG, by_node, gl_done)
                only = None  # a fused gated unit's ungated half: the units the walk transformed
                if not diag.ok and "not positively homogeneous" in diag.reason:
                    glu, only = _fused_glu(run, producer, Mode.DIAG)
                    diag, members = (glu, [producer]) if glu is not None else (diag, members)
                if diag.ok and diag.gained and len(members) == 1:
                    # a layer scale ended the walk: a branch added to a residual stream is still one
                    # of the stream's producers (its scale and permutation), as without the scale
                    beyond = run({node: seed}, Mode.DIAG, units, gains=False)
                    if not beyond.ok and "adds an untransformed tensor" in beyond.reason and not producer.normalised:
                        stream.append(producer)
                if diag.ok and not diag.links.broken:
                    has_scale = _emit_diag(diag, members, emit, label="unit" if len(members) == 1 else "pair", only=only)
                    if not any(m.normalised for m in members):
                        _emit_rotations(diag, members, emit)
                    if len(members) == 2 and not diag.summed:  # a query/key pair that only a subgroup of GL keeps (rotary)
                        gl_done.update(m.node for m in members)
                else:
                    note(producer.weight, diag)
                    if "adds an untransformed tensor" in diag.reason and not producer.normalised:
                        stream.append(producer)
        # scale of the whole layer
        if not has_scale and producer.weight not in scaled:
            scalar = run({node: seed}, Mode.SCALAR, units)
            if scalar.ok and scalar.absorbed:
                emit(Symmetry(Kind.SCALE, f"scale/{module}", tuple(_rows(producer, 0, units))))
        # permutation of units (joint with a gate where the units are multiplied together)
        if units >= 2 and not producer.grouped and not producer.normalised and node not in gl_done \
                and node not in perm_done:
            perm, members = _walk_with_partner(run, producer, seed, Mode.PERM, by_node, perm_done, same_units=True)
            glu, layout = (None, None) if perm.ok or "differently ordered" not in perm.reason else \
                _fused_glu(run, producer, Mode.PERM)
            if perm.ok:
                perm_done.update(m.node for m in members)
                _emit_permutation(perm, members, units, emit)
            elif glu is not None:
                perm_done.add(node)
                # interleaved: one slot of 2 rows a unit; halves: two slots of one row a unit
                _emit_permutation(glu, [producer], units // 2, emit, halves=2 if layout == "halves" else 1,
                                  rows=units)
            else:
                note(producer.weight, perm)
    _emit_shared(traced, run, emit, note, uses, stream)
    _emit_recurrent(traced, run, emit, note, uses)
    _emit_weight_norm_scales(traced, emit, uses)
    for node, axis, params in norm_affine_sources(traced):
        where[0] = position[node]
        size = shape(node)[axis]
        diag = run({node: unit_index(shape(node), axis, size)}, Mode.DIAG, size)
        if diag.ok and not diag.links.broken:
            _emit_affine(diag, params, emit)
        else:
            for param in params:
                why.setdefault(param, diag.reason)
    where[0] = len(position)  # head permutations, the stream's scale and key biases: after the rest
    _emit_head_permutations(traced, attention, emit, by_node)
    _emit_expert_permutations(traced, producers, by_node, emit)
    _emit_tied_head_biases(traced, by_node, run, emit, uses)
    _emit_stream_scale(traced, stream, run, emit)
    _emit_stream_permutation(traced, stream, by_node, run, emit, note, uses)
    _emit_key_biases(attention, producers, run, emit)
    _emit_embedding_translations(traced, run, emit, uses)
    opaque = [node for node in traced.graph.nodes if node.op == "call_function" and "autocast" in str(node.target)]
    if opaque:  # torch.autocast inside forward: torch.export keeps the region as one higher-order op
        for name in traced.parameters.values():
            why.setdefault(name, f"the forward runs under torch.autocast, which torch.export keeps as one opaque "
                                 f"operation ({opaque[0].target}): run detection on the model without autocast")
    for name, count in uses.items():
        if count > 1:  # a weight shared across layers (ALBERT) or tied to a second use
            why.setdefault(name, f"read by {count} operations (shared or tied): only a weight read once is the "
                                 "start of a candidate, so nothing acting on it alone is proposed")
    for node in traced.graph.nodes:
        if node.op == "placeholder" and node.name in traced.parameters and not node.users:
            why.setdefault(traced.parameters[node.name], "not used by the example forward pass (a branch the example "
                           "input did not take): the graph says nothing about it")
    for name in traced.parameters.values():
        why.setdefault(name, "no symmetry found for it")
    return [sym for _, _, sym in sorted(out, key=lambda entry: entry[:2])], why


def _emit_shared(traced: TracedModel, run, emit, note, uses: dict[str, int], stream: list[Producer]) -> None:
    """Layers applied more than once with the same weights (ALBERT's shared layers, a block called in a
    loop): every application's output carries the same units, so one walk seeds them all (unit i of
    each), with every parameter's reuse allowed, and keeps the result only where each map reading the
    units is reached at every one of its uses, with the same columns (``_consistent``). Their rescales
    and permutations come out as for a producer read once (their query/key and value/output GL is
    not sought); a shared branch added to the residual stream joins the stream's producers."""
    groups: dict[str, list[Producer]] = {}
    for producer in find_producers(traced, shared=True):
        groups.setdefault(producer.weight, []).append(producer)
    reads = linear_reads(traced)
    reuse = {name: 1 for name, count in uses.items() if count > 1}
    for weight, members in groups.items():
        first = members[0]
        if len({(p.units, p.axis, p.bias) for p in members}) != 1:
            continue
        seeds = {p.node: unit_index(shape(p.node), p.axis, p.units) for p in members}
        diag = _consistent(run(seeds, Mode.DIAG, first.units, {**uses, **reuse}), reads)
        if diag.ok and not diag.links.broken:
            _emit_diag(diag, [first], emit, label="unit")
        else:
            note(weight, diag)
            if "adds an untransformed tensor" in diag.reason:
                stream.extend(members)
        if first.units >= 2 and not first.grouped:
            perm = _consistent(run(seeds, Mode.PERM, first.units, {**uses, **reuse}), reads)
            if perm.ok:
                _emit_permutation(perm, [first], first.units, emit)
            else:
                note(weight, perm)


_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # gate blocks in a recurrent layer's rows


def _emit_recurrent(traced: TracedModel, run, emit, note, uses: dict[str, int]) -> None:
    """The hidden units of torch's recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: one ATen
    operation holding every layer's weights): permuting the H units of layer l (of one direction, where
    bidirectional: its units are the output's features [d H, (d + 1) H)) permutes the rows of each of
    its gate blocks (weight_ih, weight_hh, both biases), weight_hh's columns, and the columns of what
    reads the units (the next layer's weight_ih of each direction; after the last layer, the maps
    reading the output, by a PERM walk from it). A last layer whose final state is read is left out."""
    for node in traced.graph.nodes:
        kind = packet(node)
        if kind not in _GATES or len(node.args) < 8:
            continue
        flat, has_biases, layers, bidirectional = node.args[2], node.args[3], node.args[4], node.args[7]
        per_layer, directions = 4 if has_biases else 2, 2 if bidirectional else 1
        names = [_param_name(traced, p) for p in flat]
        if len(names) != per_layer * layers * directions or any(n is None or uses.get(n) != 1 for n in names):
            continue
        outputs = {user.args[1]: user for user in node.users if packet(user) == "getitem"}

        def weights(layer: int, direction: int) -> list[str]:
            first = (layer * directions + direction) * per_layer
            return names[first:first + per_layer]

        for layer in range(layers):
            for direction in range(directions):
                w_ih, w_hh, *biases = weights(layer, direction)
                size = shape(_placeholder(traced, w_hh))[1]
                gates = _GATES[kind]
                incoming = [Slot(name, 0, g * size, (g + 1) * size) for name in (w_ih, w_hh, *biases)
                            for g in range(gates)]
                outgoing = [Slot(w_hh, 1, 0, size)]
                features = (direction * size, (direction + 1) * size)  # where the output carries them
                if layer + 1 < layers:
                    outgoing += [Slot(weights(layer + 1, d)[0], 1, *features) for d in range(directions)]
                else:
                    if any(index in outputs and outputs[index].users for index in (1, 2)) or 0 not in outputs:
                        continue  # the final hidden (or cell) state is read: its layout is not followed here
                    out = outputs[0]
                    ids = unit_index(shape(out), len(shape(out)) - 1, shape(out)[-1]) - features[0]
                    ids = ids.masked_fill((ids < 0) | (ids >= size), -1)
                    perm = run({out: ids}, Mode.PERM, size)
                    slots = _permuted_slots(perm, size) if perm.ok else None
                    if slots is None:
                        note(w_ih, perm)
                        continue
                    incoming += slots[0]
                    outgoing += slots[1]
                if size >= 2:
                    suffix = "" if directions == 1 else ("/forward" if direction == 0 else "/backward")
                    emit(Symmetry(Kind.PERMUTATION, f"permutation/{_module_of(w_ih)}/layer{layer}{suffix}",
                                  tuple(incoming), tuple(outgoing), units=size))


def _emit_weight_norm_scales(traced: TracedModel, emit, uses: dict[str, int]) -> None:
    """Weight normalisation, W = g v / |v| per slice along ``dim`` (``torch._weight_norm``: nn.utils'
    weight_norm, old and parametrised): each slice of v scales freely, W and the output unchanged, a
    scale symmetry per output unit (one for all of v where ``dim`` is -1), where v is read nowhere else."""
    for node in traced.graph.nodes:
        parts = weight_norm_parts(node, traced)
        if parts is None or uses.get(parts[0]) != 1:
            continue
        name, _, dim = parts
        module, size = _module_of(name), shape(node.args[0])
        if dim == -1:
            emit(Symmetry(Kind.SCALE, f"scale/{module}/weight_norm", (Slot(name, 0, 0, size[0]),)))
            continue
        for i in range(size[dim]):
            emit(Symmetry(Kind.SCALE, f"scale/{module}/weight_norm{i}", (Slot(name, dim, i, i + 1),)))


def _param_name(traced: TracedModel, node) -> str | None:
    """The parameter a graph input stands for, or None for any other node."""
    return traced.parameters.get(node.name) if isinstance(node, fx.Node) and node.op == "placeholder" else None


def _placeholder(traced: TracedModel, name: str) -> fx.Node:
    """The graph input of parameter ``name``."""
    return next(n for n in traced.graph.nodes if n.op == "placeholder" and traced.parameters.get(n.name) == name)


def _consistent(found: Walk, reads: dict[str, int]) -> Walk:
    """A walk that let parameters be read more than once, kept where every map it reached is reached
    at each of its ``reads`` linear uses with the same columns (and each norm's parameters with the
    same units), with each such consumer and norm slot listed once; else failed, saying so."""
    if not found.ok:
        return found
    consumers: dict[str, list[Consumer]] = {}
    for consumer in found.consumers:
        consumers.setdefault(consumer.weight, []).append(consumer)
    for weight, seen in consumers.items():
        if len(seen) != reads.get(weight, 1) or any(
                c.in_dim != seen[0].in_dim or not torch.equal(c.columns, seen[0].columns) for c in seen):
            return dataclasses.replace(found, ok=False, consumers=[], reason=f"{weight} reads the units at one of "
                                       "its uses and not (or other units) at another")
    norms: dict[tuple[str, int], Tensor] = {}
    for param, dim, index in found.norm_slots:
        if (param, dim) in norms and not torch.equal(norms[(param, dim)], index):
            return dataclasses.replace(found, ok=False, consumers=[],
                                       reason=f"{param}, a shared norm's parameter, meets other units at another use")
        norms[(param, dim)] = index
    return dataclasses.replace(found, consumers=[seen[0] for seen in consumers.values()],
                               norm_slots=[(param, dim, index) for (param, dim), index in norms.items()])


def _walk_with_partner(run, producer: Producer, seed: Tensor, mode: Mode, by_node: dict, done: set,
                       same_units: bool = False, masked: frozenset[int] = frozenset()) -> tuple[Walk, list[Producer]]:
    """A walk from ``producer``; where it fails for want of a second producer's output (the key of a
    query, the up projection of a gate), the walk from both together, units numbered one after the
    other; where a scale's walk fails at an add of another producer's output (a U-Net's conv(x) +
    time_mlp(t) before its norm), both together (the add links each unit with the one it meets).
    ``masked``: units left untransformed (-1 in the seeds)."""
    result = run({producer.node: _without(seed, masked)}, mode, producer.units)
    if result.ok or result.partner is None:
        return result, [producer]
    summed = mode is Mode.DIAG and result.reason.startswith("adds an untransformed tensor")
    if mode is not Mode.PERM and "without its" not in result.reason and not summed:
        return result, [producer]  # scales and GL pair a query with its key only
    partner = _producer_behind(result.partner, by_node)
    if partner is None or partner is producer or partner.node in done or (same_units and partner.units != producer.units):
        return result, [producer]
    offset = 0 if same_units else producer.units
    seeds = {producer.node: _without(seed, masked),
             partner.node: _without(unit_index(shape(partner.node), partner.axis, partner.units, offset), masked)}
    joint = run(seeds, mode, producer.units + (0 if same_units else partner.units))
    joint.summed = summed
    return (joint, [producer, partner]) if joint.ok or joint.blocked else (result, [producer])


def _walk_gl(run, producer: Producer, seed: Tensor, by_node: dict, done: set
             ) -> tuple[Walk, list[Producer], frozenset[int]]:
    """The GL walk; where a factor that varies across the units multiplies some of them (the cos and
    sin of a rotary embedding), again with those units left out, so that the dimensions of a partial
    rotary embedding that no rotation touches keep their full GL(d_pass) (at most 4 rounds).
    Returns the walk, its producers and the units left out."""
    masked: frozenset[int] = frozenset()
    for _ in range(4):
        gl, members = _walk_with_partner(run, producer, seed, Mode.GL, by_node, done, masked=masked)
        if gl.ok or not gl.blocked or gl.blocked <= masked:
            break
        masked |= gl.blocked
    return gl, members, (masked if gl.ok else frozenset())


def _without(seed: Tensor, masked: frozenset[int]) -> Tensor:
    return seed.masked_fill(torch.isin(seed, torch.tensor(sorted(masked), dtype=seed.dtype)), -1) if masked else seed


def _offsets(members: list[Producer]) -> list[int]:
    return [sum(m.units for m in members[:i]) for i in range(len(members))]


def _in_size(traced: TracedModel, producer: Producer) -> int:
    return shape(_placeholder(traced, producer.weight))[producer.in_dim]


def _producer_behind(node, by_node: dict) -> Producer | None:
    """The one producer whose output reaches ``node`` without passing another producer (searched
    backwards over at most 64 nodes), or None if there is none or more than one."""
    found: set[fx.Node] = set()
    queue, seen = [node], set()
    while queue and len(seen) < 64:
        current = queue.pop()
        if not isinstance(current, fx.Node) or current in seen:
            continue
        seen.add(current)
        if current in by_node:
            found.add(current)
            continue
        queue.extend(a for a in current.all_input_nodes if isinstance(a.meta.get("val"), Tensor) and a.meta["val"].dim() > 1)
    return by_node[found.pop()] if len(found) == 1 else None


def _owner(unit: int, members: list[Producer]) -> tuple[Producer, int]:
    offset = 0
    for producer in members:
        if unit < offset + producer.units:
            return producer, unit - offset
        offset += producer.units
    raise IndexError(unit)


def _unit_slots(units: list[int], members: list[Producer]) -> list[Slot]:
    """Row slots of the producers for a set of (global) unit ids, contiguous runs merged."""
    slots: list[Slot] = []
    for unit in sorted(units):
        producer, local = _owner(unit, members)
        slots.extend(_rows(producer, local, local + 1))
    return _merge(slots)


def _merge(slots: list[Slot]) -> list[Slot]:
    merged: list[Slot] = []
    for slot in slots:
        for i, m in enumerate(merged):
            if m.param == slot.param and m.dim == slot.dim and m.stop == slot.start:
                merged[i] = Slot(m.param, m.dim, m.start, slot.stop)
                break
        else:
            merged.append(slot)
    return merged


def _emit_diag(diag: Walk, members: list[Producer], emit, *, label: str, only: frozenset[int] | None = None) -> bool:
    """One scale or rescale symmetry per class of the producers' units that must share a factor
    (``only``: the classes within those units). True where a scale was emitted."""
    return _emit_classes(diag, lambda units: _unit_slots(units, members), _module_of(members[0].weight), emit,
                         label=label, only=only, scales=True)


def _emit_affine(diag: Walk, params: list[str], emit) -> None:
    """A norm's affine map against its consumers' columns: one rescale per class of units that must
    share a factor (unit i alone, unless the walk linked it to others)."""
    def rows(units):
        return _merge([Slot(p, 0, u, u + 1) for u in sorted(units) for p in params])
    _emit_classes(diag, rows, _module_of(params[0]), emit, label="unit", only=None, scales=False)


def _emit_rotations(diag: Walk, members: list[Producer], emit, *, only: frozenset[int] | None = None) -> None:
    """The rotation part of each rotary frequency pair's rotation-scaling: a class of linked units
    holding query units (parity 0) and key units (parity 1), two per head of each producer (the
    pair the positional rotation turns). Both sides turn by the same R(a): q.R_(n-m) k is unchanged
    because 2-d rotations commute. x: the lower unit of each pair, y: the higher, in both."""
    module = _module_of(members[0].weight)
    for root, members_of_class in sorted(diag.links.classes().items(), key=lambda kv: min(u for u, _ in kv[1])):
        units = [u for u, _ in members_of_class]
        if (only is not None and not all(u in only for u in units)) or {p for _, p in members_of_class} != {0, 1}:
            continue
        by_producer: dict[int, list[int]] = {}
        for unit in sorted(units):
            producer, local = _owner(unit, members)
            by_producer.setdefault(members.index(producer), []).append(local)
        if any(len(locals_) % 2 for locals_ in by_producer.values()):
            continue
        incoming, outgoing = [], []
        for index, locals_ in by_producer.items():
            for x, y in zip(locals_[0::2], locals_[1::2]):
                incoming.extend(_rows(members[index], x, x + 1))
                outgoing.extend(_rows(members[index], y, y + 1))
        emit(Symmetry(Kind.ROTATION, f"rotation/{module}/pair{min(units)}", tuple(incoming), tuple(outgoing)))


def _emit_classes(diag: Walk, rows, module: str, emit, *, label: str, only: frozenset[int] | None,
                  scales: bool) -> bool:
    """The classes of ``diag``'s parity links as symmetries: a unit of parity 0 takes a, of parity 1
    takes 1/a, and a consumer's columns the inverse of the unit they read; ``rows(units)``: the
    source slots of those units. A class nothing compensates is a scale (where ``scales``)."""
    made_scale = False
    for root, members_of_class in sorted(diag.links.classes().items(), key=lambda kv: min(u for u, _ in kv[1])):
        if only is not None and not all(u in only for u, _ in members_of_class):
            continue
        incoming = list(rows([u for u, p in members_of_class if p == 0]))
        outgoing = list(rows([u for u, p in members_of_class if p == 1]))
        for consumer in diag.consumers:
            for unit, parity in members_of_class:
                for start, stop in _runs(consumer, [unit]) or []:
                    (outgoing if parity == 0 else incoming).append(Slot(consumer.weight, consumer.in_dim, start, stop))
        first = min(u for u, _ in members_of_class)
        if not incoming:
            continue
        if outgoing:
            emit(Symmetry(Kind.RESCALE, f"rescale/{module}/{label}{first}", tuple(incoming), tuple(_merge(outgoing))))
        elif scales:
            emit(Symmetry(Kind.SCALE, f"scale/{module}/{label}{first}", tuple(incoming)))
            made_scale = True
    return made_scale


def _fused_glu(run, producer: Producer, mode: Mode) -> tuple[Walk | None, frozenset[int] | str | None]:
    """The walk from a producer whose output is two halves that gate each other, act(a) * b (a fused
    gated linear unit: Phi-3's ``gate_up_proj`` split by ``chunk``, a mixture of experts' gate_up),
    where the walk from all its units failed: DIAG from the half b that is not gated through the
    nonlinearity, the other half left untransformed (unit i of b scales with column i of the map
    reading the product); PERM with both halves carrying the same unit ids (unit i is rows i and
    half + i, or rows 2 i and 2 i + 1 where a and b interleave). (The walk that succeeds (DIAG: either
    half tried as a), the units it transformed (PERM: the layout, "halves" or "interleaved")), else
    (None, None)."""
    half = producer.units // 2
    if producer.units % 2 or half < 1:
        return None, None
    units = unit_index(shape(producer.node), producer.axis, producer.units)
    if mode is Mode.PERM:  # halves [a | b] (a chunk), else interleaved [a_0, b_0, a_1, ...] (GPT-OSS)
        for layout, ids in (("halves", units % half), ("interleaved", units // 2)):
            found = run({producer.node: ids}, Mode.PERM, half)
            if found.ok:
                return found, layout
        return None, None
    for start in (half, 0):  # b the second half (Phi-3's chunk: gate, then up), else the first
        found = run({producer.node: units.masked_fill((units < start) | (units >= start + half), -1)}, Mode.DIAG,
                    producer.units)
        if found.ok and not found.links.broken:
            return found, frozenset(range(start, start + half))
    return None, None


def _emit_permutation(perm: Walk, members: list[Producer], units: int, emit, *, halves: int = 1,
                      rows: int | None = None) -> None:
    """The permutation of ``units`` units a PERM walk found; ``halves`` = 2 for a fused gated unit, whose
    unit i is rows i and units + i of its one producer; ``rows`` = 2 units with ``halves`` = 1 for one
    whose halves interleave (unit i: rows 2 i and 2 i + 1)."""
    span = (rows or units) // halves
    incoming = [slot for producer in members for h in range(halves) for slot in _rows(producer, h * span, (h + 1) * span)]
    slots = _permuted_slots(perm, units)
    if slots is None or not slots[1]:
        return
    # the halves' row blocks stay apart (merged, rows [0, 2 units) would be cut into blocks of two rows)
    incoming = incoming + slots[0] if halves > 1 else _merge(incoming + slots[0])
    emit(Symmetry(Kind.PERMUTATION, f"permutation/{_module_of(members[0].weight)}", tuple(incoming),
                  tuple(slots[1]), units=units))


def _permuted_slots(perm: Walk, units: int) -> tuple[list[Slot], list[Slot]] | None:
    """(the norms' affine slots, the consumers' column slots) a PERM walk permuted with the units, or
    None where one of them does not read all the units in order (unit-major blocks of columns)."""
    norms: list[Slot] = []
    for param, dim, index in perm.norm_slots:
        if not torch.equal(index, torch.arange(units)):
            return None
        norms.append(Slot(param, dim, 0, units))
    outgoing: list[Slot] = []
    for consumer in perm.consumers:
        columns = consumer.columns
        read = (columns >= 0).nonzero().reshape(-1)
        if len(read) == 0:
            continue
        start, stop = int(read[0]), int(read[-1]) + 1
        block = (stop - start) // units
        expected = torch.arange(units).repeat_interleave(block)
        if stop - start != units * block or not torch.equal(columns[start:stop], expected):
            return None
        outgoing.append(Slot(consumer.weight, consumer.in_dim, start, stop))
    return norms, outgoing


def _emit_stream_permutation(traced: TracedModel, stream: list[Producer], by_node: dict, run, emit, note,
                             uses: dict[str, int]) -> None:
    """The residual stream's permutation: reorder the features of the stream x (the embeddings'
    columns, the rows of every branch output added to it, the affine parameters of every norm over
    it) and the input columns of every linear map reading it. Sums commute with it, and so does a
    norm over the features (mean, variance and mean square are symmetric functions of them) once its
    gain and bias are permuted, so the output is unchanged. A head tied to the token embedding reads
    the same columns the embedding permutes: one permutation, exact, where the stream's scale is not.
    One PERM walk from every stream producer and source; a branch output the walk meets added to the
    stream joins the seeds, and a source off this stream (an embedding of other width or meaning, a
    relative position bias) is dropped where the walk fails without it. One walk per width: an
    embedding narrower than the stream, projected into it (ELECTRA, ALBERT), is a stream of its own
    (its columns, its norm's parameters, the projection's input columns)."""
    found = stream_sources(traced, tied=True)
    widths = {p.units for p in stream} | {shape(node)[-1] for node, _ in found}
    main = max(widths, key=lambda w: sum(p.units == w for p in stream), default=None)
    for units in sorted(widths):
        label = "permutation/residual_stream" if units == main else f"permutation/residual_stream/width{units}"
        _stream_permutation(traced, [p for p in stream if p.units == units],
                            [(node, name) for node, name in found if shape(node)[-1] == units], units, label,
                            by_node, run, emit, note, uses)


def _stream_permutation(traced: TracedModel, stream: list[Producer], sources: list, units: int, label: str,
                        by_node: dict, run, emit, note, uses: dict[str, int]) -> None:
    """``_emit_stream_permutation`` for the producers and sources of one width."""
    if not stream and not sources:
        return
    tied = {name for _, name in sources}
    # every parameter may be read more than once (tied, or a layer applied twice: ALBERT), where each
    # map reading the stream is reached at all of its uses alike (``_consistent``)
    reads = linear_reads(traced)
    uses = {**uses, **{name: 1 for name, count in uses.items() if count > 1 or name in tied}}
    members = list(stream)

    def attempt(kept_sources):
        return attempt_with(kept_sources, [])

    def attempt_with(kept_sources, more):
        return _consistent(walk_from(kept_sources, more), reads)

    def walk_from(kept_sources, more):
        seeds = {p.node: unit_index(shape(p.node), p.axis, p.units) for p in members + more}
        for node, _ in kept_sources:
            seeds[node] = unit_index(shape(node), len(shape(node)) - 1, units)
        return run(seeds, Mode.PERM, units, uses)

    for _ in range(8):
        perm = attempt(sources)
        partner = _producer_behind(perm.partner, by_node) if perm.partner is not None else None
        if perm.ok or partner is None or partner in members or partner.units != units:
            break
        members.append(partner)
    # a head tied to the embedding but reading a transform of the stream (BERT's masked-LM head: dense,
    # activation, norm, then the tied decoder) reads the permuted columns too: where the transform's
    # first map reads the stream, its units permute with the stream (its rows, its norm's parameters)
    reached = {consumer.node: consumer for consumer in perm.consumers} if perm.ok else {}
    heads = [_producer_behind(x, by_node) for name in tied for x in linear_inputs_reading(traced, name)]
    heads = [p for p in dict.fromkeys(heads) if p is not None and p not in members and p.units == units
             and p.node in reached]
    if heads and (joint := attempt_with(sources, heads)).ok:
        members.extend(heads)
        joint.consumers.extend(reached[p.node] for p in heads)  # their columns, read from the stream
        perm = joint
    if not perm.ok:
        failed = perm
        for left_out in list(sources):
            kept = [s for s in sources if s is not left_out]
            if (perm := attempt(kept)).ok:
                sources = kept
                break
        else:
            for _, name in sources:
                note(name, failed)
            return
    slots = _permuted_slots(perm, units)
    if slots is None:
        return
    incoming = [slot for p in members for slot in _rows(p, 0, units)] + slots[0]
    for node, name in sources:
        incoming.append(Slot(name, 1 if is_lookup(node) else len(shape(node)) - 1, 0, units))
    incoming = list(dict.fromkeys(incoming))
    outgoing = []
    for slot in slots[1]:
        if slot.param in tied:  # a head tied to an embedding: the columns the embedding permutes
            if slot not in incoming:
                return
            continue
        outgoing.append(slot)
    if outgoing and units >= 2:
        emit(Symmetry(Kind.PERMUTATION, label, tuple(_merge(incoming)), tuple(outgoing), units=units))


def _block_slots(block: Tensor, members: list[Producer]) -> list[Slot] | None:
    """The rows of a block of units (ascending, contiguous, in one producer), with the bias rows."""
    values = block.tolist()
    if values != list(range(values[0], values[0] + len(values))):
        return None
    producer, local = _owner(values[0], members)
    end_producer, _ = _owner(values[-1], members)
    if end_producer is not producer:
        return None
    return _rows(producer, local, local + len(values))


def _emit_gl(gl: Walk, members: list[Producer], emit, attention: dict) -> None:
    """GL(d) per query/key component and per value block (module docstring)."""
    components: dict[tuple, dict] = {}
    for node, q, k in gl.pairs:
        key = (node, tuple(k.tolist()))
        entry = components.setdefault(key, {"node": node, "k": k, "q": []})
        if not any(torch.equal(q, other) for other in entry["q"]):
            entry["q"].append(q)
    q_units = {u for entry in components.values() for q in entry["q"] for u in q.tolist()}
    k_units = {u for entry in components.values() for u in entry["k"].tolist()}
    if q_units & k_units:
        return
    for index, entry in enumerate(sorted(components.values(), key=lambda e: int(e["k"][0]))):
        incoming = [s for q in entry["q"] for s in (_block_slots(q, members) or [None])]
        outgoing = _block_slots(entry["k"], members)
        if outgoing is None or any(s is None for s in incoming):
            continue
        module = _module_of(incoming[0].param)
        d = len(entry["k"])
        emit(Symmetry(Kind.GL, f"gl/{module}/head{index}/qk", tuple(incoming), tuple(outgoing), units=d))
        attention.setdefault(entry["node"], {}).setdefault("qk", []).append((entry["q"], entry["k"], incoming, outgoing))
    blocks = sorted({(node, tuple(b.tolist())) for node, b in gl.value_blocks}, key=lambda nb: nb[1][0])
    for index, (node, block) in enumerate(blocks):
        incoming = _block_slots(torch.tensor(block), members)
        d = len(block)
        outgoing = [Slot(c.weight, c.in_dim, start, start + d) for c in gl.consumers
                    for a, b in _runs(c, list(block)) or [] for start in range(a, b, d)]
        runs_ok = all(c.columns[s.start:s.stop].tolist() == list(block) for c in gl.consumers for s in outgoing
                      if s.param == c.weight)
        if incoming is None or not outgoing or not runs_ok:
            continue
        module = _module_of(incoming[0].param)
        emit(Symmetry(Kind.GL, f"gl/{module}/head{index}/vo", tuple(incoming), tuple(outgoing), units=len(block)))
        attention.setdefault(node, {}).setdefault("vo", []).append((incoming, outgoing))


BOTTLENECK_UNITS = 128  # the most units a linear bottleneck's GL is sought for (its d^2 generators)


def _emit_bottleneck(gl: Walk, producer: Producer, rank: int, emit) -> bool:
    """GL(r) of a linear bottleneck: a map's r output units read only by linear maps, with nothing
    between but what commutes with any invertible r x r matrix M (a LoRA adapter's A then B, a
    factorised projection): W_in -> M W_in (its bias likewise), W_out -> W_out M^-1 on the columns
    reading the units, in their order. Emitted where r <= BOTTLENECK_UNITS, the map can mix its
    outputs (a linear map's 2-d weight or a convolution's, not a grouped or depthwise one, nor the
    experts' 3-d weights, whose every expert would need its own M) and every consumer reads the r
    units once, as one run in order; returns whether it was."""
    units = producer.units
    conv = packet(producer.node) in ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d",
                                     "conv_transpose2d", "conv_transpose3d")
    if not gl.consumers or not 2 <= units <= BOTTLENECK_UNITS or producer.grouped or not (rank == 2 or conv):
        return False
    outgoing = []
    for consumer in gl.consumers:
        runs = _runs(consumer, list(range(units))) or []
        if len(runs) != 1 or runs[0][1] - runs[0][0] != units \
                or consumer.columns[runs[0][0]:runs[0][1]].tolist() != list(range(units)):
            return False
        outgoing.append(Slot(consumer.weight, consumer.in_dim, *runs[0]))
    emit(Symmetry(Kind.GL, f"gl/{_module_of(producer.weight)}/bottleneck", tuple(_rows(producer, 0, units)),
                  tuple(outgoing), units=units))
    return True


def _emit_stream_scale(traced: TracedModel, stream: list[Producer], run, emit) -> None:
    """The residual stream's scale: x -> a x for the embeddings and every branch output added to the
    stream leaves every pre-norm's input direction, hence the output, unchanged where each path from
    the stream ends in a norm (the final norm included; a SCALAR walk from all of them at once)."""
    sources = stream_sources(traced)
    if not stream or not sources:
        return
    seeds = {p.node: unit_index(shape(p.node), p.axis, p.units) for p in stream}
    for node, _ in sources:
        node_shape = shape(node)
        seeds[node] = torch.zeros(node_shape, dtype=torch.long)
    scalar = run(seeds, Mode.SCALAR, 1)
    if not (scalar.ok and scalar.absorbed):
        return
    incoming = [slot for p in stream for slot in _rows(p, 0, p.units)]
    for _, name in sources:
        incoming.append(Slot(name, 0, 0, shape(_placeholder(traced, name))[0]))
    emit(Symmetry(Kind.SCALE, "scale/residual_stream", tuple(incoming)))


def _emit_embedding_translations(traced: TracedModel, run, emit, uses: dict[str, int]) -> None:
    """An embedding table E whose lookups only ever shift the scores of a softmax (a relative
    position bias, T5): E[:, j] -> E[:, j] + c adds c to every looked-up entry of feature j, and
    where that is constant along the softmax axis, softmax(s + c) = softmax(s). One translation per
    column (a SHIFT walk with a random shift per column; every lookup of the table at once)."""
    lookups: dict[str, list[fx.Node]] = {}
    for node, name in stream_sources(traced, tied=True):
        if is_lookup(node):
            lookups.setdefault(name, []).append(node)
    generator = torch.Generator().manual_seed(2)
    for name, nodes in lookups.items():
        if uses.get(name) != len(nodes):
            continue  # also read by something other than a lookup (a tied output head)
        width = shape(nodes[0])[-1]
        probe = torch.randn(width, dtype=torch.float64, generator=generator)
        seeds = {node: probe.expand(shape(node)).clone() for node in nodes}
        shifted = run(seeds, Mode.SHIFT, width)
        if shifted.ok and shifted.absorbed:
            for j in range(width):
                emit(Symmetry(Kind.TRANSLATION, f"translation/{_module_of(name)}/column{j}", (Slot(name, 1, j, j + 1),)))


def _emit_key_biases(attention: dict, producers: list[Producer], run, emit) -> None:
    """A key bias q.(k + c): one translation per key unit whose shift attention absorbs (a SHIFT walk
    with a random shift on exactly those units; none where a rotation follows the key)."""
    keys: dict[str, set[int]] = {}
    for parts in attention.values():
        for _, _, _, outgoing in parts.get("qk", []):
            for slot in outgoing:
                keys.setdefault(slot.param, set()).update(range(slot.start, slot.stop))
    generator = torch.Generator().manual_seed(1)
    for producer in producers:
        if producer.bias is None or producer.bias not in keys:
            continue
        out_shape = shape(producer.node)
        per_unit = [1] * len(out_shape)
        per_unit[producer.axis] = producer.units
        # the key units among this producer's rows (it may read a slice of its bias: ``offset``)
        local = sorted(j - producer.bias_offset for j in keys[producer.bias]
                       if producer.bias_offset <= j < producer.bias_offset + producer.units)
        if not local:
            continue
        mask = torch.zeros(producer.units, dtype=torch.float64)
        mask[local] = 1.0
        # integers: the products the walk forms with them are exact in any summation order (``_product``)
        probe = (torch.randint(1, 9, (producer.units,), generator=generator).to(torch.float64) * mask).reshape(per_unit)
        shifted = run({producer.node: probe.expand(out_shape)}, Mode.SHIFT, producer.units)
        if shifted.ok and shifted.absorbed:
            module = _module_of(producer.weight)
            for j in (producer.bias_offset + unit for unit in local):
                emit(Symmetry(Kind.TRANSLATION, f"translation/{module}/key_bias{j}",
                              (Slot(producer.bias, producer.bias_dim, j, j + 1),)))


def _emit_head_permutations(traced: TracedModel, attention: dict, emit, by_node: dict) -> None:
    """One head permutation per attention whose query heads each have their own key and value, or
    per group of query heads sharing one (``_emit_query_group_permutations``); where a rotary
    embedding left no query/key GL over whole heads, from the query and key producers behind the
    attention (``_emit_rotary_head_permutations``). A parameter with one entry per query head read
    on the way to the attention's output (an attention sink's learned logit, GPT-OSS) permutes with
    the heads (``_with_head_parameters``)."""
    merged: dict[fx.Node, dict] = {}
    members: dict[fx.Node, list[fx.Node]] = {}  # the products an entry merges (scores' and values')
    for node, parts in attention.items():  # eager attention: the scores' product feeds the values' one
        home = node if parts.get("qk") or not parts.get("vo") else _ancestor_with(node, attention, "qk") or node
        entry = merged.setdefault(home, {})
        members.setdefault(home, []).append(node)
        for key, values in parts.items():
            entry.setdefault(key, []).extend(values)
    for node, parts in merged.items():
        qk, vo = parts.get("qk", []), parts.get("vo", [])
        heads = len(qk)
        emitted = False
        queries = sum(len(columns) for _, columns in vo)  # every query head reads one value head
        width = vo[0][0][0].stop - vo[0][0][0].start if vo else 0  # a head's dimensions
        operands = _query_and_key(node)
        aligned = _head_parameters(traced, [member for member in members[node] if attention[member].get("vo")],
                                   operands, by_node, queries, len(vo), width)
        emit_heads = _with_head_parameters(emit, *aligned, queries) if any(aligned) else emit
        if len(vo) == heads and any(len(q) > 1 for q, _, _, _ in qk):
            emitted = _emit_query_group_permutations(qk, vo, emit_heads)
        if not emitted and heads >= 2 and len(vo) == heads and all(len(q) == 1 for q, _, _, _ in qk):
            roles = ([s for _, _, inc, _ in qk for s in inc], [s for _, _, _, out in qk for s in out],
                     [s for inc, _ in vo for s in inc])
            spans = [_spans(slots, heads) for slots in roles]
            span_out = _spans([s for _, out in vo for s in out], heads)
            if span_out is not None and all(span is not None for span in spans):
                incoming = [slot for span in spans for slot in span]
                module = _module_of(incoming[0].param)
                emit_heads(Symmetry(Kind.PERMUTATION, f"permutation/{module}/heads", tuple(incoming), tuple(span_out),
                                    units=heads))
                emitted = True
        # no query/key GL (a rotary embedding), or GL on part of each head's dimensions only (a
        # partial rotary embedding, whose blocks do not span whole heads): from the projections
        if not emitted and vo:
            if operands is not None:
                _emit_rotary_head_permutations(*operands, vo, by_node, emit_heads)


def _head_parameters(traced: TracedModel, outputs: list[fx.Node], operands: tuple | None, by_node: dict,
                     queries: int, kv: int, width: int) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """The parameters a head permutation must move too, as (name, length, dim) along their last dim:
    (those laid out by query head, those laid out by key head). Searched back from the attention's
    probabilities (from ``outputs``, its values' products or ``scaled_dot_product_attention``'s mask:
    a learned sink logit per head, GPT-OSS; a relative position bias table with a column per head,
    Swin) and from its query and key operands up to their projections (a norm's gain over
    all heads' dimensions, OLMo 2's q_norm and k_norm, not a gain shared by the heads, Qwen3's); a
    length must be one entry or ``width`` entries a head (``queries`` query heads, ``kv`` key heads)."""
    starts = []
    for node in outputs:
        if packet(node) == "scaled_dot_product_attention":
            starts.append(node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask"))
        elif packet(node) in ("matmul", "bmm"):
            starts.append(node.args[0])
    by_query = [found for found in _parameters_above(traced, starts, by_node) if found[1] == queries]
    by_key = []
    if operands is not None and width > 1:
        by_query += [found for found in _parameters_above(traced, [operands[0]], by_node)
                     if found[1] == queries * width and found[2] == 0]
        by_key = [found for found in _parameters_above(traced, [operands[1]], by_node)
                  if found[1] == kv * width and found[2] == 0]
    return list(dict.fromkeys(by_query)), list(dict.fromkeys(by_key))


def _parameters_above(traced: TracedModel, starts: list, by_node: dict) -> list[tuple[str, int, int]]:
    """(name, length, dim) of the 1-D and 2-D parameters above ``starts`` along their last dim (at
    most 32 nodes back), not past a
    product, a projection (``by_node``), a norm over features (its own parameters are found where
    the norm is the start's last op) or an op that reads only a shape (a mask made like x)."""
    found: list[tuple[str, int, int]] = []
    queue, seen = [start for start in starts if isinstance(start, fx.Node)], set()
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            name, size = traced.parameters.get(current.name), shape(current)
            if name is not None and size is not None and len(size) in (1, 2):
                found.append((name, size[-1], len(size) - 1))
            continue
        if current in by_node or shape_only(current) or \
                packet(current) in ("matmul", "bmm", "baddbmm", "linear", "mm", "addmm"):
            continue
        queue.extend(current.all_input_nodes)
    return found


def _with_head_parameters(emit, by_query: list[tuple[str, int, int]], by_key: list[tuple[str, int, int]],
                          queries: int):
    """``emit`` with each head permutation extended to the parameters laid out by head
    (``_head_parameters``; ``queries`` query heads): a group g of the r query heads sharing a key takes
    entries [g r w, (g + 1) r w) of each query-laid parameter (w = its length / queries entries a
    head); all heads, or all kv groups, take every entry of both kinds. The exact check confirms."""
    def extended(sym: Symmetry) -> None:
        more: list[Slot] = []
        if sym.kind is Kind.PERMUTATION and "/query_heads/group" in sym.label:
            r, g = sym.unit_count, int(sym.label.rsplit("group", 1)[1])
            more = [Slot(name, dim, g * r * (size // queries), (g + 1) * r * (size // queries))
                    for name, size, dim in by_query]
        elif sym.kind is Kind.PERMUTATION and sym.label.endswith(("/heads", "/kv_groups")):
            more = [Slot(name, dim, 0, size) for name, size, dim in by_query + by_key if size % sym.unit_count == 0]
        emit(dataclasses.replace(sym, incoming=sym.incoming + tuple(more)) if more else sym)
    return extended


def _emit_query_group_permutations(qk: list, vo: list, emit) -> bool:
    """Grouped-query attention (several query heads read one key and value head: Llama, Qwen2,
    Mistral; multi-query attention is one group): within a group, permuting the query heads' rows
    with the output projection's columns of those heads leaves every head's output where its columns
    read it. Key head j is paired with value head j (both in unit order), and the group's query heads
    with the value head's output column runs, both in unit order (the check confirms the pairing).
    Whether any was emitted."""
    emitted = False
    by_key = sorted(qk, key=lambda entry: int(entry[1][0]))
    by_value = sorted(vo, key=lambda entry: (entry[0][0].param, entry[0][0].start))
    for index, ((queries, _, incoming, _), (_, columns)) in enumerate(zip(by_key, by_value)):
        group = len(queries)
        if group < 2 or len(incoming) % group or len(columns) != group:
            continue
        size = len(incoming) // group
        chunks = sorted(zip((int(q[0]) for q in queries), (incoming[i * size:(i + 1) * size] for i in range(group))))
        rows = _spans([slot for _, chunk in chunks for slot in chunk], group)
        outgoing = _spans(sorted(columns, key=lambda slot: slot.start), group)
        if rows is None or outgoing is None:
            continue
        module = _module_of(rows[0].param)
        emit(Symmetry(Kind.PERMUTATION, f"permutation/{module}/query_heads/group{index}", tuple(rows), tuple(outgoing),
                      units=group))
        emitted = True
    return emitted


def _producer_above(start, by_node: dict) -> Producer | None:
    """The nearest producer above ``start`` (within 48 nodes): the projection a query or key reaches
    attention from, through reshapes, a rotary embedding and norms."""
    found = _first_above([start], lambda node: node in by_node, 48)
    return by_node[found] if found is not None else None


def _query_and_key(node: fx.Node) -> tuple | None:
    """The query and key operands of an attention: ``scaled_dot_product_attention``'s first two, or,
    for attention written out (softmax(q @ k^T) @ v, ``node`` the product with v), the operands of
    the product of two activations above its probabilities (within 16 nodes)."""
    if packet(node) == "scaled_dot_product_attention":
        return node.args[0], node.args[1]
    if packet(node) not in ("matmul", "bmm"):
        return None
    scores = _first_above([node.args[0]], lambda current: _operands(current) is not None and all(
        isinstance(a, fx.Node) and a.op != "placeholder" for a in _operands(current)), 16)
    return _operands(scores) if scores is not None else None


def _operands(node: fx.Node) -> tuple | None:
    """The two factors of a product of activations (``baddbmm``'s bias left aside), or None."""
    kind = packet(node)
    return (node.args[0], node.args[1]) if kind in ("matmul", "bmm") else (
        (node.args[1], node.args[2]) if kind == "baddbmm" else None)


def _first_above(starts, accept, limit: int) -> fx.Node | None:
    """The nearest node at or above ``starts`` (breadth first, within ``limit`` nodes) that ``accept``
    takes."""
    queue, seen = [start for start in starts if isinstance(start, fx.Node)], set()
    while queue and len(seen) < limit:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        if accept(current):
            return current
        queue.extend(current.all_input_nodes)
    return None


def _emit_rotary_head_permutations(query_operand, key_operand, vo: list, by_node: dict, emit) -> None:
    """Head permutations of an attention whose queries and keys carry a rotary embedding (Llama,
    Qwen2, Mistral; ``query_operand`` and ``key_operand`` as ``_query_and_key`` finds them): the
    embedding turns every head's dimensions alike, so whole heads still permute.
    The value heads (``vo``, in unit order) give the head width d and, per value head, the output
    projection's column runs of the query heads that read it (r of them). Emitted: with r = 1, one
    permutation of all heads (query, key and value rows, output columns); with r > 1, one per value
    head of its r query heads (query rows, output columns) and one of the groups (each value head
    with its key head and its r query heads). The layout (head h's rows at h d) is assumed and the
    exact check confirms or refutes it."""
    query, key = _producer_above(query_operand, by_node), _producer_above(key_operand, by_node)
    blocks = sorted(vo, key=lambda entry: (entry[0][0].param, entry[0][0].start))
    values = [incoming for incoming, _ in blocks]
    runs = [sorted(columns, key=lambda slot: slot.start) for _, columns in blocks]
    d = values[0][0].stop - values[0][0].start
    kv, groups = len(blocks), {len(r) for r in runs}
    if query is not None and query is key:
        _emit_fused_head_permutations(query, values, runs, d, emit)
        return
    if query is None or key is None or query is key or len(groups) != 1 or d < 1:
        return
    group = groups.pop()
    if query.units != kv * group * d or key.units != kv * d or any(s.stop - s.start != d for r in runs for s in r):
        return
    module = _module_of(query.weight)
    value_spans = _spans([slot for incoming in values for slot in incoming], kv)
    column_spans = _spans([slot for r in runs for slot in r], kv * group)
    if value_spans is None or column_spans is None:
        return
    for index, columns in enumerate(runs if group > 1 else ()):
        width = group * d
        outgoing = _spans(columns, group)
        if outgoing is not None:
            emit(Symmetry(Kind.PERMUTATION, f"permutation/{module}/query_heads/group{index}",
                          tuple(_rows(query, index * width, (index + 1) * width)), tuple(outgoing), units=group))
    if kv >= 2:  # whole heads (one query head each) or whole groups, each with its key and value head
        incoming = [*_rows(query, 0, query.units), *_rows(key, 0, key.units), *value_spans]
        emit(Symmetry(Kind.PERMUTATION, f"permutation/{module}/{'heads' if group == 1 else 'kv_groups'}",
                      tuple(incoming), tuple(column_spans), units=kv))


def _emit_tied_head_biases(traced: TracedModel, by_node: dict, run, emit, uses: dict[str, int]) -> None:
    """The bias of a linear map whose weight is tied (an output head reading the token embedding, so
    not a producer): b -> b + c 1 shifts every logit alike, which a softmax absorbs (a SHIFT walk
    from its output, constant along the units, as for a producer's bias)."""
    generator = torch.Generator().manual_seed(3)
    for node, bias in biased_maps(traced):
        if node in by_node or uses.get(bias) != 1:
            continue
        out_shape = shape(node)
        along = [*out_shape[:-1], 1]
        probe = torch.randn(along, dtype=torch.float64, generator=generator).expand(out_shape)
        shifted = run({node: probe}, Mode.SHIFT, out_shape[-1])
        if shifted.ok and shifted.absorbed:
            emit(Symmetry(Kind.TRANSLATION, f"translation/{_module_of(bias)}/bias", (Slot(bias, 0, 0, out_shape[-1]),)))


def _emit_expert_permutations(traced: TracedModel, producers: list[Producer], by_node: dict, emit) -> None:
    """A mixture of experts: the router's rows (its logits, one per expert) and every expert weight's
    slice along the experts axis (dim 0 of a grouped product's 3-D weight, (experts, out, in)) permuted
    together leave the routing, hence the output, unchanged: each token reaches the same experts, now
    at other indices. The router is the one producer above the grouped products' expert offsets (the
    counts of tokens per expert, from its top-k); the exact check confirms."""
    sizes = {n.name: shape(n) for n in traced.graph.nodes if n.op == "placeholder"}
    by_param = {name: sizes[node] for node, name in traced.parameters.items()}
    routed: dict[Producer, list[Producer]] = {}
    for producer in producers:
        node = _grouped_product(producer)
        if node is None:
            continue
        offsets = node.args[2] if len(node.args) > 2 else node.kwargs.get("offs")
        above = _first_above([offsets], lambda current: current in by_node and not _is_grouped(by_node[current]), 32) \
            if isinstance(offsets, fx.Node) else None
        router = by_node.get(above)
        if router is not None:
            routed.setdefault(router, []).append(producer)
    for router, experts in routed.items():
        count = router.units
        if count < 2 or any((by_param.get(p.weight) or (0,))[0] != count for p in experts):
            continue
        # the experts' other tensors with one slice per expert (their biases, gathered per token)
        modules = {_module_of(p.weight) for p in experts}
        weights = {p.weight for p in experts}
        others = [name for name, size in by_param.items() if name not in weights and _module_of(name) in modules
                  and size and size[0] == count]
        emit(Symmetry(Kind.PERMUTATION, f"permutation/{_module_of(experts[0].weight)}/experts",
                      tuple(_rows(router, 0, count)),
                      tuple(Slot(name, 0, 0, count) for name in [*[p.weight for p in experts], *others]), units=count))


def _grouped_product(producer: Producer) -> fx.Node | None:
    """The grouped expert product behind ``producer`` (its node, or the input of the add of its gathered
    bias), or None for any other map."""
    node = producer.node
    if packet(node) in GROUPED_PRODUCTS:
        return node
    return next((a for a in node.all_input_nodes if packet(a) in GROUPED_PRODUCTS), None)


def _is_grouped(producer: Producer) -> bool:
    return _grouped_product(producer) is not None


def _emit_fused_head_permutations(fused: Producer, values: list, runs: list, d: int, emit) -> None:
    """Head permutations of one fused query-key-value projection (``values``: each value head's row
    slots, ``runs``: the output projection's column runs of the query heads reading it, both in value
    head order; d the head width). With kv value heads read by r query heads each (n = kv r), two
    layouts of its (n + 2 kv) d rows are known:
    per group, [q_(g r) .. q_(g r + r - 1), k_g, v_g] for each group g in turn (GPT-NeoX and BLOOM, r = 1;
    Falcon's grouped layout): value head g at rows g (r + 2) d + (r + 1) d, a group one contiguous block;
    blocked, [Q | K | V] (Phi-3; Falcon's multi-query layout): value head g at rows (n + kv) d + g d.
    Emitted as for separate projections: the query heads within each group (their query rows, the
    output columns), and the groups (every row, all output columns) where kv >= 2. The exact check
    confirms or refutes the layout (ALiBi's per-head slopes refute the second)."""
    group_sizes = {len(r) for r in runs}
    kv = len(values)
    if len(group_sizes) != 1 or values[0][0].param != fused.weight or d < 1 or \
            any(s.stop - s.start != d for r in runs for s in r):
        return
    r = group_sizes.pop()
    heads = kv * r
    if fused.units != (heads + 2 * kv) * d:
        return
    starts = [incoming[0].start for incoming in values]
    width = (r + 2) * d
    if starts == [g * width + (r + 1) * d for g in range(kv)]:
        query_rows = [(g * width, g * width + r * d) for g in range(kv)]
        whole = _rows(fused, 0, fused.units)
    elif starts == [(heads + kv + g) * d for g in range(kv)]:
        query_rows = [(g * r * d, (g + 1) * r * d) for g in range(kv)]
        whole = [*_rows(fused, 0, heads * d), *_rows(fused, heads * d, (heads + kv) * d),
                 *_rows(fused, (heads + kv) * d, fused.units)]
    else:
        return
    module = _module_of(fused.weight)
    for index, columns in enumerate(runs if r > 1 else ()):
        outgoing = _spans(columns, r)
        if outgoing is not None:
            emit(Symmetry(Kind.PERMUTATION, f"permutation/{module}/query_heads/group{index}",
                          tuple(_rows(fused, *query_rows[index])), tuple(outgoing), units=r))
    columns = _spans([slot for run in runs for slot in run], kv)
    if kv >= 2 and columns is not None:
        emit(Symmetry(Kind.PERMUTATION, f"permutation/{module}/{'heads' if r == 1 else 'kv_groups'}",
                      tuple(whole), tuple(columns), units=kv))


def _ancestor_with(node: fx.Node, attention: dict, key: str) -> fx.Node | None:
    """The nearest node above ``node`` (within 32 nodes) that holds ``key`` in ``attention``."""
    return _first_above(node.all_input_nodes, lambda current: attention.get(current, {}).get(key), 32)


def _spans(slots: list[Slot], heads: int) -> list[Slot] | None:
    """Per (param, dim): the blocks of the heads merged into contiguous spans of ``heads`` equal blocks."""
    grouped: dict[tuple[str, int], list[Slot]] = {}
    for slot in slots:
        grouped.setdefault((slot.param, slot.dim), []).append(slot)
    spans = []
    for (param, dim), members in grouped.items():
        members = sorted(members, key=lambda s: s.start)
        sizes = {s.stop - s.start for s in members}
        if len(sizes) != 1 or any(a.stop != b.start for a, b in zip(members, members[1:])):
            return None
        if len(members) % heads:
            return None
        spans.append(Slot(param, dim, members[0].start, members[-1].stop))
    return spans


# ---------------------------------------------------------------------------------------------
# the exact check


def exact_defects(model: nn.Module, example_input, symmetries, *, logits: bool = True, class_dim: int = -1,
                  seed: int = 0, samples: int | None = None) -> dict[str, float]:
    """label -> relative output change under one finite element of each symmetry's group, measured in
    float64 on the traced graph with every norm epsilon at 0 and dropout off (``trace.ExactEvaluator``).

    A true symmetry gives round-off (< EXACT_TOLERANCE); anything else names its size. With
    ``samples``, each kind is also moved jointly (every member with its own element, one evaluation,
    key ``"joint/<kind>"``) and only ``samples`` members per kind, spread over the model, alone; the
    others alone only where the joint change is not round-off (a 124M model has ~3e4 symmetries).
    The model, its mode and the global RNG are left as they were.
    Raises: TraceError where torch.export cannot trace the model whole.
    """
    return exact_check(model, example_input, symmetries, logits=logits, class_dim=class_dim, seed=seed,
                       samples=samples)[0]


def exact_check(model: nn.Module, example_input, symmetries, *, logits: bool = True, class_dim: int = -1,
                seed: int = 0, samples: int | None = None, anywhere: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """(``exact_defects``, the epsilons that measurement set to 0: graph node -> the model's value),
    from one trace of the model. ``anywhere``: each change the larger of the one at the model's
    parameters and the one at a random point near them (``_measure(perturbed=True)``): an action that
    forgets a tensor whose values make it invisible here (gains of 1, zero biases at initialisation)
    is seen there."""
    rng = torch.get_rng_state()
    model = unwrapped_model(model)
    try:
        traced = _traced(model, example_input)
        classes = class_axis(logits, class_dim)
        evaluate = ExactEvaluator(traced, model)
        if not anywhere:
            return _measure(evaluate, model, list(symmetries), classes, samples, seed), dict(evaluate.epsilons)
        # at both points, each where it can resolve the tolerance (at the model's parameters anyway
        # where neither can)
        here = _measure(evaluate, model, list(symmetries), classes, samples, seed, conditioned=True)
        elsewhere = _measure(evaluate, model, list(symmetries), classes, samples, seed, perturbed=True, conditioned=True)
        if here is None and elsewhere is None:
            here = _measure(evaluate, model, list(symmetries), classes, samples, seed)
        found = here if elsewhere is None else elsewhere if here is None else \
            {label: max(value, elsewhere.get(label, value)) for label, value in here.items()}
        return found, dict(evaluate.epsilons)
    finally:
        torch.set_rng_state(rng)


# round-off (1e-16 relative) amplified past EXACT_TOLERANCE: a point that sensitive cannot tell a symmetry
_CONDITION_LIMIT = EXACT_TOLERANCE / 1e-16


def _ill_conditioned(output, params: Mapping[str, Tensor], reference: Tensor, seed: int) -> bool:
    """Whether the output at ``params`` moves by more than ``_CONDITION_LIMIT`` times a relative
    1e-13 nudge of every parameter: there a true symmetry's round-off alone exceeds the tolerance (at
    eps 0, a batch norm over 2 samples whose channel is constant up to round-off divides it by ~0)."""
    noise = torch.Generator().manual_seed(seed + 2)
    nudged = {name: p * (1 + 1e-13 * torch.randn(p.shape, dtype=torch.float64, generator=noise))
              for name, p in params.items()}
    return _relative_change(output(nudged), reference) > 1e-13 * _CONDITION_LIMIT


def _measure(evaluate: ExactEvaluator, model: nn.Module, symmetries: list[Symmetry], classes: int | None,
             samples: int | None, seed: int, *, perturbed: bool = False,
             conditioned: bool = False) -> dict[str, float] | None:
    """The exact changes of ``exact_defects`` through ``evaluate`` (joint per kind where ``samples``).
    ``perturbed``: at a random point near the model's parameters (each p + 0.2 max(std p, 0.05) z,
    z ~ N(0, 1)) instead of at them: a group acts on every point of parameter space, and at
    initialisation a norm's gains (all 1) and zero biases make many wrong actions on them invisible.
    A point whose output is not finite where the model's is (a lone ReLU unit dead on every sample
    there, before a norm at eps 0: 0/0), or that is ill-conditioned (``_ill_conditioned``), says
    nothing: the model's own parameters are used then. ``conditioned``: None where the point
    measured at is ill-conditioned (a caller with another point to measure at)."""
    params = {name: p.detach().to(torch.float64, copy=True) for name, p in model.named_parameters()}
    random = torch.Generator().manual_seed(seed)

    def normalised(out: Tensor) -> Tensor:
        return torch.log_softmax(out, dim=classes) if classes is not None else out

    def output(values: Mapping[str, Tensor]) -> Tensor:
        return normalised(evaluate(values))

    reference = evaluate(params)
    if classes is not None:
        class_axis(True, classes, reference)
    reference = normalised(reference)
    settled = False  # whether the point measured at is known to be well-conditioned
    if perturbed:
        noise = torch.Generator().manual_seed(seed + 1)
        nearby = {name: p + 0.2 * max(float(p.std()) if p.numel() > 1 else 0.0, 0.05)
                  * torch.randn(p.shape, dtype=torch.float64, generator=noise) for name, p in params.items()}
        there = output(nearby)
        if bool(torch.isfinite(there)[torch.isfinite(reference)].all()) and not _ill_conditioned(output, nearby, there, seed):
            params, reference, settled = nearby, there, True
    if conditioned and not settled and _ill_conditioned(output, params, reference, seed):
        return None
    out: dict[str, float] = {}
    alone = symmetries
    if samples is not None:
        alone = []
        by_kind: dict[Kind, list[Symmetry]] = {}
        for sym in symmetries:
            by_kind.setdefault(sym.kind, []).append(sym)
        for kind, members in by_kind.items():
            touched = {slot.param for sym in members for slot in sym.slots}
            change = 0.0
            for subset in _separating_subsets(len(members), kind):
                for element in range(_elements(kind)):
                    joint = {k: (v.clone() if k in touched else v) for k, v in params.items()}
                    for index in subset:  # in place on the copies: no copy per symmetry
                        # each member of a one-parameter kind (and rotation) by its own amount
                        size = 0.5 + float(torch.rand((), generator=random)) if kind in _BY_AMOUNT else 1.0
                        joint = _moved(members[index], joint, random, copy=False, element=element, size=size)
                    change = max(change, _relative_change(output(joint), reference))
            out[f"joint/{kind.value}"] = change
            step = max(1, len(members) // max(samples, 1))
            alone += members if change > EXACT_TOLERANCE else members[::step][:samples]
    for sym in alone:
        out[sym.label] = max(_relative_change(output(_moved(sym, params, random, element=element)), reference)
                             for element in range(_elements(sym.kind)))
    return out


# the kinds whose finite element is an amount (``_moved``): their joint move gives each member its own
_BY_AMOUNT = frozenset({Kind.TRANSLATION, Kind.SCALE, Kind.RESCALE, Kind.ROTATION})


def _separating_subsets(count: int, kind: Kind) -> list[range | list[int]]:
    """The members (by index) each joint move of a kind moves. Two wrong candidates can undo each other
    when moved by the same element (one permutation of the heads of two attention streams that are
    added head by head: each alone re-pairs them, together they are the true symmetry). Members of a
    kind moved by an amount get amounts of their own, and GL's elements are drawn per member: one move
    of all of them tells. A permutation's elements are the generators of S_n, the same for every member
    of its size: all of them, then, for each bit of an index, those whose index has it set, so that any
    two members are apart in some move (log2 n more moves)."""
    if kind is not Kind.PERMUTATION or count < 2:
        return [range(count)]
    return [range(count)] + [[i for i in range(count) if i >> bit & 1] for bit in range((count - 1).bit_length())]


def _elements(kind: Kind) -> int:
    """How many group elements ``_moved`` checks for a symmetry of ``kind``: a permutation both
    generators of S_n (``permutation_generators``), every other kind one element."""
    return 2 if kind is Kind.PERMUTATION else 1


def _checked(model: nn.Module, traced: TracedModel, candidates: list[Symmetry], classes: int | None,
             samples: int) -> tuple[list[Symmetry], list[Symmetry]]:
    """The candidates that keep the float64, eps-free output (relative change < EXACT_TOLERANCE);
    a candidate whose slots do not fit its parameters' shapes (an analysis fault) is refuted unmeasured."""
    shapes = {name: p.shape for name, p in model.named_parameters(remove_duplicate=False)}
    fits = lambda slot: slot_fits(slot, shapes)
    misfits = [dataclasses.replace(sym, defect=math.inf) for sym in candidates if not all(map(fits, sym.slots))]
    candidates = [sym for sym in candidates if all(map(fits, sym.slots))]
    if not candidates:
        return [], misfits
    measured = _measure(ExactEvaluator(traced, model), model, candidates, classes, samples, 0, perturbed=True)
    kept, rejected = [], []
    for sym in candidates:
        value = measured.get(sym.label)
        if value is not None and value > EXACT_TOLERANCE:
            rejected.append(dataclasses.replace(sym, defect=value))
        else:
            kept.append(dataclasses.replace(sym, defect=value) if value is not None else sym)
    return kept, rejected + misfits


def _relative_change(moved: Tensor, reference: Tensor) -> float:
    """max |moved - reference| / max |reference| over the entries where the reference is finite (at
    eps = 0 a norm of an all-zero vector, e.g. dead ReLU units, is 0/0 whatever the parameters); a
    non-finite moved value there is an infinite change."""
    finite = torch.isfinite(reference)
    if not bool(finite.any()):
        return float("inf")
    size = float(reference[finite].abs().max()) or 1.0
    change = float((moved[finite] - reference[finite]).abs().max()) / size
    return change if change == change else float("inf")


def _moved(sym: Symmetry, values: dict, random: torch.Generator, *, copy: bool = True, element: int = 0,
           size: float = 1.0) -> dict:
    """``values`` moved by one finite element of ``sym``'s group (new tensors where touched; without
    ``copy``, in place); for a permutation, generator ``element`` of S_n (``permutation_generators``:
    a random permutation of two units is the identity half the time, and proves nothing then);
    ``size`` multiplies the amount or angle of a kind moved by one (``_BY_AMOUNT``)."""
    if sym.kind.one_parameter:
        return act(sym, values, _CHECK_AMOUNT[sym.kind] * size, copy=copy)
    if sym.kind is Kind.PERMUTATION:
        generators = permutation_generators(sym.unit_count)
        if not generators:
            return values if not copy else dict(values)
        return permute(sym, values, generators[element % len(generators)], copy=copy)
    if sym.kind is Kind.ROTATION:
        return act_rotation(sym, values, 0.5 * size, copy=copy)
    return act_gl(sym, values, random_gl_element(sym.unit_count, 0.3, random), copy=copy)

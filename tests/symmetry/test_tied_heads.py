"""A masked-LM head tied to the token embedding through a transform (Hugging Face BERT: dense,
activation, LayerNorm, then the decoder that reads the word embedding), from a config. Truth: the
residual stream's permutation applied by hand to every parameter by its role, in float64. Before: the
stream's permutation permuted the tied embedding's columns but not the head's transform, so the
candidate was refuted and 52% of BertForMaskedLM (RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT alike)
was left without a symmetry."""

import pytest
import torch
from torch.func import functional_call

import shockwatch as sw
from shockwatch.symmetry import Kind

transformers = pytest.importorskip("transformers")

HIDDEN, VOCAB = 16, 23


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=40, num_hidden_layers=2,
                                     num_attention_heads=2, max_position_embeddings=20)
    model = transformers.BertForMaskedLM(config).double().eval()
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return model, ids, params


def _roles(params) -> dict[str, tuple[int, ...]]:
    """param -> the dims that carry the stream's features, by each parameter's role in BERT."""
    roles = {}
    for name in params:
        if name.endswith(("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")):
            roles[name] = (1,)
        elif "LayerNorm" in name:
            roles[name] = (0,)
        elif name.endswith(("self.query.weight", "self.key.weight", "self.value.weight", "intermediate.dense.weight")):
            roles[name] = (1,)  # they read the stream
        elif name.endswith(("attention.output.dense.weight", "output.dense.weight")) and "intermediate" not in name:
            roles[name] = (0,)  # they write it
        elif name.endswith(("attention.output.dense.bias", "output.dense.bias")):
            roles[name] = (0,)
        elif name == "cls.predictions.transform.dense.weight":
            roles[name] = (0, 1)  # reads the stream, and its units meet the tied decoder's columns
        elif name == "cls.predictions.transform.dense.bias":
            roles[name] = (0,)
    return roles


def _along(tensor, dims, order):
    for dim in dims:
        tensor = tensor.index_select(dim, order)
    return tensor


def test_the_stream_permutation_runs_through_a_tied_masked_lm_head(bert):
    """Permuting the stream's 16 features in every parameter by its role (embeddings' columns, every
    LayerNorm, the rows written to the stream, the columns read from it) and the head's transform (its
    dense rows and bias, its LayerNorm) leaves the masked-LM logits unchanged to round-off; leaving the
    transform's rows out does not. The library finds this permutation with exactly these slots (the
    decoder's columns are the embedding's, so they move with it), and the decoder bias's translation
    (b + c 1: softmax absorbs it). Every parameter is covered and nothing is refuted."""
    model, ids, params = bert
    run = lambda p: functional_call(model, p, (ids,)).logits.log_softmax(-1)
    base = run(params)
    change = lambda moved: float((run(moved) - base).abs().max() / base.abs().max())
    order = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(1))
    roles = _roles(params)
    assert change({name: _along(t, roles.get(name, ()), order) for name, t in params.items()}) < 1e-12
    partial = {**roles, "cls.predictions.transform.dense.weight": (1,), "cls.predictions.transform.dense.bias": ()}
    assert change({name: _along(t, partial.get(name, ()), order) for name, t in params.items()}) > 1e-6
    shifted = {**params, "cls.predictions.bias": params["cls.predictions.bias"] + 0.9}
    assert change(shifted) < 1e-12

    found = sw.find_symmetries(model, {"input_ids": ids})
    assert found.rejected == () and dict(found.reasons) == {}
    stream = [sym for sym in found.of_kind(Kind.PERMUTATION) if sym.label == "permutation/residual_stream"]
    assert len(stream) == 1 and stream[0].unit_count == HIDDEN
    slots = {(slot.param, slot.dim) for slot in stream[0].slots}
    assert all(slot.stop - slot.start == HIDDEN for slot in stream[0].slots)
    assert slots == {(name, dim) for name, dims in roles.items() for dim in dims}
    biases = [sym for sym in found.of_kind(Kind.TRANSLATION) if sym.label == "translation/cls.predictions/bias"]
    assert len(biases) == 1 and [(s.param, s.dim, s.start, s.stop) for s in biases[0].slots] == [
        ("cls.predictions.bias", 0, 0, VOCAB)]

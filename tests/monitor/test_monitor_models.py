"""The monitor on models as users pass them: a regression output (logits=False) and a Hugging Face
model with keyword inputs and the standard decay / no-decay AdamW groups."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.monitor import RunStore



def train(mon, opt, loss_of, steps):
    """``steps`` optimizer steps of ``loss_of()``, each observed by ``mon``."""
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        mon.step(loss)

def test_a_regression_model_gets_no_output_translation(tmp_path):
    """Truth: a regression head's output is not shifted away by a softmax, so translating its columns
    changes the prediction; with logits=False none is found, and the laws of the rest hold exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, logits=False, tensorboard=False) as mon:
        assert mon.symmetries.counts()["translation"] == 0 and mon.symmetries.counts()["rescale"] == 8
        train(mon, opt, lambda: F.mse_loss(model(x), y), 5)
    series = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).series()
    assert not any(name.endswith("/translation") for name in series)
    assert max(series["charge_law_error/rescale"][1]) < 1e-10


def test_a_hugging_face_llama_with_decay_groups_and_keyword_inputs(tmp_path):
    """Truth: the run itself. AdamW has no conservation law: the monitor must start (not refuse the
    decay / no-decay split), log the charges and their drift every step, and say why there is no law."""
    pytest.importorskip("transformers")
    built = sw.models.huggingface.build("llama", layers=1, hidden=32, heads=4, kv_heads=2, tokens=8)
    model, batch = built.model.train(), built.example_input
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=batch, tensorboard=False) as mon:
        counts = mon.symmetries.counts()
        assert counts["gl"] == 2 and counts["scale"] == 1
        train(mon, opt, lambda: model(**batch, labels=batch["input_ids"]).loss, 4)
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    series = store.series()
    no_law = [message for _, kind, message in store.events() if kind == "no-law"]
    assert len(no_law) == 1 and "param groups 0, 1" in no_law[0] and "AdamW" in no_law[0]
    assert len(series["loss"][1]) == 4 and all(v == v for v in series["loss"][1])
    assert any(name.startswith("charge_drift/") for name in series)


def test_charges_that_start_at_zero_have_finite_relative_errors(tmp_path):
    """Truth: the exact discrete law holds to round-off in float64; relative to max(size, floor) the
    logged errors of a zero-initialised bias's translation stay round-off and its drift finite (it was
    |dQ| / 1e-300 ~ 1e288)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[2].bias.zero_()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as mon:
        train(mon, opt, lambda: F.cross_entropy(model(x), y), 6)
    series = RunStore(tmp_path / "run" / "run.sqlite", read_only=True).series()
    assert max(series["charge_drift/translation"][1]) < 1e3
    assert max(series["charge_law_error/translation"][1]) < 1e-9

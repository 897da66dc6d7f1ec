"""The every-step and quotient observables, the path norm, and the TensorBoard and MLflow sinks,
each against an independent computation."""

import itertools
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.monitor import MLflowSink, RunStore, path_norm, path_norm_unsupported
from shockwatch.symmetry import act, generator
from helpers import exact_norms


def dense_horizontal_norm(symmetries, params, vector):
    """|P_H v| by least squares on the dense generator matrix J (K x D): v - J^T c, c = argmin |J^T c - v|."""
    names = list(params)
    columns = []
    for sym in symmetries:
        if not sym.kind.one_parameter:  # permutations are discrete: no orbit direction
            continue
        xi = generator(sym, params)
        columns.append(torch.cat([xi.get(n, torch.zeros_like(params[n])).reshape(-1) for n in names]))
    basis = torch.stack(columns, dim=1).double()
    flat = torch.cat([vector[n].reshape(-1) for n in names]).double()
    coefficients = torch.linalg.lstsq(basis, flat.unsqueeze(1), driver="gelsd").solution
    return float((flat - (basis @ coefficients).squeeze(1)).norm())


def test_update_and_quotient_norms_against_dense_projection(tmp_path):
    """Truth: |theta_{t+1} - theta_t| and |theta_{t+1}| from copies taken around the step; P_H by dense
    least squares.
    With BatchNorm (eps -> 0) the gradient is horizontal, so |P_H g| = |g|; weight decay's shrink of the
    scale-invariant weights is vertical, so |P_H update| < |update|."""
    torch.manual_seed(0)
    model = exact_norms(sw.models.mlp((4, 6, 5, 3), norm="batch").double())
    x = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.05)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, schedule=sw.Schedule(quotient=2, quotient_budget=None),
                         tensorboard=False)
    for step in range(1, 5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        logged = monitor.step(loss)
        update = {n: p.detach() - before[n] for n, p in model.named_parameters()}
        update_norm = math.sqrt(sum(float(u.square().sum()) for u in update.values()))
        assert math.isclose(logged["update_norm"], update_norm, rel_tol=1e-12)
        # after the step; the monitor sums it from the charges' unit sums plus the untouched parameters
        param_norm = math.sqrt(sum(float(p.detach().square().sum()) for p in model.parameters()))
        assert math.isclose(logged["param_norm"], param_norm, rel_tol=1e-12)
        assert math.isclose(logged["update_ratio"], update_norm / param_norm, rel_tol=1e-12)
        if step % 2:
            assert "grad_norm/quotient" not in logged and "update_norm/quotient" not in logged
            continue
        syms = monitor.symmetries
        assert math.isclose(logged["grad_norm/quotient"], dense_horizontal_norm(syms, before, grads), rel_tol=1e-7)
        assert math.isclose(logged["grad_norm/quotient"], logged["grad_norm"], rel_tol=1e-7)
        expected = dense_horizontal_norm(syms, before, update)
        assert math.isclose(logged["update_norm/quotient"], expected, rel_tol=1e-7)
        assert logged["update_norm/quotient"] < 0.99 * logged["update_norm"]
    monitor.close()


def brute_force_path_norm(weights, biases):
    """Sum over every path to an output of prod w^2: paths start at an input i (through weights[0]) or
    at layer s's bias (a unit fixed at 1), then pass one unit per later layer."""
    total = 0.0
    for start in range(len(weights)):
        for route in itertools.product(*[range(w.shape[0]) for w in weights[start:]]):
            tail = 1.0
            for k in range(1, len(route)):
                tail *= float(weights[start + k][route[k], route[k - 1]]) ** 2
            heads = [float(biases[start][route[0]]) ** 2]
            if start == 0:
                heads += [float(weights[0][route[0], i]) ** 2 for i in range(weights[0].shape[1])]
            total += sum(heads) * tail
    return math.sqrt(total)


def test_path_norm_is_the_sum_over_paths_and_is_rescale_invariant():
    torch.manual_seed(0)
    model = sw.models.mlp((3, 4, 2, 2)).double()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    weights, biases = [m.weight.detach() for m in linears], [m.bias.detach() for m in linears]
    expected = brute_force_path_norm(weights, biases)
    assert math.isclose(path_norm(model, (3,)), expected, rel_tol=1e-12)
    syms = sw.find_symmetries(model, torch.randn(5, 3, dtype=torch.float64))
    params = dict(model.named_parameters())
    moved = dict(params)
    for amount, sym in zip((0.7, -1.3, 0.4, 2.0, -0.5, 1.1), syms.of_kind("rescale")):
        moved = act(sym, moved, amount)
    assert any(not torch.equal(moved[n], params[n]) for n in params)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(moved[name])
    assert math.isclose(path_norm(model, (3,)), expected, rel_tol=1e-12)  # the raw |theta| moved, this did not


def test_path_norm_refuses_what_it_cannot_compute():
    assert "BatchNorm1d" in path_norm_unsupported(sw.models.mlp((3, 4, 2), norm="batch"))
    assert "Tanh" in path_norm_unsupported(sw.models.mlp((3, 4, 2), activation="tanh"))
    assert path_norm_unsupported(sw.models.mlp((3, 4, 2))) is None
    with pytest.raises(ValueError, match="path norm is defined for ReLU networks"):
        path_norm(sw.models.mlp((3, 4, 2), activation="tanh"), (3,))


def run_plain_mlp(tmp_path, steps=6, **kwargs):
    torch.manual_seed(0)
    model = sw.models.mlp((4, 8, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, schedule=sw.Schedule(quotient=3, quotient_budget=None), **kwargs) as monitor:
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            monitor.step(loss)
    return RunStore(tmp_path / "run" / "run.sqlite", resume=True)


def test_tensorboard_files_hold_what_the_store_holds(tmp_path):
    """Truth: TensorBoard's own reader (EventAccumulator) on the files the sink wrote."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = run_plain_mlp(tmp_path)
    accumulator = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert tags == set(store.names()) and "path_norm" in tags and "charge_drift/rescale" in tags
    for name in ("loss", "path_norm", "charge_law_error/rescale"):
        steps, values = store.scalars(name)
        events = accumulator.Scalars(name)
        assert [e.step for e in events] == steps
        assert all(math.isclose(e.value, v, rel_tol=1e-6) for e, v in zip(events, values))  # float32 in the file
    sink = sw.monitor.TensorBoardSink(tmp_path / "events")
    sink.log(3, {"a": 1.5, "b": math.nan})
    sink.event(3, "nonfinite", "loss nan")
    sink.close()
    accumulator = EventAccumulator(str(tmp_path / "events"))
    accumulator.Reload()
    assert accumulator.Scalars("a")[0].value == 1.5 and math.isnan(accumulator.Scalars("b")[0].value)
    assert accumulator.Tensors("events/nonfinite/text_summary")[0].tensor_proto.string_val == [b"loss nan"]


def test_mlflow_sink_batches_metrics_and_events(tmp_path, monkeypatch):
    """mlflow itself is not installed in the test environment (mlflow-skinny alone pulls ~25 packages):
    a recording stand-in for its client checks what the sink sends, against the run store."""
    sent, texts, runs = [], [], []

    class Metric:
        def __init__(self, key, value, timestamp, step):
            self.key, self.value, self.timestamp, self.step = key, value, timestamp, step

    class Client:
        def log_batch(self, run_id, metrics):
            assert len(metrics) <= 1000
            sent.append(list(metrics))

        def log_text(self, run_id, text, path):
            texts.append((path, text))

    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))
    fake = types.ModuleType("mlflow")
    fake.active_run = lambda: None
    fake.start_run = lambda run_name=None: runs.append(run_name) or run
    fake.end_run = lambda: runs.append("ended")
    fake.MlflowClient = Client
    fake.set_tracking_uri = lambda uri: None
    entities = types.ModuleType("mlflow.entities")
    entities.Metric = Metric
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    store = run_plain_mlp(tmp_path, steps=7, tensorboard=False, sinks=[MLflowSink(run_name="t", flush_every=3)])
    assert runs == ["t", "ended"]
    assert len(sent) == 3  # steps 1-3, 4-6, and 7 at close
    received = {(m.key, m.step): m.value for batch in sent for m in batch}
    for name in store.names():
        steps, values = store.scalars(name)
        assert [received[(name, s)] for s in steps] == values
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match="pip install mlflow"):
        MLflowSink()


def test_a_closure_step_is_observed_after_its_closure_runs(tmp_path):
    """Truth: the gradient the closure left (it runs inside step(), after torch's pre-hooks fire)."""
    torch.manual_seed(0)
    model = sw.models.mlp((4, 8, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        for _ in range(3):
            loss = opt.step(closure)
            logged = monitor.step(loss)
            grad_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
            assert math.isclose(logged["grad_norm"], grad_norm, rel_tol=1e-12)
            assert logged["charge_law_error/rescale"] < 1e-10


@pytest.mark.parametrize("settings", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                      dict(momentum=0.5, dampening=0.3, weight_decay=1e-2)])
def test_the_tracker_fed_by_the_pre_step_pass_keeps_the_exact_law(tmp_path, settings):
    """Truth: the exact discrete law of torch.optim.SGD (round-off in float64) and the tracker run on
    its own, reading gradients and buffers itself after each step."""
    torch.manual_seed(0)
    model = exact_norms(sw.models.mlp((4, 8, 8, 3), norm="batch").double())
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **settings)
    syms = sw.find_symmetries(model, x)
    alone = sw.ConservationTracker(model, opt, syms)
    with sw.Monitor(model, opt, tmp_path / "run", symmetries=syms, tensorboard=False) as monitor:
        for _ in range(6):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            logged = monitor.step(loss)
            alone.update()
            assert monitor._measured is None  # consumed: the monitor's tracker did not read the gradients again
    for kind in ("scale", "rescale"):
        assert logged[f"charge_law_error/{kind}"] < 1e-10
        assert alone.report().max_rel_error(kind, law="discrete") < 1e-10

"""Monitor and run store: observables against their definitions, events, resume, bad input."""

import math
import sqlite3

import pytest
import torch
import torch.nn.functional as F

import shockwatch as sw
from shockwatch.monitor import RunStore
from helpers import exact_norms


def train(monitor, model, opt, x, y, steps, poison_at=None):
    """``steps`` cross-entropy steps on (x, y) observed by ``monitor`` (its batch given for the scheduled
    routines); at ``poison_at`` the loss is NaN and the optimizer does not step. What each step logged."""
    logged = []
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if step == poison_at:
            loss = loss * float("nan")
        loss.backward()
        if step != poison_at:
            opt.step()
        logged.append(monitor.step(loss, batch=(x, y)))
    return logged


def setup(tmp_path, norm="batch", **kwargs):
    torch.manual_seed(0)
    model = exact_norms(sw.models.mlp((4, 12, 12, 3), norm=norm).double())
    x = torch.randn(32, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, **kwargs)
    return model, opt, x, y, monitor


def test_observables_match_their_definitions(tmp_path):
    """Truth: |g| recomputed from the gradients; exact symmetries give gradient breaking ~ 0 and the
    exact discrete law ~ round-off (float64, BatchNorm eps -> 0); the store holds what step() returned."""
    model, opt, x, y, monitor = setup(tmp_path)
    logged = train(monitor, model, opt, x, y, 20)
    grad_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    assert math.isclose(logged[-1]["grad_norm"], grad_norm, rel_tol=1e-12)
    assert logged[-1]["gradient_breaking/scale"] < 1e-9 and logged[-1]["gradient_breaking/rescale"] < 1e-9
    for kind in ("translation", "scale", "rescale"):
        assert logged[-1][f"charge_law_error/{kind}"] < 1e-10
    assert logged[-1]["charge_drift/scale"] > 1e-4  # weight decay moves the charges: not a vacuous zero
    steps, values = monitor.store.scalars("loss")
    assert steps == list(range(1, 21)) and values[-1] == logged[-1]["loss"]


def test_broken_symmetry_shows_in_the_gradient(tmp_path):
    """Truth: with BatchNorm's default eps the scale symmetry is broken; the monitor must see it."""
    torch.manual_seed(0)
    model = sw.models.mlp((4, 12, 3), norm="batch").double()
    for module in model.modules():
        if hasattr(module, "eps"):
            module.eps = 1.0  # a large eps: strongly broken
    x = torch.randn(32, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    syms = sw.find_symmetries(exact_norms(sw.models.mlp((4, 12, 3), norm="batch").double()), x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = sw.Monitor(model, opt, tmp_path / "run", symmetries=syms)
    logged = train(monitor, model, opt, x, y, 3)
    assert logged[-1]["gradient_breaking/scale"] > 1e-3


def test_nonfinite_steps_are_events_not_crashes(tmp_path):
    model, opt, x, y, monitor = setup(tmp_path)
    train(monitor, model, opt, x, y, 6, poison_at=3)
    events = monitor.store.events()
    assert [e[:2] for e in events] == [(0, "no-path-norm"), (4, "nonfinite")]  # BatchNorm: no path norm
    assert "BatchNorm1d" in events[0][2]
    model, opt, x, y, strict = setup(tmp_path / "strict", raise_on_nonfinite=True)
    with pytest.raises(FloatingPointError, match="step 2"):
        train(strict, model, opt, x, y, 3, poison_at=1)


_KILLED_WRITER = """
import json, os, signal, sys
import torch
from shockwatch.monitor import RunStore
store = RunStore(sys.argv[1], pending_rows=int(sys.argv[2]), background=sys.argv[5] == "1")
written = {}
for step in range(1, int(sys.argv[3]) + 1):
    values = {"loss": 1.0 / step, "grad_norm": float(step), "odd": float("nan") if step % 2 else 0.5}
    store.log(step, values)
    written[step] = values["loss"]
with open(sys.argv[4], "w") as out:
    json.dump(written, out)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no flush, no atexit: what an OOM kill leaves
"""


@pytest.mark.parametrize("pending_rows,steps,background", [(4096, 40, False), (7, 40, False), (7, 40, True)])
def test_store_survives_a_killed_writer(tmp_path, pending_rows, steps, background):
    """Truth: a writer process killed with SIGKILL after logging every step (with a ring larger than
    the run: nothing yet in the database; with a small one: flushed several times, the rest in the
    ring). A reader sees every step while nothing is recovered; a writer opening the run moves the
    ring into the database, which SQLite alone then shows."""
    import json
    import signal
    import subprocess
    import sys

    database, expected = tmp_path / "run.sqlite", tmp_path / "written.json"
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(database), str(pending_rows), str(steps),
                           str(expected), "1" if background else "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    written = {int(k): v for k, v in json.loads(expected.read_text()).items()}
    with RunStore(database, read_only=True) as reader:
        assert reader.last_step() == steps
        loss_steps, losses = reader.scalars("loss")
        assert loss_steps == list(range(1, steps + 1)) and losses == [written[s] for s in loss_steps]
        odd = reader.series()["odd"][1]
        assert all(math.isnan(v) for v in odd[::2]) and odd[1::2] == [0.5] * (steps // 2)
        assert reader.names() == ["grad_norm", "loss", "odd"]
    assert (tmp_path / "run.sqlite-pending").exists()  # the reader changed nothing
    RunStore(database, resume=True).close()  # a writer recovers, and a clean close leaves one file
    assert not (tmp_path / "run.sqlite-pending").exists()
    raw = sqlite3.connect(database).execute("SELECT step, value FROM scalars WHERE name = 'loss' ORDER BY step")
    assert [(s, v) for s, v in raw] == sorted(written.items())


def test_store_reads_a_live_run_and_refuses_to_overwrite(tmp_path):
    """A reader opened while the monitor writes sees every step logged so far (from the ring); a
    second monitor on the same directory is refused; a resumed one continues the step count."""
    model, opt, x, y, monitor = setup(tmp_path)
    train(monitor, model, opt, x, y, 5)
    with RunStore(tmp_path / "run" / "run.sqlite", read_only=True) as reader:
        assert reader.scalars("loss")[0] == [1, 2, 3, 4, 5]
        with pytest.raises(PermissionError, match="read_only"):
            reader.log(6, {"loss": 1.0})
    with pytest.raises(IsADirectoryError, match="run.sqlite"):  # the log_dir, not the store in it (SQLite:
        RunStore(tmp_path / "run", read_only=True)                # "disk I/O error")
    with pytest.raises(FileExistsError, match="resume=True"):
        sw.Monitor(model, opt, tmp_path / "run")
    monitor.close()
    resumed = sw.Monitor(model, opt, tmp_path / "run", resume=True, example_input=x)
    train(resumed, model, opt, x, y, 2)
    assert resumed.store.scalars("loss")[0] == [1, 2, 3, 4, 5, 6, 7]
    series = resumed.store.series()  # every name from one scan: the same as reading each alone
    assert set(series) == set(resumed.store.names()) and all(series[n] == resumed.store.scalars(n) for n in series)
    with pytest.raises(ValueError, match="pending_rows must be a positive int"):
        RunStore(tmp_path / "other.sqlite", pending_rows=0)
    with pytest.raises(FileNotFoundError, match="nothing to read"):
        RunStore(tmp_path / "missing.sqlite", read_only=True)


def test_model_without_symmetries_logs_raw_observables_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = sw.Monitor(model, opt, tmp_path / "run")
    logged = train(monitor, model, opt, x, y, 2)
    assert set(logged[-1]) == {"loss", "grad_norm", "param_norm", "update_norm", "update_ratio", "lr"}
    assert monitor.store.events()[0][1] == "no-symmetries"


def test_bad_input(tmp_path):
    model, opt, x, *_ = setup(tmp_path)
    for bad in ({"charges": 0}, {"charges": None}, {"quotient": 2.5}, {"curvature": -1}, {"attention": True}):
        with pytest.raises(ValueError, match=f"schedule.{next(iter(bad))} must be a positive int"):
            sw.Schedule(**bad)
    with pytest.raises(ValueError, match="schedule.early must be True or False"):
        sw.Schedule(early=1)
    for bad in (0, 1.5, -0.1, True, "5%"):
        with pytest.raises(ValueError, match="schedule.quotient_budget must be a share"):
            sw.Schedule(quotient_budget=bad)
    with pytest.raises(TypeError, match="Schedule"):
        sw.Monitor(model, opt, tmp_path / "other", schedule={"charges": 1})
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunStore(tmp_path / "missing.sqlite", resume=True)


def test_report_embeds_every_observable_and_marks_events(tmp_path):
    """Truth: the store's own names; each plot is a real PNG (its signature), events are listed."""
    import base64
    import re

    from typer.testing import CliRunner

    from shockwatch.cli import app

    model, opt, x, y, monitor = setup(tmp_path)
    train(monitor, model, opt, x, y, 6, poison_at=2)
    monitor.close()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert {name for name, _ in images} == set(RunStore(tmp_path / "run" / "run.sqlite", resume=True).names())
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert "<td>3</td><td>nonfinite</td>" in page
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "run.sqlite" in missing.output
    (tmp_path / "run" / "report.html").unlink()
    direct = CliRunner().invoke(app, ["report", str(tmp_path / "run" / "run.sqlite")])  # the store's own path
    assert direct.exit_code == 0, direct.output
    assert (tmp_path / "run" / "report.html").read_text() == page


def test_scheduled_curvature_is_logged_on_its_steps(tmp_path):
    """Truth: the schedule (steps 2 and 4 of 5) and the curvature routine itself (tested against dense
    Hessians in test_curvature.py); shock steps follow from the logged lambda_min and lr."""
    torch.manual_seed(0)
    model = sw.models.mlp((4, 6, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, loss_fn=F.cross_entropy,
                         schedule=sw.Schedule(curvature=2))
    train(monitor, model, opt, x, y, 5)
    steps, minima = monitor.store.scalars("curvature/quotient_min")
    assert steps == [2, 4]
    forecast = monitor.store.scalars("shock_steps/quotient")[1]
    for lam, steps_ahead in zip(minima, forecast):
        assert (math.isnan(steps_ahead) or steps_ahead == math.inf) if lam >= 0 else math.isclose(steps_ahead, -1 / (0.1 * lam))
    maxima = monitor.store.scalars("curvature/quotient_max")[1]
    raw = monitor.store.scalars("curvature/raw_max")[1]
    assert all(q <= r * (1 + 1e-8) for q, r in zip(maxima, raw))  # a compression cannot exceed the raw top
    with pytest.raises(ValueError, match="needs loss_fn"):
        sw.Monitor(model, opt, tmp_path / "other", schedule=sw.Schedule(curvature=3))


def test_warm_started_curvature_logs_what_cold_samples_log(tmp_path):
    """Truth: the same run's cold samples (each Lanczos from a fixed random vector, tested against dense
    Hessians). curvature_warm=True starts each sample from the last one's eigenvectors: the same
    extremes to the Lanczos tolerance (1e-9), on every scheduled step."""
    logged = {}
    for warm in (False, True):
        torch.manual_seed(0)
        model = sw.models.mlp((4, 8, 3)).double()
        x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with sw.Monitor(model, opt, tmp_path / str(warm), example_input=x, loss_fn=F.cross_entropy, tensorboard=False,
                        schedule=sw.Schedule(curvature=2, quotient=None), curvature_tol=1e-9, curvature_warm=warm) as mon:
            train(mon, model, opt, x, y, 6)
            logged[warm] = {name: mon.store.scalars(f"curvature/{name}") for name in ("raw_max", "raw_min", "quotient_min")}
    for name, (steps, values) in logged[False].items():
        assert logged[True][name][0] == steps == [2, 4, 6]
        width = max(logged[False]["raw_max"][1]) - min(logged[False]["raw_min"][1])
        assert all(abs(a - b) <= 1e-7 * width for a, b in zip(values, logged[True][name][1])), name
    with pytest.raises(TypeError, match="curvature_warm"):
        sw.Monitor(model, opt, tmp_path / "bad", curvature_warm="yes")


def test_attention_observables_on_their_schedule(tmp_path):
    torch.manual_seed(0)
    model = sw.models.GPT(sw.models.GPTConfig(n_head=2, d_model=8, vocab_size=20)).double()
    tokens = torch.randint(0, 20, (3, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=tokens, schedule=sw.Schedule(attention=2))
    for _ in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 20), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        monitor.step(loss, batch=(tokens[:, :-1], None))
    names = monitor.store.names()
    logit = [n for n in names if n.startswith("logit_max/")]
    assert logit and monitor.store.scalars(logit[0])[0] == [2, 4]
    # the heads' GL-invariant products, from the symmetries (no batch needed), on the same steps;
    # truth: |W_Q^h^T W_K^h|_2 (with the bias columns) by a dense SVD, at the end
    steps, products = monitor.store.scalars("attention/qk_product_max")
    assert steps == [2, 4]
    with torch.no_grad():
        dense = max(float(torch.linalg.matrix_norm(torch.cat([a.weight[h * 4:(h + 1) * 4], a.bias[h * 4:(h + 1) * 4, None]], 1).T
                                                   @ torch.cat([b.weight[h * 4:(h + 1) * 4], b.bias[h * 4:(h + 1) * 4, None]], 1),
                                                   ord=2))
                    for block in model.blocks for a, b in [(block.attn.q, block.attn.k)] for h in range(2))
    assert math.isclose(products[-1], dense, rel_tol=1e-10)
    with pytest.raises(ValueError, match="schedule.attention"):
        sw.Schedule(attention=0)


@pytest.mark.slow
def test_compiled_pass_logs_what_the_eager_pass_logs(tmp_path):
    """Truth: the eager monitor (the same sums, fused by torch.compile): equal to float64 round-off,
    with momentum (three pairs before the step) and a charges schedule of 2 (both post-step graphs)."""
    logged = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = sw.models.mlp((4, 12, 12, 3)).double()
        x = torch.randn(32, 4, dtype=torch.float64)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        monitor = sw.Monitor(model, opt, tmp_path / str(flag), example_input=x, compile=flag,
                             schedule=sw.Schedule(charges=2, quotient=None), tensorboard=False)
        logged[flag] = train(monitor, model, opt, x, y, 6)
        assert not [e for e in monitor.store.events() if e[1] == "compile-failed"], monitor.store.events()
        monitor.close()
    for eager, fused in zip(logged[False], logged[True]):
        assert eager.keys() == fused.keys()
        for name in eager:
            assert math.isclose(eager[name], fused[name], rel_tol=1e-10, abs_tol=1e-14), (name, eager[name], fused[name])


def test_an_early_schedule_adds_the_powers_of_two_below_each_period():
    """Truth: the definition, steps 1, 2, 4, 8 below a period of 12, then its multiples; the charges
    keep their own period; without ``early`` only the multiples."""
    early, plain = sw.Schedule(charges=3, curvature=12, quotient=None, early=True), sw.Schedule(curvature=12)
    assert [t for t in range(1, 40) if early.due("curvature", t)] == [1, 2, 4, 8, 12, 24, 36]
    assert [t for t in range(1, 40) if plain.due("curvature", t)] == [12, 24, 36]
    assert [t for t in range(1, 10) if early.due("charges", t)] == [3, 6, 9]
    assert not any(early.due("quotient", t) for t in range(1, 40))


def test_the_torch_path_logs_what_the_c_kernel_logs(tmp_path, monkeypatch):
    """Truth: the same run with the C kernel switched off (the path a GPU or a machine without a
    C compiler takes): every logged value agrees to float64 round-off, with momentum (three pairs
    before the step, the charges and the update after it) and on steps whose charges are not recorded."""
    from shockwatch.symmetry import _native

    def run(directory):
        torch.manual_seed(0)
        model = exact_norms(sw.models.mlp((4, 12, 12, 3), norm="batch").double())
        x = torch.randn(32, 4, dtype=torch.float64)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        monitor = sw.Monitor(model, opt, directory, example_input=x, tensorboard=False,
                             schedule=sw.Schedule(charges=2, quotient=3, quotient_budget=None))
        with monitor:
            return train(monitor, model, opt, x, y, 7)

    native = run(tmp_path / "native")
    monkeypatch.setattr(_native, "library", lambda: None)
    eager = run(tmp_path / "eager")
    assert [set(step) for step in native] == [set(step) for step in eager]
    assert "update_norm/quotient" in native[2] and "charge_drift/rescale" in native[1]
    for ours, theirs in zip(native, eager):
        for name, value in ours.items():
            assert math.isclose(value, theirs[name], rel_tol=1e-9, abs_tol=1e-12), name


def test_update_curvature_on_its_schedule_is_the_dense_rayleigh_quotient(tmp_path):
    """Truth: u^T H u / u^T u with the dense float64 Hessian at theta_{t+1} and u = theta_{t+1} - theta_t
    saved by the test, on the steps the schedule names (SGD: no preconditioner)."""
    from torch.func import functional_call, hessian

    model, opt, x, y, _ = setup(tmp_path / "unused", norm="none")
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, loss_fn=F.cross_entropy, tensorboard=False,
                         schedule=sw.Schedule(update_curvature=3))
    for _ in range(6):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        logged = monitor.step(loss, batch=(x, y))
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    sizes = [p.numel() for p in params.values()]
    u = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])

    def loss_flat(vector):
        pieces = {n: piece.reshape(params[n].shape) for piece, n in zip(vector.split(sizes), names)}
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    dense = hessian(loss_flat)(torch.cat([params[n].reshape(-1) for n in names]))
    assert monitor.store.scalars("update_curvature/raw")[0] == [3, 6]
    assert math.isclose(logged["update_curvature/raw"], float(u @ dense @ u / (u @ u)), rel_tol=1e-6)
    assert math.isfinite(logged["update_curvature/quotient"])
    monitor.close()
    with pytest.raises(ValueError, match="schedule.update_curvature needs loss_fn"):
        sw.Monitor(model, opt, tmp_path / "other", schedule=sw.Schedule(update_curvature=2))


def test_a_loss_per_sample_is_refused_in_one_line(tmp_path):
    """mon.step takes the reduced loss: a per-sample vector is a ValueError that says so, and the
    step is not counted (the next, correct call logs step 1)."""
    model, opt, x, y, monitor = setup(tmp_path)
    opt.zero_grad()
    losses = F.cross_entropy(model(x), y, reduction="none")
    losses.mean().backward()
    opt.step()
    with pytest.raises(ValueError, match=r"scalar loss .* got a tensor of shape \(\d+,\): pass the reduced loss"):
        monitor.step(losses)
    monitor.step(losses.mean())
    assert monitor.store.scalars("loss")[0] == [1]
    monitor.close()


def test_a_norm_epsilon_is_named_and_its_breaking_measured(tmp_path):
    """Truth: the same float64 run with LayerNorm eps 1e-5 and 1e-12. The scale symmetries the
    check accepts at eps 0 are broken by eps: the exact law's error is far larger with 1e-5 (the
    breaking) than with 1e-12 (round-off), and a "norm-epsilon" event names the eps."""
    errors, events = {}, {}
    for eps in (1e-5, 1e-12):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.LayerNorm(12, eps=eps), torch.nn.ReLU(),
                                    torch.nn.Linear(12, 3)).double()
        x = torch.randn(32, 4, dtype=torch.float64)
        y = (x[:, 0] > 0).long()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with sw.Monitor(model, opt, tmp_path / str(eps), example_input=x, tensorboard=False) as monitor:
            for _ in range(10):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                errors[eps] = monitor.step(loss)["charge_law_error/scale"]
            events[eps] = [message for _, kind, message in monitor.store.events() if kind == "norm-epsilon"]
    assert errors[1e-12] < 1e-9 and errors[1e-5] > 1e3 * errors[1e-12], errors
    assert len(events[1e-5]) == 1 and "eps up to 1e-05" in events[1e-5][0]
    assert len(events[1e-12]) == 1 and "eps up to 1e-12" in events[1e-12][0]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [0.05, None])
def test_a_costly_quotient_sample_stretches_the_period_within_the_budget(tmp_path, monkeypatch, budget):
    """A projector that takes 1.1 s (slept) on a model whose steps take milliseconds: by the budget
    rule (cost > budget x period x step time and > 0.1 s) the first sample measured against at least 3
    step times (step 4; step 2 has 1) must stretch the period to a multiple of 2 above 1.1 / (0.05 x 1 s)
    = 22 steps, so no sample follows within 12 steps; with quotient_budget=None every even step samples."""
    import time

    from shockwatch.monitor import monitor as monitor_module

    real = monitor_module.horizontal_projector

    def slow(*args, **kwargs):
        time.sleep(1.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(monitor_module, "horizontal_projector", slow)
    model, opt, x, y, first = setup(tmp_path / "first")
    first.close()
    steps = 12 if budget else 6
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False,
                         schedule=sw.Schedule(quotient=2, quotient_budget=budget))
    train(monitor, model, opt, x, y, steps)
    monitor.close()
    store = RunStore(tmp_path / "run" / "run.sqlite", read_only=True)
    sampled = store.scalars("grad_norm/quotient")[0]
    events = [(step, message) for step, kind, message in store.events() if kind == "quotient-period"]
    if budget is None:
        assert list(sampled) == [2, 4, 6] and not events
        return
    assert list(sampled) == [2, 4]
    assert len(events) == 1 and events[0][0] == 4
    period = int(events[0][1].split("taken every ")[1].split()[0])
    assert period % 2 == 0 and period >= 22, events

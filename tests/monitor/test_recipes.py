"""The monitor under the recipes real training code uses (issue 17): nothing refused, nothing crashed,
no number silently wrong. Each test's truth is recomputed here from the tensors themselves."""

import math
import sqlite3

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shockwatch as sw
from shockwatch.monitor import RunStore
from shockwatch.symmetry import SymmetrySet
from helpers import exact_norms


def data(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(32, 4, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


def net(dtype=torch.float64, norm="batch"):
    torch.manual_seed(0)
    return exact_norms(sw.models.mlp((4, 12, 12, 3), norm=norm).to(dtype))


def truth_step(model, opt, x, y, *, before_step=None):
    """One optimizer step; returns (|g|, |theta'|, |theta' - theta|) from the tensors, in float64."""
    opt.zero_grad()
    loss = F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y)
    loss.backward()
    if before_step is not None:
        before_step()
    params = [p for p in model.parameters() if p.requires_grad]
    grad = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None))
    theta = [p.detach().double().clone() for p in params]
    opt.step()
    norm = math.sqrt(sum(float(p.detach().double().square().sum()) for p in params))
    moved = math.sqrt(sum(float((p.detach().double() - t).square().sum()) for p, t in zip(params, theta)))
    return loss, (grad, norm, moved)


def assert_norms(logged, truth, rel=1e-10):
    for name, value in zip(("grad_norm", "param_norm", "update_norm"), truth):
        assert math.isclose(logged[name], value, rel_tol=rel), (name, logged[name], value)


def _transpose_storage(model):
    """Every weight matrix into column-major storage: same values and shape, not contiguous."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.data = p.data.t().contiguous().t()


MOVES = {
    "model.double()": lambda m: m.double(),
    "model.double() then .float()": lambda m: m.double().float(),
    "bfloat16": lambda m: m.to(torch.bfloat16),
    "non-contiguous weights": _transpose_storage,
    "new storage (p.data = clone)": lambda m: [setattr(p, "data", p.data.clone()) for p in m.parameters()],
}


@pytest.mark.parametrize("move", MOVES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_dtype_and_storage_moves_mid_run(tmp_path, move, optimizer):
    """Truth: |g|, |theta| and |theta_{t+1} - theta_t| recomputed in float64 from the tensors at every
    step, before and after the model changes dtype or storage mid-run (issue 17: model.double() under
    SGD segfaulted, a C pass writing numel*8 bytes into float32 copies). Every value stays finite and
    the norms agree to 1e-10 (the sums are float64 whatever the dtype). A move that keeps every value
    keeps the laws; bfloat16 rounds the weights, and the laws start again from the charges then."""
    model, (x, y) = net(torch.float32), data(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3, momentum=0.9 if optimizer == "momentum" else 0)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False,
                         schedule=sw.Schedule(quotient=None))
    with monitor:
        for step in range(8):
            if step == 4:
                MOVES[move](model)
            loss, truth = truth_step(model, opt, x, y)
            logged = monitor.step(loss)
            assert all(math.isfinite(v) for v in logged.values()), logged
            assert_norms(logged, truth)
        events = [e for e in monitor.store.events() if e[1] in ("nonfinite", "rebound")]
        if move == "bfloat16":  # rounded to bfloat16, every charge moved: the laws start again from them
            assert [(step, kind) for step, kind, _ in events] == [(5, "rebound")]
            assert "changed outside optimizer.step()" in events[0][2]
        else:  # a move that keeps every value keeps the laws
            assert events == []


def test_optimizer_state_from_a_checkpoint_clipping_and_an_added_param_group(tmp_path):
    """Truth: the norms from the tensors; the exact discrete law (float64, exact norms) to 1e-10 through
    gradient clipping (the law reads the gradient the step used) and an optimizer state loaded from a
    checkpoint of the same run; a param group added for a layer unfrozen mid-run is observed from the
    next step (its gradient in |g|), with a "rebound" event at that step."""
    model, (x, y) = net(), data()
    first = model[0].weight
    first.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=1e-3)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False,
                         schedule=sw.Schedule(quotient=None))
    clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    with monitor:
        for step in range(12):
            if step == 4:  # a checkpoint of this very run, loaded into the optimizer: new buffer objects
                opt.load_state_dict(opt.state_dict())
            if step == 8:
                first.requires_grad_(True)
                opt.add_param_group({"params": [first], "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3})
            loss, truth = truth_step(model, opt, x, y, before_step=clip)
            logged = monitor.step(loss)
            assert_norms(logged, truth)
            assert logged["grad_norm"] <= 0.05  # clipped: the gradient the step used, not the raw one
            if step < 8:
                assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, (step, logged)
        events = [(step, kind) for step, kind, _ in monitor.store.events()]
        assert (9, "rebound") in events


def test_gradscaler_skipped_steps_are_skipped_by_the_laws(tmp_path):
    """Truth: the exact discrete law (float64, exact norms): a step the GradScaler skips moves nothing,
    so a law that skipped it exactly stays at round-off (1e-10) after it; each skip is a "skipped-step"
    event at its step, and nothing raises even with raise_on_nonfinite (the weights never saw it)."""
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False, raise_on_nonfinite=True)
    with monitor:
        for step in range(10):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss * (math.inf if step in (3, 6) else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
            logged = monitor.step(loss)
        assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, logged
        assert [(s, k) for s, k, _ in monitor.store.events() if k == "skipped-step"] == [(4, "skipped-step"),
                                                                                         (7, "skipped-step")]


def _poison_gradient(model):
    with torch.no_grad():
        model[0].weight.grad[0, 0] = math.nan


def test_a_nan_gradient_with_a_finite_loss_is_caught_at_its_step(tmp_path):
    """Truth: the poisoned gradient itself. |g| is logged as NaN (not 0.0, as a clamp once had it), a "nonfinite" event is written at that step, and with raise_on_nonfinite the error comes from
    optimizer.step() at that step, with every parameter still what it was before the step."""
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        for step in range(4):
            loss, _ = truth_step(model, opt, x, y, before_step=(lambda: _poison_gradient(model)) if step == 2 else None)
            logged = monitor.step(loss)
            if step == 2:
                assert math.isfinite(logged["loss"]) and math.isnan(logged["grad_norm"])
        assert [(s, k) for s, k, _ in monitor.store.events() if k == "nonfinite"][0] == (3, "nonfinite")
        assert math.isnan(monitor.store.scalars("grad_norm")[1][2])
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "strict", example_input=x, tensorboard=False,
                    raise_on_nonfinite=True) as strict:
        for step in range(2):
            truth_step(model, opt, x, y)
            strict.step(1.0)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        _poison_gradient(model)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(FloatingPointError, match="step 3: non-finite gradient"):
            opt.step()
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert [(s, k) for s, k, _ in strict.store.events() if k == "nonfinite"] == [(3, "nonfinite")]


class _FailingSink:
    def log(self, step, values):
        pass

    def event(self, step, kind, message):
        raise OSError("the sink's disk is full")

    def close(self):
        pass


def test_a_failed_constructor_leaves_nothing_on_disk(tmp_path):
    """Truth: the file system. A constructor that fails before the store (symmetries of another model)
    or after it (a sink that fails) leaves no file and no folder it made; the corrected call then works."""
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    other = sw.find_symmetries(sw.models.mlp((4, 7, 3)).double(), x)
    log_dir = tmp_path / "a" / "run"
    with pytest.raises(ValueError, match="another model"):
        sw.Monitor(model, opt, log_dir, symmetries=sw.find_symmetries(nn.Sequential(nn.Linear(4, 3), nn.ReLU(),
                                                                                     nn.Linear(3, 3), nn.Linear(3, 3)).double(), x))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="disk is full"):
        sw.Monitor(model, opt, log_dir, example_input=x, sinks=[_FailingSink()])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="disk is full"):  # a resumed run that fails keeps its file
        log_dir.mkdir(parents=True)
        RunStore(log_dir / "run.sqlite").close()
        sw.Monitor(model, opt, log_dir, example_input=x, sinks=[_FailingSink()], resume=True, tensorboard=False)
    assert sorted(p.name for p in log_dir.iterdir()) == ["run.sqlite"]
    (log_dir / "run.sqlite").unlink()
    with sw.Monitor(model, opt, log_dir, example_input=x) as monitor:
        monitor.step(truth_step(model, opt, x, y)[0])
    assert len(other) > 0


def test_every_public_method_after_close_raises_one_line(tmp_path):
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False)
    monitor.close()
    monitor.close()  # idempotent
    for call in (lambda: monitor.step(1.0), lambda: monitor.attach(opt), lambda: monitor.__enter__(), monitor.flush):
        with pytest.raises(RuntimeError, match=r"after close\(\): this monitor is closed") as error:
            call()
        assert "\n" not in str(error.value)
    truth_step(model, opt, x, y)  # the hook is gone: the optimizer steps without the monitor
    store = RunStore(tmp_path / "run" / "run.sqlite", resume=True)
    store.close()
    for call in (lambda: store.log(1, {"a": 1.0}), store.series, store.events, store.meta, store.last_step):
        with pytest.raises(ValueError, match="is closed"):
            call()


def test_a_new_optimizer_is_an_error_until_attached(tmp_path):
    """Truth: a new optimizer made mid-run steps the parameters without the monitor's hook: the next
    mon.step raises (with an event) instead of logging a step it did not see; after attach() the laws
    follow the new optimizer, exactly (float64, exact norms: 1e-10), and the norms are the tensors'."""
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        for _ in range(3):
            monitor.step(truth_step(model, opt, x, y)[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.02, weight_decay=1e-2)
        loss, _ = truth_step(model, opt, x, y)
        with pytest.raises(RuntimeError, match=r"did not step: for a new optimizer call mon.attach\(optimizer\)"):
            monitor.step(loss)
        monitor.attach(opt)
        for _ in range(4):
            loss, truth = truth_step(model, opt, x, y)
            logged = monitor.step(loss)
            assert_norms(logged, truth)
        assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, logged
        kinds = [kind for _, kind, _ in monitor.store.events()]
        assert "optimizer-not-observed" in kinds and "rebound" in kinds
        assert monitor.store.scalars("loss")[0] == list(range(1, 8))


def test_mon_step_per_micro_batch_says_to_call_it_per_optimizer_step(tmp_path):
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        opt.zero_grad()
        for micro in x.split(8):
            loss = F.cross_entropy(model(micro), y[: len(micro)]) / 4
            loss.backward()
            with pytest.raises(RuntimeError, match="once per optimizer step") as error:
                monitor.step(loss)
            assert "\n" not in str(error.value)
        opt.step()
        assert monitor.step(loss)["grad_norm"] > 0  # the window's step is then observed as usual
        assert monitor.store.scalars("loss")[0] == [1]


def test_a_scheduler_stepped_before_mon_step_changes_no_law(tmp_path):
    """Truth: the same run with the scheduler stepped after mon.step (the documented order): every
    logged value is the same, and the exact discrete law holds to 1e-10 (the step's lr, captured in the
    optimizer's pre-step hook, not the next one's)."""
    logged = {}
    for order in ("before", "after"):
        model, (x, y) = net(), data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        with sw.Monitor(model, opt, tmp_path / order, example_input=x, tensorboard=False) as monitor:
            for _ in range(6):
                loss, _ = truth_step(model, opt, x, y)
                if order == "before":
                    schedule.step()
                logged.setdefault(order, []).append(monitor.step(loss))
                if order == "after":
                    schedule.step()
    for ours, reference in zip(logged["before"], logged["after"]):
        assert ours == reference
    assert max(v for k, v in logged["before"][-1].items() if k.startswith("charge_law_error/")) < 1e-10


def test_accelerate_prepared_model_and_optimizer(tmp_path):
    """Truth: the norms from the tensors and the exact discrete law (float64, exact norms), with the
    optimizer wrapped by a real Accelerator (AcceleratedOptimizer, which has no hooks of its own)."""
    accelerate = pytest.importorskip("accelerate")
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, opt)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        for _ in range(5):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            accelerator.backward(loss)
            grad = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
            opt.step()
            logged = monitor.step(loss)
            assert math.isclose(logged["grad_norm"], grad, rel_tol=1e-12)
        assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10
        assert monitor.store.meta()["optimizer"] == "SGD" and monitor.store.meta()["law"] == "sgd-momentum"


class SDPAttention(nn.Module):
    """One attention layer on F.scaled_dot_product_attention (the Hugging Face default), then a ReLU
    MLP head; written here with its own names."""

    def __init__(self, vocab=7, d=6, heads=2):
        super().__init__()
        self.embed, self.heads = nn.Embedding(vocab, d), heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 8), nn.Linear(8, vocab)

    def forward(self, tokens):
        h = self.embed(tokens)
        b, t, d = h.shape
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(h).chunk(3, -1))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        return self.down(F.relu(self.up(h + self.proj(attended))))


def test_curvature_on_scaled_dot_product_attention(tmp_path):
    """Truth: the dense float64 Hessian (torch.func.hessian under the math backend) of the same loss:
    its extreme eigenvalues to 1e-6. The scheduled pass in a monitored run neither crashes nor writes
    a "curvature-failed" event, and the run's meta says which attention path the curvature used."""
    from torch.func import functional_call, hessian
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = SDPAttention().double()
    tokens = torch.randint(0, 7, (3, 5))
    loss_fn = lambda logits, targets: F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    # the raw Hessian is the truth here: no symmetries (an empty set), so the quotient is the raw one
    syms = SymmetrySet(())
    found = sw.monitor.curvature(model, loss_fn, batch, syms, tol=1e-10)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector):
        params = dict(zip(names, (piece.reshape(s) for piece, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        return loss_fn(functional_call(model, params, (batch[0],)), batch[1])

    with sdpa_kernel(SDPBackend.MATH):
        dense = hessian(loss_of)(flat)
    eigenvalues = torch.linalg.eigvalsh(0.5 * (dense + dense.T))
    assert math.isclose(found.raw_max, float(eigenvalues[-1]), rel_tol=1e-6)
    assert math.isclose(found.raw_min, float(eigenvalues[0]), rel_tol=1e-6, abs_tol=1e-9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with sw.Monitor(model, opt, tmp_path / "run", symmetries=syms, loss_fn=loss_fn, tensorboard=False,
                    schedule=sw.Schedule(curvature=2)) as monitor:
        for _ in range(4):
            opt.zero_grad()
            loss = loss_fn(model(batch[0]), batch[1])
            loss.backward()
            opt.step()
            monitor.step(loss, batch=batch)
        assert monitor.store.scalars("curvature/raw_max")[0] == [2, 4]
        assert not [e for e in monitor.store.events() if e[1] == "curvature-failed"]
        assert "math backend" in monitor.store.meta()["curvature"]


def test_a_curvature_pass_that_fails_is_an_event_not_a_crash(tmp_path):
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def broken_loss(outputs, targets):
        raise RuntimeError("no derivative here")

    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, loss_fn=broken_loss, tensorboard=False,
                    schedule=sw.Schedule(curvature=1)) as monitor:
        loss, truth = truth_step(model, opt, x, y)
        assert_norms(monitor.step(loss, batch=(x, y)), truth)
        assert [(s, k) for s, k, _ in monitor.store.events() if k == "curvature-failed"] == [(1, "curvature-failed")]


def _state(model):
    return (torch.get_rng_state(), [m.training for m in model.modules()],
            [b.clone() for b in model.buffers()], [p.detach().clone() for p in model.parameters()])


def _same(a, b):
    assert torch.equal(a[0], b[0]), "the global RNG moved"
    assert a[1] == b[1], "a module's train/eval mode changed"
    assert all(torch.equal(u, v) for u, v in zip(a[2], b[2])), "a buffer changed"
    assert all(torch.equal(u, v) for u, v in zip(a[3], b[3])), "a parameter changed"


def test_the_monitor_leaves_rng_modes_buffers_and_parameters_as_it_found_them(tmp_path):
    """Truth: the state itself, compared before and after each monitor routine (curvature, attention
    observables, path norm, the whole of mon.step with every schedule due), on models with Dropout and
    BatchNorm in train mode (forwards that draw random numbers and update running statistics)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).double()
    x, y = data()
    syms = sw.find_symmetries(model, x)
    before = _state(model)
    sw.monitor.curvature(model, F.cross_entropy, (x, y), syms)
    _same(before, _state(model))
    gpt = sw.models.GPT(sw.models.GPTConfig(n_head=2, d_model=8, vocab_size=20)).double()
    # the GPT has no Dropout and no running statistics: a forward that draws and counts, as they would
    gpt.register_buffer("forwards", torch.zeros(()))
    gpt.register_forward_pre_hook(lambda module, args: (module.forwards.add_(torch.rand(()) + 1), None)[1])
    tokens = torch.randint(0, 20, (3, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with sw.Monitor(model, opt, tmp_path / "run", symmetries=syms, loss_fn=F.cross_entropy, tensorboard=False,
                    schedule=sw.Schedule(curvature=1, quotient=1, attention=1, quotient_budget=None)) as monitor:
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            before = _state(model)
            monitor.step(loss, batch=(x, y))
            _same(before, _state(model))
    relu = sw.models.mlp((4, 6, 3)).double()
    opt = torch.optim.SGD(relu.parameters(), lr=0.05)
    with sw.Monitor(relu, opt, tmp_path / "relu", example_input=x, tensorboard=False,
                    schedule=sw.Schedule(quotient=1, quotient_budget=None)) as monitor:
        opt.zero_grad()
        loss = F.cross_entropy(relu(x), y)
        loss.backward()
        opt.step()
        before = _state(relu)
        assert "path_norm" in monitor.step(loss)
        _same(before, _state(relu))
    gpt.train()
    before = _state(gpt)
    assert sw.monitor.attention_observables(gpt, tokens)
    _same(before, _state(gpt))
    before = _state(relu)
    sw.monitor.path_norm(relu, (4,))
    _same(before, _state(relu))
    opt = torch.optim.SGD(gpt.parameters(), lr=0.05)
    with sw.Monitor(gpt, opt, tmp_path / "gpt", example_input=tokens, tensorboard=False,
                    schedule=sw.Schedule(attention=1, quotient=None)) as monitor:
        opt.zero_grad()
        loss = F.cross_entropy(gpt(tokens[:, :-1]).reshape(-1, 20), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        before = _state(gpt)
        assert any(name.startswith("logit_max/") for name in monitor.step(loss, batch=(tokens[:, :-1], None)))
        _same(before, _state(gpt))


def test_a_plain_sqlite_reader_is_seconds_behind_a_live_run(tmp_path, monkeypatch):
    """Truth: what sqlite3 alone reads from the database while the writer holds a large ring: a step
    logged flush_seconds after the last write brings every pending step in; one logged right after
    stays in the ring (the flush is on time, not per step); close() brings the rest. The store's
    clock is a fake one, advanced by hand: a stalled machine must not flush early."""
    import shockwatch.monitor.store as store_module

    class Clock:
        now = 100.0

        @classmethod
        def monotonic(cls):
            return cls.now

    monkeypatch.setattr(store_module, "time", Clock)
    path = tmp_path / "run.sqlite"
    store = RunStore(path, flush_seconds=0.3)
    plain = lambda: [s for (s,) in sqlite3.connect(path).execute("SELECT step FROM scalars ORDER BY step")]
    store.log(1, {"loss": 1.0})
    Clock.now += 0.29
    store.log(2, {"loss": 0.5})
    assert plain() == []
    Clock.now += 0.02
    store.log(3, {"loss": 0.25})
    assert plain() == [1, 2, 3]
    store.log(4, {"loss": 0.125})
    assert plain() == [1, 2, 3]
    store.close()
    assert plain() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="flush_seconds must be a number >= 0"):
        RunStore(tmp_path / "other.sqlite", flush_seconds=-1)
    assert not (tmp_path / "other.sqlite").exists()


def test_half_precision_sums_are_float64(tmp_path):
    """Truth: |g|, |theta| and the update recomputed in float64 from the bfloat16 and float16 tensors:
    1e-10 relative (a sum in the tensors' dtype rounds to 3e-3 in bfloat16)."""
    for dtype in (torch.bfloat16, torch.float16):
        model, (x, y) = net(dtype), data(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with sw.Monitor(model, opt, tmp_path / str(dtype), example_input=x, tensorboard=False) as monitor:
            for _ in range(3):
                loss, truth = truth_step(model, opt, x, y)
                assert_norms(monitor.step(loss), truth)


def test_a_monitor_started_on_an_optimizer_with_momentum_buffers(tmp_path):
    """Truth: the exact discrete law (float64, exact norms) to 1e-10 from the first observed step, for a
    monitor started after steps with momentum (a resumed run, Lightning after a checkpoint) and for one
    attached to an optimizer that loaded another's state: the law starts from the buffers found (it
    assumed none before: 2.6e-2 relative on the scale charges after one step)."""
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        truth_step(model, opt, x, y)
    with sw.Monitor(model, opt, tmp_path / "late", example_input=x, tensorboard=False) as monitor:
        for _ in range(3):
            loss, truth = truth_step(model, opt, x, y)
            logged = monitor.step(loss)
            assert_norms(logged, truth)
            assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, logged
        loaded = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        loaded.load_state_dict(opt.state_dict())
        monitor.attach(loaded)
        for _ in range(3):
            logged = monitor.step(truth_step(model, loaded, x, y)[0])
            assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, logged


def test_an_error_of_the_monitor_inside_a_step_is_an_event_and_the_laws_start_again(tmp_path, monkeypatch):
    """Truth: the norms from the tensors and the exact discrete law (float64, exact norms). An error
    raised inside the monitor's own pass (simulated in the kernel the Python path calls, at the third
    step) does not reach optimizer.step(): a "monitor-error" event at that step, the raw values logged,
    and from the next step the laws, rebuilt from the charges then, hold to round-off again."""
    from shockwatch.symmetry import SymmetrySet as Set

    armed, real = [False], Set.fused_sums

    def failing(self, *args, **kwargs):
        if armed[0]:  # the first call once armed: the pre-step pass inside optimizer.step()
            armed[0] = False
            raise RuntimeError("a kernel bug")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Set, "fused_sums", failing)
    model, (x, y) = net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False,
                    schedule=sw.Schedule(quotient=None)) as monitor:
        for step in range(6):
            armed[0] = step == 2
            loss, truth = truth_step(model, opt, x, y)
            logged = monitor.step(loss)
            assert math.isclose(logged["grad_norm"], truth[0], rel_tol=1e-10)
            if step == 2:
                assert set(logged) == {"loss", "grad_norm", "lr"}
        assert max(v for k, v in logged.items() if k.startswith("charge_law_error/")) < 1e-10, logged
        events = [(s, k) for s, k, _ in monitor.store.events()]
        assert (3, "monitor-error") in events and (4, "rebound") in events


def test_a_second_optimizer_on_other_parameters_is_not_taken_for_a_new_one(tmp_path):
    """Truth: which optimizer stepped. The head has its own optimizer, which steps every time; when
    the monitored optimizer skips a step (non-finite gradients in its parameters, as a GradScaler
    would), the head having moved is no sign of an unattached optimizer: a "skipped-step" event, no error."""
    model, (x, y) = net(), data()
    head = list(model[-1].parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    opt, other = torch.optim.SGD(body, lr=0.05), torch.optim.SGD(head, lr=0.05)
    with sw.Monitor(model, opt, tmp_path / "run", example_input=x, tensorboard=False) as monitor:
        for step in range(4):
            opt.zero_grad()
            other.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if step == 2:
                _poison_gradient(model)
            else:
                opt.step()
            other.step()
            monitor.step(loss)
        assert [(s, k) for s, k, _ in monitor.store.events() if k in ("skipped-step", "optimizer-not-observed")] \
            == [(3, "skipped-step")]


def test_a_nan_in_a_loaded_momentum_buffer_is_caught_before_the_step(tmp_path):
    """Truth: the poisoned buffer itself. The gradients are finite (|g| is logged as the tensors give
    it); the momentum buffer, loaded with a NaN, would put it into the weights at this step: a
    "nonfinite" event at the step, no law advanced; with raise_on_nonfinite, optimizer.step() raises
    with every parameter unchanged."""
    for strict in (False, True):
        model, (x, y) = net(), data()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with sw.Monitor(model, opt, tmp_path / f"run{strict}", example_input=x, tensorboard=False,
                        raise_on_nonfinite=strict) as monitor:
            for _ in range(2):
                monitor.step(truth_step(model, opt, x, y)[0])
            state = opt.state_dict()
            buffer = state["state"][0]["momentum_buffer"]
            buffer[0, 0] = math.nan
            opt.load_state_dict(state)
            if strict:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                before = [p.detach().clone() for p in model.parameters()]
                with pytest.raises(FloatingPointError, match="step 3: non-finite parameter or momentum buffer"):
                    opt.step()
                assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
            else:
                loss, truth = truth_step(model, opt, x, y)
                logged = monitor.step(loss)
                assert set(logged) == {"loss", "grad_norm", "lr"} and math.isclose(logged["grad_norm"], truth[0], rel_tol=1e-10)
            assert [(s, k) for s, k, _ in monitor.store.events() if k == "nonfinite"] == [(3, "nonfinite")]

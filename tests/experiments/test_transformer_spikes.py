"""The Transformer spike testbeds and the experiment that scores warning rules on them.

Truth: hand-worked curves for the ground-truth rule; the recipe pieces against their definitions
(which parameters decay, the schedule's multiplier at known steps, the text's copies and Markov
transitions); the experiment end to end on a run short enough for CI, whose numbers are checked
against a replay of the same rule."""

import math

import pytest
import torch

from shockwatch.experiments import testbeds as tb
from shockwatch.experiments import transformer_spikes as ts


def test_spike_onsets_and_the_instability_onset_by_hand():
    flat = [1.0] * 30
    losses = flat + [2.0, 2.5, 1.0] + [1.0] * 10 + [1.4] + [1.0] * 5 + [math.nan] + [1.0] * 25
    # step 31 (index 30): 2.0 > 1.5 x 1.0; 32 continues the same run; 1.4 < 1.5 x mean; the NaN counts
    assert ts.spike_onsets(losses, ratio=1.5, window=20, min_rise=0.1, start=1) == [31, 50]
    assert ts.spike_onsets(losses, ratio=1.5, window=20, min_rise=0.1, start=40) == [50]
    assert ts.spike_onsets([0.01] * 25 + [0.02], ratio=1.5, window=20, min_rise=0.1, start=1) == []  # rise below 0.1
    # the loss falls to 1, spikes for 10 steps and recovers (no instability), then jumps to 2.5 at step
    # 176 and stays: the 10-step mean passes 1.5 at step 179, whose window's first step above 1.5 is 176
    kept = {"ratio": 1.5, "recover": 1.2, "min_rise": 0.1, "window": 10, "start": 10}
    assert ts.instability_onset([3.0] * 20 + [1.0] * 100 + [2.0] * 10 + [1.0] * 50, **kept) == []
    assert ts.instability_onset([3.0] * 20 + [1.0] * 100 + [1.3] * 5 + [1.0] * 50 + [2.5] * 100, **kept) == [176]
    assert ts.instability_onset([3.0] * 20 + [1.0] * 30 + [math.inf], **kept) == [51]  # non-finite: an instability


def test_recipe_pieces():
    model = tb.GPT(tb.GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, d_model=8, qk_norm=True))
    decay, rest = tb.decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters()
                                                       if p.dim() == 2 and not n.startswith(("wte", "wpe"))}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(tb.decay_groups(model, 0.1), lr=1.0)
    scheduler = tb.warmup_cosine(optimizer, warmup=10, steps=110, floor=0.1)
    seen = []
    for _ in range(111):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.1) and seen[9] == pytest.approx(1.0)  # (step + 1) / warmup
    assert seen[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert seen[110] == pytest.approx(0.1)
    # second-order text: every (context, next token) pair seen is one of the context's 3 successors
    text = tb._markov_text(6, 40, 200, 3, 2, torch.Generator().manual_seed(0))
    followers = {}
    for row in text.tolist():
        for a, b, c in zip(row, row[1:], row[2:]):
            followers.setdefault((a, b), set()).add(c)
    assert max(len(seen) for seen in followers.values()) == 3 and len(followers) == 36


def test_spike_beds_are_deterministic_and_their_controls_carry_the_fix():
    a = tb.train(tb.make_testbed("attention-spike", scale="tiny", steps=5))
    b = tb.train(tb.make_testbed("attention-spike", scale="tiny", steps=5))
    assert a == b and all(math.isfinite(v) for v in a["loss"])
    control = tb.make_testbed("attention-spike-qknorm", scale="tiny", steps=5)
    assert any("q_norm" in n for n, _ in control.model.named_parameters())
    logits = torch.full((2, 3, 4), 10.0)
    targets = torch.zeros(2, 3, dtype=torch.long)
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), targets.reshape(-1))
    log_z = 10.0 + math.log(4)  # logsumexp of four equal logits 10
    assert float(control.loss_fn(logits, targets)) == pytest.approx(float(plain) + control.notes["z_loss"] * log_z ** 2)
    with pytest.raises(ValueError, match="update_curvature_every must be a positive int or None"):
        ts.Config(update_curvature_every=0)
    assert set(ts.UPDATE_CURVATURE_EVERY) == set(ts.CONTROLS) == set(ts.GROUND_TRUTH)
    with pytest.raises(ValueError, match="attention-spike, attention-spike-qknorm, adam-spike, adam-spike-amsgrad"):
        tb.make_testbed("spike")


def test_the_experiment_end_to_end_on_short_runs():
    """Four short runs (each bed and its control, one seed): every rule family scored, each row at a
    setting within the false-alarm rate, with one lead per event."""
    # a ground truth so loose that the first rise after the loss's fall counts as an instability
    config = ts.Config(seeds=(0,), scale="tiny", steps=60, update_curvature_every=20, spike_ratio=1.02, recover=1.0,
                       smooth=3, spike_min_rise=0.0, knobs=4, start=5)
    result = ts.run(config)
    assert [(o.bed, o.seed, o.steps) for o in result.runs] == [("attention-spike", 0, 60), ("attention-spike-qknorm", 0, 60),
                                                                ("adam-spike", 0, 60), ("adam-spike-amsgrad", 0, 60)]
    # each bed's ground truth: the adam bed's events are its transient spikes, the attention bed's a lasting rise
    for outcome in result.runs[2:]:
        assert outcome.events == outcome.spikes
    assert {row.bed for row in result.rows} == {"attention-spike", "adam-spike"}
    families = {(row.family, row.signal) for row in result.rows if row.bed == "attention-spike"}
    assert {("attention-logit", "raw"), ("attention-logit", "quotient"), ("qk-product", "quotient"),
            ("spike-sigma", "raw")} <= families
    events = sum(len(o.events) for o in result.runs[:2])
    assert events >= 1, [o.loss for o in result.runs]
    for row in result.rows:
        assert row.events == sum(len(o.events) for o in result.runs if tb.spike_bed(o.bed) == row.bed)
        if row.knob is not None:
            assert row.false_alarm_rate <= row.rate_cap and len(row.leads) == row.events
    assert result.verdict.startswith("attention-spike: ") and "; adam-spike: " in result.verdict and set(result.sweeps) == {
        f"{r.bed}/{r.family}/{r.signal}" for r in result.rows}


def test_saved_records_score_again_to_the_same_rows(tmp_path):
    """The recorded curves round-trip through the archive, and scoring them again gives the same rows:
    what lets a later session add seeds without training the first ones again."""
    config = ts.Config(beds=("attention-spike",), seeds=(0,), scale="tiny", steps=40, update_curvature_every=20, spike_ratio=1.02, recover=1.0,
                       smooth=3, spike_min_rise=0.0, knobs=3, start=5)
    result = ts.run(config)
    paths = result.save(tmp_path)
    assert paths[-1].name == "transformer_spikes_records.npz" and "records" not in result.to_json()
    loaded = ts.load_records(paths[-1])
    assert [(r.events, r.steps, sorted(r.series)) for r in loaded] == [(r.events, r.steps, sorted(r.series))
                                                                          for r in result.records]
    rows, sweeps, verdict = ts.score_records(loaded, config)
    assert {f"attention-spike/{key}": value for key, value in sweeps.items()} == result.sweeps
    assert f"attention-spike: {verdict}" == result.verdict
    assert [(r.family, r.signal, r.rate_cap, r.knob, r.caught) for r in rows] == \
        [(r.family, r.signal, r.rate_cap, r.knob, r.caught) for r in result.rows]


def test_the_adam_bed_spikes_at_its_floor_and_amsgrad_does_not():
    """Measured property of the bed (seed 0, tiny): full-batch AdamW at beta2 0.95 spikes after the loss
    has reached its floor; the same run under AMSGrad (v the running maximum, never decaying) does not."""
    bed = tb.make_testbed("adam-spike", scale="tiny", seed=0)
    control = tb.make_testbed("adam-spike-amsgrad", scale="tiny", seed=0)
    assert [g["amsgrad"] for g in bed.optimizer.param_groups] == [False, False]
    assert [g["amsgrad"] for g in control.optimizer.param_groups] == [True, True]
    assert bed.optimizer.param_groups[0]["betas"] == (0.9, 0.95) and bed.notes["full_batch"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(bed.train_batch(1), bed.train_batch(7)))  # one full batch
    start = int(bed.notes["warmup"]) // 2
    spiking, quiet = tb.train(bed)["loss"], tb.train(control)["loss"]
    spikes = ts.spike_onsets(spiking, ratio=1.5, window=20, min_rise=0.1, start=start)
    assert spikes and min(spiking[:spikes[0] - 1]) < 0.05  # at its floor first
    assert ts.spike_onsets(quiet, ratio=1.5, window=20, min_rise=0.1, start=start) == []
    assert min(quiet) < 0.05


def test_records_keep_their_bed_and_load_by_bed(tmp_path):
    """An archive of runs from both beds (and their controls) loads whole, or one bed with its control;
    an archive written without labels (the earlier format) holds attention-spike runs."""
    from shockwatch.monitor.warnings import Run

    runs = [Run({"loss": ([1, 2], [1.0, float(i)])}, (i,) if i % 2 else (), 2) for i in range(4)]
    beds = ["attention-spike", "attention-spike-qknorm", "adam-spike", "adam-spike-amsgrad"]
    path = ts.save_records(runs, tmp_path / "both.npz", beds)
    assert [r.series["loss"][1][1] for r in ts.load_records(path)] == [0.0, 1.0, 2.0, 3.0]
    assert [r.series["loss"][1][1] for r in ts.load_records(path, bed="adam-spike")] == [2.0, 3.0]
    assert [r.events for r in ts.load_records(path, bed="attention-spike")] == [(), (1,)]
    old = ts.save_records(runs[:2], tmp_path / "old.npz")
    assert len(ts.load_records(old, bed="attention-spike")) == 2 and ts.load_records(old, bed="adam-spike") == []
    with pytest.raises(ValueError, match="one bed per run"):
        ts.save_records(runs, tmp_path / "bad.npz", beds[:3])
    with pytest.raises(ValueError, match="attention-spike, adam-spike"):
        ts.load_records(path, bed="adam-spike-amsgrad")

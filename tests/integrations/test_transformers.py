"""The Hugging Face Trainer with ShockwatchCallback: small Llama, Qwen2 and GPT-2 from configs, CPU.

Truth: the Trainer's own log (its loss per optimizer step, the window's objective, and its gradient
norm, logged every step) and the definition of the run store (one row per optimizer step)."""

import sqlite3

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from shockwatch.integrations.transformers import ShockwatchCallback  # noqa: E402

VOCAB, TOKENS = 64, 12


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """The Trainer sets Accelerate's process-wide state (bf16 included); later tests start clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def model_of(architecture, seed=0):
    torch.manual_seed(seed)
    if architecture == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config)
    config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                                 "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM)}[architecture]
    experts = {"num_local_experts": 4, "num_experts_per_tok": 2} if architecture == "mixtral" else {}
    config = config_class(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, **experts)
    return model_class(config)


def dataset(count=96, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (count, TOKENS), generator=generator)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def train(tmp_path, architecture, steps=20, accumulation=2, **arguments):
    model = model_of(architecture)
    callback = ShockwatchCallback(tmp_path / "run")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=3e-3, weight_decay=0.01, warmup_steps=3, lr_scheduler_type="cosine",
        logging_steps=1, max_grad_norm=1e9, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, **arguments)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(), callbacks=[callback])
    trainer.train()
    return trainer, callback


def read(log_dir):
    db = sqlite3.connect(log_dir / "run.sqlite")
    scalars = {}
    for step, name, value in db.execute("SELECT step, name, value FROM scalars"):
        scalars.setdefault(name, {})[step] = value
    events = db.execute("SELECT step, kind FROM events").fetchall()
    db.close()
    return scalars, events


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2", "mixtral"])
def test_every_optimizer_step_with_the_loss_the_trainer_minimised(tmp_path, architecture):
    """20 optimizer steps of 2 micro-batches each (Mixtral: a mixture of 4 experts, top 2), the
    Trainer's AdamW with its decay / no-decay groups, warmup and cosine decay: one row per optimizer step; its loss is the Trainer's logged
    loss for that step and its gradient norm the Trainer's (clipping off); the symmetries were found
    on the model (every parameter in one); AdamW has no conservation law, which is recorded."""
    trainer, callback = train(tmp_path, architecture)
    scalars, events = read(tmp_path / "run")
    logged = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
    assert sorted(scalars["loss"]) == list(range(1, 21)) == sorted(logged)
    assert [scalars["loss"][s] for s in range(1, 21)] == pytest.approx([logged[s]["loss"] for s in range(1, 21)],
                                                                      rel=1e-5)
    assert [scalars["grad_norm"][s] for s in range(1, 21)] == pytest.approx(
        [logged[s]["grad_norm"] for s in range(1, 21)], rel=1e-4)
    monitor = callback.monitor
    assert monitor is not None and monitor.model is trainer.model
    assert monitor.symmetries is not None and len(monitor.symmetries) > 0 and monitor.symmetries.unanalysed == ()
    assert len(trainer.optimizer.param_groups) == 2  # the Trainer's decay / no-decay split
    assert any(kind == "no-law" for _, kind in events)
    assert callback._hook is None  # the forward hook is removed at train end
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks


def test_without_gradient_accumulation_and_in_bf16(tmp_path):
    """bf16 autocast on the CPU, one micro-batch per step: the rows still match the Trainer's log
    (its loss in bf16 autocast, read as the model returned it), and the symmetries are found through
    Accelerate's autocast wrapper of forward (every parameter in one)."""
    trainer, callback = train(tmp_path, "llama", steps=8, accumulation=1, bf16=True)
    assert len(callback.monitor.symmetries) > 0 and callback.monitor.symmetries.unanalysed == ()
    scalars, _ = read(tmp_path / "run")
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    assert sorted(scalars["loss"]) == list(range(1, 9))
    assert [scalars["loss"][s] for s in range(1, 9)] == pytest.approx([logged[s] for s in range(1, 9)], rel=1e-5)


def test_a_model_without_a_loss_is_refused_in_one_line(tmp_path):
    with pytest.raises(TypeError, match="loss_from must be a function"):
        ShockwatchCallback(tmp_path / "run", loss_from=3)


def test_an_encoder_decoder_whose_forward_needs_its_labels(tmp_path):
    """T5 builds its decoder inputs from the labels: without them its forward fails, so the example
    input is the first batch with its labels. Truth: the Trainer's logged loss at every step, and
    the symmetries found (the run used to stop at step 1 with "does not accept the example input")."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0)
    callback = ShockwatchCallback(tmp_path / "run")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6, learning_rate=3e-3, logging_steps=1,
        max_grad_norm=1e9, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        seed=0)
    trainer = transformers.Trainer(model=transformers.T5ForConditionalGeneration(config), args=args,
                                   train_dataset=dataset(), callbacks=[callback])
    trainer.train()
    scalars, _ = read(tmp_path / "run")
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    assert sorted(scalars["loss"]) == list(range(1, 7))
    for step, loss in logged.items():
        assert abs(scalars["loss"][step] - loss) < 1e-4 * abs(loss)
    assert sum(callback.monitor.symmetries.counts().values()) > 0


def test_options_are_checked_when_the_callback_is_made(tmp_path):
    """A keyword Monitor does not take, a log_dir that is not a path or is a file, a schedule that
    is not one, a schedule needing the batch (which callbacks never get): refused at once, in one
    line, not at the first optimizer step inside trainer.train()."""
    import shockwatch as sw

    with pytest.raises(TypeError, match="schedul"):
        ShockwatchCallback(tmp_path / "a", schedul=sw.Schedule())
    with pytest.raises(TypeError, match="log_dir"):
        ShockwatchCallback(123)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        ShockwatchCallback(tmp_path / "file")
    with pytest.raises(TypeError, match="Schedule"):
        ShockwatchCallback(tmp_path / "a", schedule={})
    with pytest.raises(ValueError, match="batch"):
        ShockwatchCallback(tmp_path / "a", schedule=sw.Schedule(curvature=10), loss_fn=lambda out, _: out.loss)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.sqlite").write_bytes(b"")
    with pytest.raises(FileExistsError, match="resume=True"):  # it once ended trainer.train() after a forward pass
        ShockwatchCallback(tmp_path / "old")
    ShockwatchCallback(tmp_path / "old", resume=True)


def test_resuming_from_a_checkpoint_numbers_steps_as_the_trainer_does(tmp_path):
    """8 steps with a checkpoint at 4, then train(resume_from_checkpoint=checkpoint-4) with
    resume=True: the store's steps are the Trainer's global steps (1-8, not 1-12), those after 4
    the resumed run's (its logged losses), with a "resumed" event."""
    def trainer_of(callback):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3,
            logging_steps=1, max_grad_norm=1e9, report_to=[], save_strategy="steps", save_steps=4, use_cpu=True,
            disable_tqdm=True, dataloader_num_workers=0, seed=0)
        return transformers.Trainer(model=model_of("gpt2"), args=args, train_dataset=dataset(), callbacks=[callback])

    trainer_of(ShockwatchCallback(tmp_path / "run")).train()
    trainer = trainer_of(ShockwatchCallback(tmp_path / "run", resume=True))
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert trainer.state.global_step == 8
    scalars, events = read(tmp_path / "run")
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    assert sorted(scalars["loss"]) == list(range(1, 9))
    assert [scalars["loss"][s] for s in range(5, 9)] == pytest.approx([logged[s] for s in range(5, 9)], rel=1e-5)
    assert [step for step, kind in events if kind == "resumed"] == [5]

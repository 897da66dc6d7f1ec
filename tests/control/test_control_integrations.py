"""The controller under Lightning and the Hugging Face Trainer, passed as a Monitor option.

Truth: the same training without a controller, whose scheduler gives the rate of every step (the
scheduler's rate does not depend on the parameters): with a warning at step 8 and CutLR, the rate
each step used is that rate times CutLR's formula, and the scheduler's own rate is unchanged."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import read_scalars as read
from torch.utils.data import DataLoader, TensorDataset

import shockwatch as sw
from shockwatch.control import Controller, CutLR
from shockwatch.monitor.warnings import Rule

# lightning 2.6 on torch 2.13: a deprecation inside Lightning's own batch handling, nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")


@dataclass
class At(Rule):
    steps: tuple[int, ...] = ()

    def observe(self, step, values):
        return self._warn(step, float(values["loss"])) if step in self.steps else None


CUT = CutLR(factor=0.2, hold=3, rewarm=3)
WARNED = 8


def expected(base_lr):
    return {step: lr * CUT.multiplier(step - WARNED - 1) for step, lr in base_lr.items()}


def options(controlled):
    rule = At("test-rule", "loss", "quotient", steps=(WARNED,))
    return {"warnings": [rule], "tensorboard": False,
            **({"controller": Controller([CUT], cooldown=0)} if controlled else {})}


def test_lightning_callback_passes_the_controller_and_the_rates_follow_the_formula(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from shockwatch.integrations.lightning import ShockwatchCallback

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(160, 4, dtype=torch.float64, generator=generator)
    y = (x[:, 0] > 0).long()

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = sw.models.mlp((4, 8, 2)).double()

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.95)}

    runs = {}
    for controlled in (False, True):
        callback = ShockwatchCallback(tmp_path / str(controlled), example_input=x[:8], **options(controlled))
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=20, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
        trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=8))
        runs[controlled] = read(tmp_path / str(controlled))
        opt = trainer.optimizers[0]
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    base = runs[False]["lr"]
    assert sorted(base) == list(range(1, 21))
    assert runs[True]["lr"] == pytest.approx(expected(base), rel=1e-12)
    assert runs[True]["control/lr_multiplier"][WARNED + 1] == pytest.approx(0.2)


def test_trainer_callback_passes_the_controller_and_the_schedulers_rate_is_untouched(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    from shockwatch.integrations.transformers import ShockwatchCallback

    generator = torch.Generator().manual_seed(1)
    rows = [{"input_ids": r, "labels": r.clone()} for r in torch.randint(0, 32, (64, 10), generator=generator)]
    runs, logged = {}, {}
    try:
        for controlled in (False, True):
            torch.manual_seed(0)
            config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
            model = transformers.LlamaForCausalLM(config)
            callback = ShockwatchCallback(tmp_path / f"run{controlled}", **options(controlled))
            args = transformers.TrainingArguments(
                output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=16, learning_rate=3e-3,
                weight_decay=0.01, warmup_steps=3, lr_scheduler_type="cosine", logging_steps=1, report_to=[],
                save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
            trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
            trainer.train()
            runs[controlled] = read(tmp_path / f"run{controlled}")
            logged[controlled] = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    finally:
        AcceleratorState._reset_state(True)
    base = runs[False]["lr"]
    assert sorted(base) == list(range(1, 17))
    assert runs[True]["lr"] == pytest.approx(expected(base), rel=1e-12)
    assert logged[True] == logged[False] and len(logged[False]) == 16  # the scheduler never saw the cut

"""The output-logit drift behind "output-logit divergence", measured on the spike decoder with a 256-way
head over 32 used tokens (issue 18; README, ``experiments.transformer_spikes``): under AdamW the mean
output embedding mu = (1/V) sum_i W_i (the charge of the head's softmax translation symmetry, which
gradient descent conserves) and the unused tokens' log-probabilities, for three values of Adam's eps;
writes docs/results/logit_drift.json (about 30 s on one CPU thread).

    .venv/bin/python scripts/logit_drift.py
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from shockwatch.experiments import testbeds as tb
from shockwatch.models.gpt import GPT, GPTConfig

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "logit_drift.json"
VOCAB, USED, BLOCK, BATCH, STEPS, LR = 256, 32, 32, 32, 600, 3e-2


def drift(eps: float, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    text = tb._markov_text(USED, BLOCK + 1, STEPS * BATCH, 2, 2, generator)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, d_model=64))
    optimizer = torch.optim.AdamW(tb.decay_groups(model, 0.1), lr=LR, betas=(0.9, 0.95), eps=eps)
    scheduler = tb.warmup_cosine(optimizer, 100, STEPS)
    rows = []
    for step in range(1, STEPS + 1):
        chunk = text[(step - 1) * BATCH:step * BATCH]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            with torch.no_grad():
                log_z = torch.logsumexp(logits, dim=-1)
                rows.append({"step": step, "loss": loss.item(), "log_z": log_z.mean().item(),
                             "mean_logit": logits.mean().item(),
                             "unused_log_probability": (logits[..., USED:] - log_z[..., None]).mean().item(),
                             "mu_norm": model.lm_head.weight.mean(dim=0).norm().item(),
                             "lr": scheduler.get_last_lr()[0]})
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = {"vocab": VOCAB, "used": USED, "steps": STEPS, "peak_lr": LR, "runs": {}}
    for eps in (1e-8, 1e-12, 1e-16):
        rows = result["runs"][f"{eps:g}"] = drift(eps)
        print(f"eps {eps:g} (ln eps {math.log(eps):.1f}): " + ", ".join(
            f"step {r['step']}: |mu| {r['mu_norm']:.2f}, unused log p {r['unused_log_probability']:.1f}" for r in rows))
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")

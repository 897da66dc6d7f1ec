"""A sixth try at output-logit divergence on the CPU (issue 18; README, ``experiments.transformer_spikes``):
a one-layer decoder small enough for 3000 steps a run (d 32, two heads, qk-layernorm so that the
attention instability is out of the way, a 256-way head over 32 used tokens, bf16 autocast, AdamW
without weight decay, warmup then cosine), peak learning rates 0.03 to 1.0, each with and without the
z-loss 1e-4. Records the loss, log Z, the mean and largest logit and |mu| (the mean output
embedding, the charge of the head's softmax translation) every 150 steps; writes
docs/results/logit_divergence_long.json (about 10 minutes on one CPU thread).

    .venv/bin/python scripts/logit_divergence_long.py
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from shockwatch.experiments import testbeds as tb
from shockwatch.models.gpt import GPT, GPTConfig

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "logit_divergence_long.json"
VOCAB, USED, BLOCK, BATCH, STEPS, EVERY = 256, 32, 16, 16, 3000, 150
RATES, Z_LOSSES = (0.03, 0.1, 0.3, 1.0), (0.0, 1e-4)


def run(lr: float, z_loss: float, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    text = tb._markov_text(USED, BLOCK + 1, 4096, 2, 2, generator)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, d_model=32, qk_norm=True))
    optimizer = torch.optim.AdamW(tb.decay_groups(model, 0.0), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = tb.warmup_cosine(optimizer, STEPS // 10, STEPS)
    rows = []
    for step in range(1, STEPS + 1):
        chunk = text[torch.randint(0, len(text), (BATCH,), generator=generator)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(chunk[:, :-1])
        logits = logits.float()
        log_z = torch.logsumexp(logits, dim=-1)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
        total = loss + z_loss * log_z.square().mean() if z_loss else loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        scheduler.step()
        if not math.isfinite(loss.item()):
            rows.append({"step": step, "loss": None})
            break
        if step % EVERY == 0:
            with torch.no_grad():
                rows.append({"step": step, "loss": loss.item(), "log_z": log_z.mean().item(),
                             "mean_logit": logits.mean().item(), "max_logit": logits.max().item(),
                             "mu_norm": model.lm_head.weight.mean(dim=0).norm().item()})
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = {"vocab": VOCAB, "used": USED, "steps": STEPS, "runs": []}
    for lr in RATES:
        for z_loss in Z_LOSSES:
            rows = run(lr, z_loss)
            result["runs"].append({"peak_lr": lr, "z_loss": z_loss, "rows": rows})
            last = rows[-1]
            print(f"lr {lr} z-loss {z_loss:g}: step {last['step']}, loss {last['loss']}, log Z {last.get('log_z')}, "
                  f"mean logit {last.get('mean_logit')}", flush=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")

"""Symmetries found on Hugging Face architectures the detection was not written for (small configs
built from their classes, random weights, no download): counts per kind, parameters covered,
candidates refuted by the exact check, and the modules left unanalysed.

    .venv/bin/python benchmarks/symmetry_survey.py            # every architecture below
    .venv/bin/python benchmarks/symmetry_survey.py gemma bloom

writes benchmarks/results/symmetry_survey.json (merged with earlier rows of other architectures).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

import shockwatch as sw

OUT = Path(__file__).parent / "results" / "symmetry_survey.json"
VOCAB = 64


def _causal(config: str, model: str, **fields):
    import transformers

    built = getattr(transformers, model)(getattr(transformers, config)(vocab_size=VOCAB, **fields)).eval()
    return built, {"input_ids": torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}


def _images(config: str, model: str, train: bool = False, **fields):
    import transformers

    built = getattr(transformers, model)(getattr(transformers, config)(num_labels=3, **fields))
    return built.train(train), {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def _audio(config: str, model: str, **fields):
    import transformers

    built = getattr(transformers, model)(getattr(transformers, config)(**fields)).eval()
    return built, {"input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(0))}


LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CASES = {
    "gemma": lambda: _causal("GemmaConfig", "GemmaForCausalLM", **LM, num_key_value_heads=1, head_dim=16),
    "gemma2": lambda: _causal("Gemma2Config", "Gemma2ForCausalLM", **LM, num_key_value_heads=1, head_dim=16),
    "phi": lambda: _causal("PhiConfig", "PhiForCausalLM", **LM, num_key_value_heads=1, partial_rotary_factor=0.5),
    "phi3": lambda: _causal("Phi3Config", "Phi3ForCausalLM", **LM, num_key_value_heads=2, pad_token_id=0),
    "qwen3": lambda: _causal("Qwen3Config", "Qwen3ForCausalLM", **LM, num_key_value_heads=1, head_dim=16),
    "olmo2": lambda: _causal("Olmo2Config", "Olmo2ForCausalLM", **LM, num_key_value_heads=2),
    "stablelm": lambda: _causal("StableLmConfig", "StableLmForCausalLM", **LM, num_key_value_heads=2),
    "mixtral": lambda: _causal("MixtralConfig", "MixtralForCausalLM", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1),
    "qwen2_moe": lambda: _causal("Qwen2MoeConfig", "Qwen2MoeForCausalLM", **LM, num_key_value_heads=1, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2),
    "olmoe": lambda: _causal("OlmoeConfig", "OlmoeForCausalLM", **LM, num_key_value_heads=1, num_experts=4,
                             num_experts_per_tok=2),
    "nemotron": lambda: _causal("NemotronConfig", "NemotronForCausalLM", **LM, num_key_value_heads=1, partial_rotary_factor=0.5),
    "gpt_oss": lambda: _causal("GptOssConfig", "GptOssForCausalLM", **LM, num_key_value_heads=1, num_local_experts=4,
                               num_experts_per_tok=2, head_dim=16),
    "bert_mlm": lambda: _causal("BertConfig", "BertForMaskedLM", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2),
    "modernbert": lambda: _causal("ModernBertConfig", "ModernBertForMaskedLM", hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2, sep_token_id=3, cls_token_id=4),
    "gptj": lambda: _causal("GPTJConfig", "GPTJForCausalLM", n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=32),
    "gpt_neox": lambda: _causal("GPTNeoXConfig", "GPTNeoXForCausalLM", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, rotary_pct=0.5, max_position_embeddings=32),
    "opt": lambda: _causal("OPTConfig", "OPTForCausalLM", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                           word_embed_proj_dim=32, max_position_embeddings=32),
    "bloom": lambda: _causal("BloomConfig", "BloomForCausalLM", hidden_size=32, n_layer=2, n_head=2),
    "falcon": lambda: _causal("FalconConfig", "FalconForCausalLM", hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    "mpt": lambda: _causal("MptConfig", "MptForCausalLM", d_model=32, n_layers=2, n_heads=2),
    "roberta": lambda: _causal("RobertaConfig", "RobertaForSequenceClassification", **LM, max_position_embeddings=40, num_labels=3),
    "distilbert": lambda: _causal("DistilBertConfig", "DistilBertForSequenceClassification", dim=32, hidden_dim=64, n_layers=2,
                                  n_heads=2, num_labels=3),
    "electra": lambda: _causal("ElectraConfig", "ElectraForSequenceClassification", **LM, embedding_size=16, num_labels=3),
    "albert": lambda: _causal("AlbertConfig", "AlbertForSequenceClassification", **LM, embedding_size=16, num_labels=3),
    "deit": lambda: _images("DeiTConfig", "DeiTForImageClassification", image_size=32, patch_size=8, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "swin": lambda: _images("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                            num_heads=[2, 2], window_size=4),
    "resnet": lambda: _images("ResNetConfig", "ResNetForImageClassification", train=True, embedding_size=8, hidden_sizes=[8, 16],
                              depths=[1, 1]),
    # experts stored input-first, x @ W by bmm (find_symmetries crashed here until 2026-12-07, later)
    "llama4": lambda: _causal("Llama4TextConfig", "Llama4ForCausalLM", hidden_size=32, intermediate_size=32,
                              intermediate_size_mlp=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=2),
    # a group-normed convolutional feature extractor (a scale per group), added 2026-12-07, later
    "wav2vec2": lambda: _audio("Wav2Vec2Config", "Wav2Vec2ForCTC", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 2),
                               conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                               feat_extract_norm="group", do_stable_layer_norm=False, mask_time_prob=0.0),
    # layer scales (a learned per-unit multiplier on each branch), added 2026-12-07
    "dinov2": lambda: _images("Dinov2Config", "Dinov2ForImageClassification", image_size=32, patch_size=8, hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, layerscale_value=0.5),
    "convnext": lambda: _images("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[8, 16],
                                depths=[1, 1], patch_size=4, layer_scale_init_value=0.5),
}


def measure(name: str) -> dict:
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    start = time.perf_counter()
    found = sw.find_symmetries(model, inputs)
    seconds = time.perf_counter() - start
    params = dict(model.named_parameters())
    covered = {slot.param for sym in found for slot in sym.slots}
    total = sum(p.numel() for p in params.values())
    return {"architecture": name, "parameters": total, "counts": found.counts(),
            "covered_fraction": sum(p.numel() for n, p in params.items() if n in covered) / total,
            "refuted": list(found.rejected), "unanalysed": list(found.unanalysed), "partial": list(found.partial),
            "reasons": dict(found.reasons), "find_symmetries_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architectures", nargs="*", default=list(CASES), help=f"any of: {', '.join(CASES)}")
    args = parser.parse_args()
    unknown = [a for a in args.architectures if a not in CASES]
    if unknown:
        parser.error(f"unknown architectures {unknown}; accepted: {', '.join(CASES)}")
    warnings.filterwarnings("ignore")
    results = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
    results["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    for name in args.architectures:
        row = measure(name)
        results["rows"] = [r for r in results["rows"] if r["architecture"] != name] + [row]
        print(f"{name}: covered {row['covered_fraction']:.1%}, refuted {len(row['refuted'])}, {row['counts']}", flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

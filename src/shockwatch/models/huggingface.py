"""Hugging Face architectures built from their configs (random weights, no download), for detection and
benchmarks: ``build("llama", layers=2, hidden=64)`` or ``build("gpt2", size="published")`` (124M).

transformers is imported on first use only (``pip install shockwatch[hf]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "HFModel", "build"]

ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral", "bert", "vit", "t5")

# the smallest published size of each family, as its config fields (parameters in float32)
_PUBLISHED = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),  # GPT-2 124M
    "llama": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),  # Llama 3.2 1B
    "qwen2": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),  # Qwen2 0.5B
    "mistral": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=32000),  # Mistral 7B
    "bert": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 vocab_size=30522),  # BERT-base 110M
    "vit": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=16),  # ViT-B/16 86M
    "t5": dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8, vocab_size=32128),  # T5-small 60M
}


@dataclass(frozen=True)
class HFModel:
    model: nn.Module
    example_input: dict  # keyword inputs, as the model takes them
    logits: bool  # the output feeds a softmax (every architecture here: LM heads and classifiers)
    description: str


def build(architecture: str, *, size: str = "small", layers: int = 2, hidden: int = 64, heads: int = 4,
          kv_heads: int | None = None, tokens: int = 16, batch: int = 2, seed: int = 0,
          depth: int | None = None) -> HFModel:
    """A Hugging Face model of ``architecture`` from its config, in eval mode, and an example input.

    ``size``: "small" (``layers``, ``hidden``, ``heads``, ``kv_heads`` for Llama/Qwen2/Mistral,
    intermediate 2 x hidden, vocabulary 128, images 32 px in patches of 8) or "published" (the
    family's smallest published size; see ``_PUBLISHED``). ``tokens`` x ``batch`` token inputs
    (pixels for ViT; T5 gets decoder inputs of the same length). ``depth`` (published only): keep
    that many of the published layers, every width as published (a model beyond this machine's
    memory at full depth, Mistral 7B; the symmetries of each layer are the same).
    Raises: ValueError for an unknown architecture or size, a width heads do not divide, or a depth
    outside [1, the published depth].
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; accepted: {', '.join(ARCHITECTURES)}")
    if size not in ("small", "published"):
        raise ValueError(f"size must be 'small' or 'published', got {size!r}")
    if size == "small" and (hidden % heads or (kv_heads is not None and heads % kv_heads)):
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}), heads of kv_heads ({kv_heads})")
    import transformers

    torch.manual_seed(seed)
    vocab = 128
    if depth is not None and size != "published":
        raise ValueError(f"depth applies to size='published' only (got size {size!r}); use layers for a small config")
    if size == "published":
        fields = dict(_PUBLISHED[architecture])
        key = next(k for k in ("n_layer", "num_layers", "num_hidden_layers") if k in fields)
        published_depth = fields[key]
        if depth is not None:
            if not 1 <= depth <= published_depth:
                raise ValueError(f"depth must be in [1, {published_depth}] for {architecture}, got {depth}")
            fields[key] = depth
    elif architecture == "gpt2":
        fields = dict(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=max(64, tokens))
    elif architecture in ("llama", "qwen2", "mistral"):
        fields = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads or heads, vocab_size=vocab, max_position_embeddings=max(64, tokens))
    elif architecture == "t5":
        fields = dict(d_model=hidden, d_ff=2 * hidden, d_kv=hidden // heads, num_layers=layers, num_heads=heads,
                      vocab_size=vocab)
    elif architecture == "vit":
        fields = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      image_size=32, patch_size=8)
    else:
        fields = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      vocab_size=vocab, max_position_embeddings=max(64, tokens))
    if architecture in ("gpt2",):
        fields.update(bos_token_id=0, eos_token_id=0)
    config_class, model_class = {
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "vit": (transformers.ViTConfig, transformers.ViTForImageClassification),
        "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
    }[architecture]
    if architecture in ("bert", "vit"):
        fields["num_labels"] = 3
    model = model_class(config_class(**fields)).eval()
    generator = torch.Generator().manual_seed(seed)
    vocabulary = fields.get("vocab_size", vocab)
    if architecture == "vit":
        image = fields["image_size"]
        example = {"pixel_values": torch.randn(batch, 3, image, image, generator=generator)}
    else:
        example = {"input_ids": torch.randint(0, vocabulary, (batch, tokens), generator=generator)}
        if architecture == "t5":
            example["decoder_input_ids"] = torch.randint(0, vocabulary, (batch, tokens), generator=generator)
        if architecture == "bert":
            example["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    count = sum(p.numel() for p in model.parameters())
    label = size if depth is None or size != "published" else f"published width, {depth} of {published_depth} layers"
    return HFModel(model, example, True, f"{architecture} ({label}, {count / 1e6:.1f}M parameters)")

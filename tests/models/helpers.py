"""Tiny GGUF files written by the tests themselves (no download in the unit suite).

The tiny GGUF is a 2-layer Llama with a byte-level BPE vocabulary of 266 tokens, written with
the ``gguf`` package the way llama.cpp's converter writes one: the query and key projections
permuted for its rotary layout, some tensors quantised to Q8_0, the tokenizer and chat template
as metadata. ``write_tiny_gguf`` also returns the plain transformers model holding exactly the
weights the file stores (the Q8_0 ones dequantised), to compare against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("l", "l"), ("Ġ", "t"), ("Ġt", "he"), ("o", "r"), ("Ġ", "w"), ("Ġw", "or")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 128


def tiny_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return SPECIALS + [spelling[b] for b in range(256)] + ["".join(m) for m in MERGES]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (transformers undoes it when reading a GGUF)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path: Path, *, arch: str = "llama", add_bos: bool = False,
                    tied: bool = True, seed: int = 0) -> torch.nn.Module:
    """Write a tiny Llama GGUF at ``path``; return the HF model with the same weights."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = tiny_vocab()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=FFN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # not all ones, so a norm read from the wrong place shows
                param.uniform_(0.5, 1.5)
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(vocab)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)

    stored: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, value: np.ndarray | None = None,
            quantise: bool = False) -> None:
        array = weights[hf_name] if value is None else value
        if quantise:
            q8 = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(array, q8)
            writer.add_tensor(gguf_name, packed, raw_shape=packed.shape, raw_dtype=q8)
            array = gguf.quants.dequantize(packed, q8).reshape(array.shape)
        else:
            writer.add_tensor(gguf_name, array)
        if value is None:  # the permuted q/k keep the HF layout in the reference model
            stored[hf_name] = array

    put("token_embd.weight", "model.embed_tokens.weight", quantise=True)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight")
        put(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight",
            _permute(weights[p + "self_attn.q_proj.weight"], HEADS))
        put(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight",
            _permute(weights[p + "self_attn.k_proj.weight"], KV_HEADS))
        put(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight")
        put(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight")
        put(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight")
        put(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", quantise=True)
        put(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", quantise=True)
        put(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", quantise=True)
    put("output_norm.weight", "model.norm.weight")
    if not tied:
        put("output.weight", "lm_head.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with torch.no_grad():  # the reference holds what the file holds (Q8_0 rounding included)
        state = model.state_dict()
        for name, array in stored.items():
            state[name].copy_(torch.from_numpy(array))
    return model


def load_tiny_chat_model(folder: Path, *, add_bos: bool = False):
    """The tiny GGUF loaded as a LanguageModel, with a cache of its own under ``folder``.

    Its tokenizer is SmolLM2's kind: ``bos_token`` is the ``<|im_start|>`` turn marker (id 1),
    never put in front of a text unless ``add_bos``; ``<|im_end|>`` (id 2) is its EOS.
    """
    import os

    import pytest

    from tokenwise.models import load

    path = folder / "tiny-chat.gguf"
    write_tiny_gguf(path, add_bos=add_bos)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(os.environ, "TOKENWISE_CACHE", str(folder / "tw-cache"))
        return load(path)

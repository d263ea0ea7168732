"""Model folders of a real model's shape: with no weights (config.json and safetensors files whose
headers are exact and whose data is a sparse hole, for `evomerge plan` at 7B or 70B on any disk),
or in miniature with random weights (a Qwen2.5-shaped model with its `layer_types` list)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096}


def llama_tensors(shape: dict) -> List[Tuple[str, List[int]]]:
    hidden, inner, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = hidden * shape["num_key_value_heads"] // shape["num_attention_heads"]
    tensors = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(shape["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        tensors += [(f"{layer}.self_attn.q_proj.weight", [hidden, hidden]),
                    (f"{layer}.self_attn.k_proj.weight", [kv, hidden]),
                    (f"{layer}.self_attn.v_proj.weight", [kv, hidden]),
                    (f"{layer}.self_attn.o_proj.weight", [hidden, hidden]),
                    (f"{layer}.mlp.gate_proj.weight", [inner, hidden]),
                    (f"{layer}.mlp.up_proj.weight", [inner, hidden]),
                    (f"{layer}.mlp.down_proj.weight", [hidden, inner]),
                    (f"{layer}.input_layernorm.weight", [hidden]),
                    (f"{layer}.post_attention_layernorm.weight", [hidden])]
    return tensors + [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]


def write_shaped_llama(folder: Path, shape: dict, dtype: str = "BF16", shard_bytes: int = 5 * 10 ** 9) -> int:
    """A Llama folder of this shape, sharded as checkpoints are, whose safetensors files hold no data;
    returns its parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **shape}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    width = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    shards: List[List[Tuple[str, List[int]]]] = [[]]
    filled = 0
    for name, dims in llama_tensors(shape):
        size = math.prod(dims) * width
        if shards[-1] and filled + size > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append((name, dims))
        filled += size
    weight_map = {}
    for index, tensors in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update({name: file for name, _ in tensors})
        _write_hollow(folder / file, tensors, dtype, width)
    total = sum(math.prod(dims) for name, dims in llama_tensors(shape))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total * width}, "weight_map": weight_map}), encoding="utf-8")
    return total


def _write_hollow(path: Path, tensors: List[Tuple[str, List[int]]], dtype: str, width: int) -> None:
    """An exact safetensors header (8-byte length, JSON padded to 8 bytes) over a sparse hole of the data's size."""
    header: Dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in tensors:
        size = math.prod(dims) * width
        header[name] = {"dtype": dtype, "shape": dims, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)


def write_tiny_qwen2(folder: Path, tokenizer_from: Path, seed: int,
                     layer_types: Sequence[str] = ("full_attention",) * 4) -> Path:
    """A Qwen2.5-shaped model in miniature (tied embeddings, grouped-query attention, a `layer_types` entry
    per layer), randomly initialized from `seed`, with another model's tokenizer; enough for routing."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    source = AutoConfig.from_pretrained(tokenizer_from)
    config = Qwen2Config(vocab_size=source.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=len(layer_types), num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32, tie_word_embeddings=True, layer_types=list(layer_types),
                         use_sliding_window="sliding_attention" in layer_types, sliding_window=8,
                         bos_token_id=source.bos_token_id, eos_token_id=source.eos_token_id,
                         pad_token_id=source.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder

"""Hugging Face Llama import/export (safetensors only, never pickle); resumable training state is
engine/train_checkpoint.py.

HF <-> Meta names map one to one, except that HF stores wq/wk with each head's rows permuted
so its rotate-half RoPE matches Meta's interleaved pairs. Import undoes that permutation,
export reapplies it. Shards are read once each, straight into the materialised model.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.model_config import ModelConfig
from engine.model import Transformer, build_model
from engine.parallel import is_rank0

_LAYER = {  # HF name inside model.layers.N -> ours inside layers.N
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_TOP = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}


def hf_to_ours(name: str) -> str:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.weight"
    base = name.removesuffix(".weight")
    if base in _TOP and name.endswith(".weight"):
        return f"{_TOP[base]}.weight"
    raise KeyError(f"unexpected tensor {name!r} in a Llama checkpoint")


def ours_to_hf(name: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name)
    if m:
        inverse = {v: k for k, v in _LAYER.items()}
        return f"model.layers.{m.group(1)}.{inverse[m.group(2)]}.weight"
    inverse = {v: k for k, v in _TOP.items()}
    return f"{inverse[name.removesuffix('.weight')]}.weight"


def _meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # Per head, Meta's rows are pairs (0,1),(2,3),...; HF wants all first halves then seconds.
    out, dim = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


def _hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out, dim = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, dim).transpose(1, 2).reshape(out, dim)


def config_from_hf(hf: dict) -> ModelConfig:
    dim, inter = hf["hidden_size"], hf["intermediate_size"]
    if hf.get("head_dim", dim // hf["num_attention_heads"]) != dim // hf["num_attention_heads"]:
        raise ValueError("head_dim != hidden_size / num_attention_heads is not a LLaMA-2 shape")
    # Express intermediate_size with Meta's rule: multiple_of 256 if that reproduces it (7B, 13B),
    # else multiple_of = intermediate_size and a multiplier that keeps the rounding below it.
    multiple_of, mult = 256, None
    cfg = dict(dim=dim, n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
               n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
               vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-5),
               rope_theta=hf.get("rope_theta", 10000.0),
               max_seq_len=hf.get("max_position_embeddings", 4096))
    if ModelConfig(**cfg, multiple_of=multiple_of).hidden_dim != inter:
        base = int(2 * 4 * dim / 3)
        multiple_of, mult = inter, (None if base <= inter else inter / base)
    out = ModelConfig(**cfg, multiple_of=multiple_of, ffn_dim_multiplier=mult)
    assert out.hidden_dim == inter, (out.hidden_dim, inter)
    if hf.get("rope_scaling") or hf.get("tie_word_embeddings") or hf.get("attention_bias"):
        raise ValueError("rope_scaling, tied embeddings and attention biases are not LLaMA-2")
    return out


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq_len, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "pretraining_tp": 1,
        "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def load_hf(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Transformer:
    """Build our model from a Hugging Face Llama directory (config.json + model.safetensors,
    or shards listed in model.safetensors.index.json). dtype None keeps the stored dtype."""
    path = Path(path)
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json "
                                "(pickled .bin checkpoints are not read; convert them to safetensors)")
    model = build_model(cfg, "meta")
    params = dict(model.named_parameters())
    loaded = set()
    for shard in shards:
        with safe_open(str(path / shard), framework="pt", device="cpu") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer some old exports carry; we compute it
                name = hf_to_ours(hf_name)
                t = f.get_tensor(hf_name)
                if name.endswith("attention.wq.weight"):
                    t = _hf_to_meta_rows(t, cfg.n_heads)
                elif name.endswith("attention.wk.weight"):
                    t = _hf_to_meta_rows(t, cfg.n_kv_heads)
                if t.shape != params[name].shape:
                    raise ValueError(f"{shard}: {hf_name} has shape {tuple(t.shape)}, expected {tuple(params[name].shape)}")
                # Swap the meta parameter for the real tensor: nothing is allocated twice.
                _set_param(model, name, t.to(device=device, dtype=dtype or t.dtype))
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.init_rope(device)
    return model


def _set_param(model: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(t, requires_grad=True))


def save_hf(model: Transformer, path: str | Path, tokenizer_path: str | Path | None = None,
            max_shard_bytes: int = 5 * 10**9, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a Hugging Face Llama directory that transformers and vLLM-style loaders
    read: safetensors shards of at most `max_shard_bytes` (+ index when more than one),
    config.json, generation_config.json, and tokenizer.model + its config when given.
    Sharded (FSDP2/DTensor) parameters are gathered; only rank 0 writes."""
    rank0 = is_rank0()
    cfg = model.cfg
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    for name, p in model.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")  # activation-checkpoint wrappers
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()  # collective: every rank takes part
        if not rank0:
            continue
        t = t.to("cpu", dtype or t.dtype)
        if name.endswith("attention.wq.weight"):
            t = _meta_to_hf_rows(t, cfg.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = _meta_to_hf_rows(t, cfg.n_kv_heads)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][ours_to_hf(name)] = t.contiguous()
        size += nbytes
        total += nbytes
    if not rank0:
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stored = next(iter(shards[0].values())).dtype
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    if len(shards) > 1:
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg, stored), indent=2))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2))
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, path / "tokenizer.model")
        (path / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": None, "add_bos_token": True,
            "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.max_seq_len}, indent=2))
        (path / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))

"""Hugging Face import/export for the three families (safetensors only, never pickle): Llama
(Llama-2, Llama-3.x) and Qwen2 (Qwen2.5); resumable training state is engine/train/checkpoint.py.

HF <-> Meta names map one to one, except that HF stores wq/wk (and Qwen's q/k biases) with each
head's rows permuted so its rotate-half RoPE matches Meta's interleaved pairs. Import undoes that
permutation, export reapplies it. Shards are read once each, straight into the materialised
model. A tied head (tie_word_embeddings) is stored once, as model.embed_tokens.weight, as
transformers does; an lm_head.weight beside it in a tied checkpoint is ignored, as transformers
ignores it.

The family on export follows from the architecture: q/k/v biases without an output bias exist
only in Qwen2 (HF Llama's attention_bias biases o_proj too), so qkv_bias -> Qwen2ForCausalLM,
else LlamaForCausalLM. RoPE settings are read from transformers 5's `rope_parameters` or the
older `rope_theta` + `rope_scaling` (what published checkpoints hold), and written the older way,
which both major versions read.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ie_engine.engine.model.config import ModelConfig, RopeScaling
from ie_engine.engine.model.transformer import Transformer, build_model
from ie_engine.engine.parallel import is_rank0

_LAYER = {  # HF name inside model.layers.N -> ours inside layers.N
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_TOP = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def hf_to_ours(name: str) -> str:
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    base = name.removesuffix(".weight")
    if base in _TOP and name.endswith(".weight"):
        return f"{_TOP[base]}.weight"
    raise KeyError(f"unexpected tensor {name!r} in a Llama/Qwen2 checkpoint")


def ours_to_hf(name: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        inverse = {v: k for k, v in _LAYER.items()}
        return f"model.layers.{m.group(1)}.{inverse[m.group(2)]}.{m.group(3)}"
    inverse = {v: k for k, v in _TOP.items()}
    return f"{inverse[name.removesuffix('.weight')]}.weight"


def _meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # Per head, Meta's rows are pairs (0,1),(2,3),...; HF wants all first halves then seconds.
    # w is a weight (out, dim) or a bias (out,): the rows are permuted the same way.
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out = w.shape[0]
    return w.reshape(n_heads, 2, out // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _permute_rows(name: str, t: torch.Tensor, cfg: ModelConfig, to_hf: bool) -> torch.Tensor:
    """Apply the q/k row permutation to the tensors that carry it (wq, wk and their biases)."""
    if ".attention.wq." in name:
        n = cfg.n_heads
    elif ".attention.wk." in name:
        n = cfg.n_kv_heads
    else:
        return t
    return _meta_to_hf_rows(t, n) if to_hf else _hf_to_meta_rows(t, n)


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers 5's rope_parameters or the older rope_theta + rope_scaling."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"config.json: rope_type {kind!r} is not supported (default or llama3)")
    return theta, RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                              high_freq_factor=float(rope["high_freq_factor"]),
                              original_max_seq_len=int(rope["original_max_position_embeddings"]))


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json of a Llama or Qwen2 model."""
    family = hf.get("model_type", "llama")
    if family not in _FAMILIES:
        raise ValueError(f"config.json: model_type {family!r} is not supported ({sorted(_FAMILIES)})")
    dim, inter = hf["hidden_size"], hf["intermediate_size"]
    if (hf.get("head_dim") or dim // hf["num_attention_heads"]) != dim // hf["num_attention_heads"]:
        raise ValueError("config.json: head_dim != hidden_size / num_attention_heads is not supported")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise ValueError("config.json: only a bias-free SiLU-gated MLP is supported")
    if family == "llama" and hf.get("attention_bias"):
        raise ValueError("config.json: Llama attention_bias (an o_proj bias too) is not supported")
    if family == "qwen2" and (hf.get("use_sliding_window") or any(
            t != "full_attention" for t in hf.get("layer_types") or [])):
        raise ValueError("config.json: Qwen2 sliding-window attention is not supported")
    theta, scaling = _rope_from_hf(hf)
    # Express intermediate_size with Meta's rule: multiple_of 256 if that reproduces it (7B, 13B),
    # else multiple_of = intermediate_size and a multiplier that keeps the rounding below it.
    multiple_of, mult = 256, None
    cfg = dict(dim=dim, n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
               n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
               vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-5),
               rope_theta=theta, rope_scaling=scaling,
               max_seq_len=hf.get("max_position_embeddings", 4096), qkv_bias=family == "qwen2",
               tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    if ModelConfig(**cfg, multiple_of=multiple_of).hidden_dim != inter:
        base = int(2 * 4 * dim / 3)
        multiple_of, mult = inter, (None if base <= inter else inter / base)
    out = ModelConfig(**cfg, multiple_of=multiple_of, ffn_dim_multiplier=mult)
    assert out.hidden_dim == inter, (out.hidden_dim, inter)
    return out


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype, bos_id: int | None = 1, eos_id: int | None = 2) -> dict:
    """config.json for `cfg`: Qwen2 when it has q/k/v biases, else Llama (module docstring)."""
    family = "qwen2" if cfg.qkv_bias else "llama"
    s = cfg.rope_scaling
    rope_scaling = None if s is None else {
        "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_seq_len}
    out = {
        "architectures": [_FAMILIES[family]], "model_type": family,
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling, "max_position_embeddings": cfg.max_seq_len, "hidden_act": "silu",
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "attention_dropout": 0.0, "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if family == "llama":
        out.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        out.update({"use_sliding_window": False, "sliding_window": None,
                    "max_window_layers": cfg.n_layers})
    return out


def load_hf(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Transformer:
    """Build our model from a Hugging Face Llama or Qwen2 directory (config.json +
    model.safetensors, or shards listed in model.safetensors.index.json). dtype None keeps the
    stored dtype."""
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
                if cfg.tie_embeddings and hf_name == "lm_head.weight":
                    continue  # tied: the head is the embedding (module docstring)
                name = hf_to_ours(hf_name)
                t = _permute_rows(name, f.get_tensor(hf_name), cfg, to_hf=False)
                if t.shape != params[name].shape:
                    raise ValueError(f"{shard}: {hf_name} has shape {tuple(t.shape)}, expected {tuple(params[name].shape)}")
                # Swap the meta parameter for the real tensor: nothing is allocated twice.
                _set_param(model, name, t.to(device=device, dtype=dtype or t.dtype))
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if cfg.tie_embeddings:  # _set_param replaced the embedding's Parameter: tie the head to it again
        model.output.weight = model.tok_embeddings.weight
    model.init_rope(device)
    return model


def _set_param(model: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(t, requires_grad=True))


def save_hf(model: Transformer, path: str | Path, tokenizer_path: str | Path | None = None,
            max_shard_bytes: int = 5 * 10**9, dtype: torch.dtype | None = None) -> None:
    """Write `model` as a Hugging Face Llama or Qwen2 directory that transformers and vLLM-style
    loaders read: safetensors shards of at most `max_shard_bytes` (+ index when more than one),
    config.json, generation_config.json, and the tokenizer when given (a sentencepiece
    tokenizer.model with a Llama tokenizer config, or a tokenizer.json with the config files
    beside it); its BOS/EOS ids go into the configs (without one: Llama-2's 1 and 2).
    A tied head is written once. Sharded (FSDP2/DTensor) parameters are gathered; only rank 0
    writes."""
    rank0 = is_rank0()
    cfg = model.cfg
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    for name, p in model.named_parameters():  # a tied head is yielded once, as the embedding
        name = name.replace("_checkpoint_wrapped_module.", "")  # activation-checkpoint wrappers
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()  # collective: every rank takes part
        if not rank0:
            continue
        t = _permute_rows(name, t.to("cpu", dtype or t.dtype), cfg, to_hf=True)
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
    bos, eos, pad = 1, 2, 0  # Llama-2's sentencepiece ids (a tokenizer.model is copied as is)
    if tokenizer_path is not None:
        from ie_engine.data.tokenizer import Tokenizer, find_tokenizer
        tokenizer_path = find_tokenizer(tokenizer_path)  # a directory: its tokenizer file
        if tokenizer_path.endswith(".json"):
            tok = Tokenizer(tokenizer_path)
            bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
            _save_tokenizer_json(tok, path, cfg.max_seq_len)
        else:
            _save_tokenizer_model(Path(tokenizer_path), path, cfg.max_seq_len)
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg, stored, bos, eos), indent=2))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}, indent=2))


def hf_state_dict(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors save_hf writes, in memory and on the model's device: HF names, q/k rows
    permuted, a tied head once. For an unsharded model (benchmarks hand weights to transformers
    without a disk round trip: a 7B export is 13.5 GB written and read back)."""
    return {ours_to_hf(name): _permute_rows(name, p.detach().to(dtype or p.dtype), model.cfg, to_hf=True)
            for name, p in model.named_parameters()}


def to_transformers(model: Transformer, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """transformers' LlamaForCausalLM / Qwen2ForCausalLM with `model`'s config and weights, on
    the model's device, built in memory (hf_state_dict); what save_hf + from_pretrained give."""
    import transformers

    hf_cfg = config_to_hf(model.cfg, dtype)
    config = transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
    with torch.device(model.tok_embeddings.weight.device):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model, dtype), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.cfg.tie_embeddings else set()):
        raise RuntimeError(f"to_transformers: missing {missing}, unexpected {unexpected}")
    return hf


def _save_tokenizer_json(tok, path: Path, max_seq_len: int) -> None:
    """tokenizer.json and the config files it was read with (a minimal tokenizer_config.json
    naming its BOS/EOS when it had none)."""
    shutil.copyfile(tok.path, path / "tokenizer.json")
    for side in ("tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tok.path).parent / side).exists():
            shutil.copyfile(Path(tok.path).parent / side, path / side)
    if not (path / "tokenizer_config.json").exists():
        (path / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_text,
            "eos_token": tok.eos_text, "pad_token": None, "clean_up_tokenization_spaces": False,
            "model_max_length": max_seq_len}, indent=2))


def _save_tokenizer_model(tokenizer_path: Path, path: Path, max_seq_len: int) -> None:
    shutil.copyfile(tokenizer_path, path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "add_bos_token": True,
        "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len}, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))

"""ADELIE's other bases in the same model: Llama-3.x (scaled RoPE, GQA, tied head) and Qwen2.5
(q/k/v biases, tied head). Logits against transformers' own LlamaForCausalLM / Qwen2ForCausalLM
at toy size, both ways (load_hf, save_hf); presets against transformers' parameter count of
the published configs; a tied head stays one parameter through FSDP2 and reaches fused losses."""
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from ie_engine.engine.model.config import PRESETS, ModelConfig, RopeScaling
from ie_engine.engine.model.hf_checkpoint import config_from_hf, config_to_hf, load_hf, save_hf
from ie_engine.engine.model.transformer import build_model, rope_tables

transformers = pytest.importorskip("transformers")

# Toy configs of each family. original_max_position_embeddings=64 puts the 8 RoPE frequencies of
# head_dim 16 in all three llama3 bands (kept, interpolated, stretched).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
TOY = dict(hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=211, max_position_embeddings=128)


def hf_config(family: str, tie: bool):
    if family == "llama3":
        return transformers.LlamaConfig(**TOY, rms_norm_eps=1e-5, rope_theta=500000.0,
                                        rope_scaling=dict(LLAMA3_SCALING), tie_word_embeddings=tie)
    return transformers.Qwen2Config(**TOY, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=tie)


def hf_model(family: str, tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = hf_config(family, tie)
    cls = transformers.LlamaForCausalLM if family == "llama3" else transformers.Qwen2ForCausalLM
    model = cls._from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():  # HF inits norms to ones and biases to zeros: perturb so the mapping is tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def rel_err(a, b):
    return ((a - b).norm() / a.norm()).item()


FAMILIES = [("llama3", True), ("llama3", False), ("qwen2", True), ("qwen2", False)]


@pytest.mark.parametrize("family, tie", FAMILIES)
def test_load_hf_matches_transformers_logits(tmp_path, family, tie):
    ref = hf_model(family, tie)
    ref.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    cfg = model.cfg
    assert cfg.tie_embeddings == tie and cfg.qkv_bias == (family == "qwen2") and cfg.n_kv_heads == 2
    assert (cfg.rope_scaling is not None) == (family == "llama3")
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not tie)  # transformers stores a tied head once
    x = torch.randint(0, 211, (2, 117))  # past original_max_position_embeddings
    with torch.no_grad():
        err = rel_err(ref(x).logits, model(x))
    print(f"{family} tie={tie}: load_hf logits rel err {err:.2e}")
    assert err < 1e-5, err


def perturbed_model(cfg: ModelConfig, seed: int):
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("family, tie", FAMILIES)
def test_save_hf_is_read_by_transformers_and_round_trips_exactly(tmp_path, family, tie):
    cfg = config_from_hf(hf_config(family, tie).to_dict())
    model = perturbed_model(cfg, 5)
    save_hf(model, tmp_path / "out", max_shard_bytes=60_000)
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["model_type"] == ("llama" if family == "llama3" else "qwen2")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert ("lm_head.weight" in index["weight_map"]) == (not tie)
    assert any(k.endswith("q_proj.bias") for k in index["weight_map"]) == (family == "qwen2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert hf.config.tie_word_embeddings == tie
    x = torch.randint(0, 211, (3, 101))
    with torch.no_grad():
        err = rel_err(model(x), hf(x).logits.float())
    print(f"{family} tie={tie}: save_hf logits rel err {err:.2e}")
    assert err < 1e-5, err
    again = load_hf(tmp_path / "out")
    assert arch(again.cfg) == arch(cfg)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


def arch(cfg: ModelConfig) -> dict:
    """The architecture, whichever (multiple_of, ffn_dim_multiplier) spells the SwiGLU width."""
    out = dataclasses.asdict(cfg)
    del out["multiple_of"], out["ffn_dim_multiplier"]
    return {**out, "hidden_dim": cfg.hidden_dim}


def test_config_round_trips_through_hf():
    for cfg in (PRESETS["llama3.2-3b"], PRESETS["qwen2.5-1.5b"], PRESETS["llama2-7b"]):
        assert arch(config_from_hf(config_to_hf(cfg, torch.bfloat16))) == arch(cfg)


def test_llama3_rope_scaling_matches_transformers():
    cfg = hf_config("llama3", True)
    rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 128, 16)
    cos_hf, sin_hf = rope(x, torch.arange(128)[None])
    s = LLAMA3_SCALING
    cos, sin = rope_tables(128, 16, 500000.0, scaling=RopeScaling(
        s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]))
    # HF repeats the 8 frequencies twice (rotate-half); ours are the 8 interleaved pairs' angles
    torch.testing.assert_close(cos, cos_hf[0, :, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, sin_hf[0, :, :8], rtol=0, atol=1e-6)
    plain, _ = rope_tables(128, 16, 500000.0)
    assert not torch.allclose(plain, cos)  # the scaling did something


# The published config.json of each base (transformers' names) and its published parameter count.
PUBLISHED = {
    "llama3.2-1b": (transformers.LlamaConfig, dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}), 1_235_814_400),
    "llama3.2-3b": (transformers.LlamaConfig, dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}), 3_212_749_824),
    "qwen2.5-1.5b": (transformers.Qwen2Config, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False), 1_543_714_304),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_parameter_count_matches_transformers_and_published(preset):
    config_cls, kw, published = PUBLISHED[preset]
    hf_cfg = config_cls(**kw)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    hf_count = sum(p.numel() for p in hf.parameters())  # parameters() yields a tied weight once
    ours = build_model(PRESETS[preset], "meta").num_params()
    print(f"{preset}: ours {ours:,} transformers {hf_count:,} published {published:,}")
    assert ours == hf_count == published
    assert arch(config_from_hf(hf_cfg.to_dict())) == arch(PRESETS[preset])


def test_init_weights_zeroes_biases_and_keeps_the_tie():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16,
                      max_seq_len=64, qkv_bias=True, tie_embeddings=True)
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(0)
    assert model.output.weight is model.tok_embeddings.weight
    names = [n for n, _ in model.named_parameters()]
    assert "output.weight" not in names and "layers.0.attention.wq.bias" in names
    assert "layers.0.attention.wo.bias" not in names  # Qwen2: no output-projection bias
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.1)
    untied = ModelConfig(**{**cfg.__dict__, "tie_embeddings": False})
    assert build_model(cfg).num_params() == build_model(untied).num_params() - 50 * 32


def test_hf_config_rejects_what_the_model_cannot_express():
    bad = [transformers.LlamaConfig(**TOY, attention_bias=True),  # an o_proj bias too
           transformers.LlamaConfig(**TOY, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
           transformers.Qwen2Config(**TOY, use_sliding_window=True, sliding_window=16)]
    for cfg in bad:
        with pytest.raises(ValueError, match="config.json"):
            config_from_hf(cfg.to_dict())


# ----------------------------------------------------------------------------- FSDP2 (1 process)




def test_tied_head_stays_one_parameter_under_fsdp_and_reaches_fused_losses(world1):
    from ie_engine.engine.parallel import ParallelConfig, materialize, parallelize
    from ie_engine.kernels.fused_linear_logprob import fused_linear_logprob
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=53, multiple_of=16,
                      max_seq_len=64, qkv_bias=True, tie_embeddings=True,
                      rope_scaling=RopeScaling(factor=4.0, original_max_seq_len=16))
    pcfg = ParallelConfig(mixed_precision="fp32", activation_checkpointing="full")
    wrapped = parallelize(build_model(cfg, "meta"), pcfg, world1)
    materialize(wrapped, world1, pcfg, seed=3)
    assert wrapped.output.weight is wrapped.tok_embeddings.weight
    assert len(list(wrapped.parameters())) == len(list(build_model(cfg).parameters()))
    plain = build_model(cfg, "cpu")
    plain.init_weights(3)

    x = torch.randint(0, 53, (2, 19))
    labels = torch.randint(0, 53, (2, 19))
    seen = []

    def head_fn(h, w):  # what the SFT/DPO losses get: the tied weight, gathered
        seen.append(w)
        return fused_linear_logprob(h, w, labels.flatten()).sum()

    losses = []
    for m in (wrapped, plain):
        loss = m(x, head_fn=head_fn)
        loss.backward()
        losses.append(loss.detach())
    assert seen[0].shape == (53, 32) and seen[1] is plain.tok_embeddings.weight
    assert rel_err(losses[1], losses[0]) < 1e-6
    g = wrapped.tok_embeddings.weight.grad
    g = g.full_tensor() if hasattr(g, "full_tensor") else g
    # the gradient of the one tied parameter holds both uses (embedding rows and head)
    assert rel_err(plain.tok_embeddings.weight.grad, g) < 1e-6


def test_tied_model_resumes_from_a_sharded_training_state(world1, tmp_path):
    """DCP save/load of model + AdamW state keeps the tie and restores the one tied tensor."""
    from ie_engine.engine.parallel import ParallelConfig, materialize, parallelize
    from ie_engine.engine.train.checkpoint import load_state, save_state
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=53, multiple_of=16,
                      max_seq_len=32, qkv_bias=True, tie_embeddings=True)
    pcfg = ParallelConfig(mixed_precision="fp32")

    def fresh(seed):
        m = parallelize(build_model(cfg, "meta"), pcfg, world1)
        materialize(m, world1, pcfg, seed=seed)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    model, opt = fresh(1)
    x = torch.randint(0, 53, (2, 9))
    model(x).sum().backward()
    opt.step()
    save_state(tmp_path, 1, model, opt)
    want = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    other, other_opt = fresh(2)
    load_state(tmp_path / "step-00000001", other, other_opt)
    assert other.output.weight is other.tok_embeddings.weight
    for k, v in other.state_dict().items():
        assert torch.equal(v.full_tensor(), want[k]), k
    assert len(other_opt.state) == len(list(other.parameters()))


def test_meta_params_json_of_llama3_2(tmp_path):
    f = tmp_path / "params.json"  # Meta's Llama-3.2-1B params.json
    f.write_text('{"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32, "n_kv_heads": 8, '
                 '"n_layers": 16, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": true, '
                 '"vocab_size": 128256}')
    cfg = ModelConfig.from_params_json(f, rope_scaling_factor=32.0)
    preset = PRESETS["llama3.2-1b"]
    assert cfg.rope_scaling == preset.rope_scaling and cfg.hidden_dim == preset.hidden_dim
    assert build_model(dataclasses.replace(cfg, tie_embeddings=True)).num_params() == 1_235_814_400


@pytest.mark.parametrize("style", ["llama3", "qwen2"])
def test_save_hf_writes_a_tokenizer_json_and_its_ids(tmp_path, style):
    from ie_engine.data.tokenizer import Tokenizer, train_byte_level_tokenizer
    train_byte_level_tokenizer(["Ada met Alan in Paris.\nIt rained."] * 5, 300, tmp_path / "tok", style)
    tok = Tokenizer(tmp_path / "tok")
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16, max_seq_len=64,
                      tie_embeddings=True, qkv_bias=style == "qwen2")
    save_hf(perturbed_model(cfg, 0), tmp_path / "out", tokenizer_path=tmp_path / "tok")  # a directory works
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert hf_cfg["bos_token_id"] == gen["bos_token_id"] == tok.bos_id  # None for Qwen
    assert hf_cfg["eos_token_id"] == gen["eos_token_id"] == tok.eos_id
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf_tok.eos_token == tok.eos_text and hf_tok("Ada met")["input_ids"][-2:] == tok.encode("Ada met")[-2:]

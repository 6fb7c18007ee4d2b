"""Hugging Face interop: load_hf parity with transformers' Llama, save_hf read by transformers,
exact save/reload round trip, sharding with an index."""
import json

import pytest
import torch

from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.hf_checkpoint import load_hf, save_hf, to_transformers
from ie_engine.engine.model.transformer import build_model

from helpers import rel_err

transformers = pytest.importorskip("transformers")


def hf_model(n_kv_heads: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, vocab_size=211, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF inits norms to ones; perturb them so the mapping is really tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model




@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_load_hf_matches_transformers_logits(tmp_path, n_kv_heads):
    ref = hf_model(n_kv_heads)
    ref.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert model.cfg.n_kv_heads == n_kv_heads and model.cfg.hidden_dim == 100
    x = torch.randint(0, 211, (2, 29))
    with torch.no_grad():
        err = rel_err(ref(x).logits, model(x))
    assert err < 1e-5, err


def test_save_hf_is_read_by_transformers_and_round_trips_exactly(tmp_path):
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=211, multiple_of=32, max_seq_len=128)
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(3)
    model.eval()
    save_hf(model, tmp_path / "out", max_shard_bytes=60_000)  # forces several shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    x = torch.randint(0, 211, (3, 17))
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits.float()) < 1e-5
    again = load_hf(tmp_path / "out")
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("tied", [False, True])
def test_to_transformers_in_memory_equals_the_export(tmp_path, tied):
    """The benchmarks' in-memory hand-over gives transformers the weights save_hf writes."""
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=211, multiple_of=32, max_seq_len=128,
                      tie_embeddings=tied)
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(5)
    model.eval()
    save_hf(model, tmp_path / "out")
    disk = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    memory = to_transformers(model, torch.float32, attn_implementation="eager").eval()
    x = torch.randint(0, 211, (2, 23))
    with torch.no_grad():
        assert torch.equal(memory(x).logits, disk(x).logits)
        assert rel_err(model(x), memory(x).logits.float()) < 1e-5


def test_load_hf_casts_and_rejects_pickle(tmp_path):
    ref = hf_model(2)
    ref.save_pretrained(tmp_path / "a")
    model = load_hf(tmp_path / "a", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf(tmp_path / "b")


def test_save_hf_writes_tokenizer_files(tmp_path):
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=50, multiple_of=16, max_seq_len=64)
    model = build_model(cfg, "cpu")
    model.init_weights(0)
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"\x00sentencepiece-bytes")
    save_hf(model, tmp_path / "out", tokenizer_path=tok)
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == tok.read_bytes()
    tc = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "LlamaTokenizer" and tc["add_bos_token"] is True


def test_save_hf_of_an_activation_checkpointed_model(tmp_path):
    from ie_engine.engine.parallel import apply_activation_checkpointing
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=50, multiple_of=16, max_seq_len=64)
    model = build_model(cfg, "cpu")
    model.init_weights(1)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    apply_activation_checkpointing(model, "full")
    save_hf(model, tmp_path / "out")
    for name, p in load_hf(tmp_path / "out").state_dict().items():
        assert torch.equal(p, plain[name]), name

"""ADELIE's other bases end to end: a Llama-3.2-shaped and a Qwen2.5-shaped tiny checkpoint (random
weights and config saved by transformers, a tiny byte-level tokenizer.json) go through
recipes/sft.py and recipes/dpo.py (1 process, a few steps) and back out to transformers, whose
logits equal our model's on the exported final/."""
from pathlib import Path

import pytest
import torch

from recipe_utils import FAST, metrics, run, torchrun_cmd

transformers = pytest.importorskip("transformers")
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
SFT_FILE = FIXTURES / "sft_sample.jsonl"


def write_pairs(path: Path, n: int = 40) -> Path:
    """n short IE preference pairs (enough for a few packed rows)."""
    import json
    names, cities = ["Ada", "Alan", "Grace", "Edsger", "Barbara"], ["Paris", "Oslo", "Lima", "Kyoto"]
    with open(path, "w") as f:
        for i in range(n):
            a, b, c = names[i % 5], names[(i + 2) % 5], cities[i % 4]
            f.write(json.dumps({"prompt": f"Extract the people: {a} met {b} in {c} ({i}).",
                                "chosen": f"[Answer]: {a}; {b}", "rejected": f"[Answer]: {a}; {c}"}) + "\n")
    return path


def corpus() -> list[str]:
    from ie_engine.data.formats import read_sft
    texts = [m["content"] for r in read_sft(SFT_FILE) for m in r["messages"]]
    return texts + ["<|system|>\n<|user|>\n<|assistant|>\n[Answer]: "] * 4


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def checkpoint(request, tmp_path_factory) -> Path:
    """A transformers-saved tiny checkpoint of the family with its tokenizer.json beside it."""
    from ie_engine.data.tokenizer import Tokenizer, train_byte_level_tokenizer
    d = tmp_path_factory.mktemp(request.param)
    tok = Tokenizer(train_byte_level_tokenizer(corpus(), 500, d, request.param))
    shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    if request.param == "llama3":  # vocabulary = the tokenizer's, scaled RoPE
        cfg = transformers.LlamaConfig(**shape, vocab_size=tok.vocab_size, rms_norm_eps=1e-5, rope_theta=500000.0,
                                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
        model = transformers.LlamaForCausalLM(cfg)
    else:  # the embedding padded past the tokenizer, as Qwen2.5's 151,936 rows for 151,665 ids
        cfg = transformers.Qwen2Config(**shape, vocab_size=tok.vocab_size + 12, rms_norm_eps=1e-6,
                                       rope_theta=1000000.0)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(d)
    return d


def assert_export_matches_transformers(final: Path, vocab: int) -> float:
    from ie_engine.engine.model.hf_checkpoint import load_hf
    ours = load_hf(final).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(final, attn_implementation="eager").float().eval()
    x = torch.randint(0, vocab, (2, 77))
    with torch.no_grad():
        a, b = hf(x).logits.float(), ours(x)
    err = ((a - b).norm() / a.norm()).item()
    assert err < 1e-5, err
    return err


def common(cache_dir, out, checkpoint, train_file):
    return [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", f"model.checkpoint={checkpoint}",
            f"data.train_files=[{train_file}]", "data.eval_files=[]"]


@pytest.mark.slow
def test_sft_then_dpo_and_back_to_transformers(checkpoint, tmp_path):
    hf_cfg = transformers.AutoConfig.from_pretrained(checkpoint)
    sft = tmp_path / "sft"
    run(torchrun_cmd("sft.py", 1, [*common(tmp_path / "cache", sft, checkpoint, SFT_FILE), "max_steps=3",
                                   "global_batch_rows=2"]),
        cwd=tmp_path)
    rows = metrics(sft)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    final = sft / "final"
    assert (final / "tokenizer.json").exists() and (final / "tokenizer_config.json").exists()
    exported = transformers.AutoConfig.from_pretrained(final)
    assert exported.model_type == hf_cfg.model_type and exported.tie_word_embeddings
    assert exported.vocab_size == hf_cfg.vocab_size  # a padded embedding stays padded
    err = assert_export_matches_transformers(final, hf_cfg.vocab_size)
    print(f"{hf_cfg.model_type} SFT export: logits rel err {err:.2e}")
    # the weights moved
    from ie_engine.engine.model.hf_checkpoint import load_hf
    assert not torch.equal(load_hf(final).tok_embeddings.weight, load_hf(checkpoint).tok_embeddings.weight)

    dpo = tmp_path / "dpo"
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    run(torchrun_cmd("dpo.py", 1, [*common(tmp_path / "cache", dpo, final, pairs), "max_steps=2",
                                   "optim.lr=1e-3"]), cwd=tmp_path)
    rows = metrics(dpo)
    assert [r["step"] for r in rows] == [1, 2]
    # step 1: the policy is the reference, so the sigmoid loss is log 2
    assert rows[0]["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    err = assert_export_matches_transformers(dpo / "final", hf_cfg.vocab_size)
    print(f"{hf_cfg.model_type} DPO export: logits rel err {err:.2e}")
    # every other preference loss on the same family, in-process (1-process group), 1 step each
    import math

    from ie_engine.engine.run_config import PREFERENCE_LOSSES
    from ie_engine.recipes import dpo as dpo_recipe
    for loss_type in sorted(set(PREFERENCE_LOSSES) - {"sigmoid"}):
        out = tmp_path / f"dpo-{loss_type}"
        dpo_recipe.main([*common(tmp_path / "cache", out, final, pairs), "max_steps=1", f"dpo.loss_type={loss_type}",
                         "dpo.rpo_alpha=0.5" if loss_type == "simpo" else "dpo.rpo_alpha=0"])
        first = metrics(out)[0]["loss"]
        assert math.isfinite(first), loss_type
        if loss_type in ("robust", "dpo_norm"):  # policy = reference at step 1: log 2
            assert first == pytest.approx(math.log(2), abs=1e-4), loss_type
        if loss_type == "hinge":
            assert first == pytest.approx(1.0, abs=1e-4)
        if loss_type == "ipo":  # (0 - 1 / (2 beta))^2 with beta 0.1
            assert first == pytest.approx(25.0, abs=1e-3)
        err = assert_export_matches_transformers(out / "final", hf_cfg.vocab_size)
        print(f"{hf_cfg.model_type} DPO {loss_type} export: logits rel err {err:.2e}")

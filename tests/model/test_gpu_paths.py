"""What breaks or wastes time on NVIDIA GPUs, proven on the CPU where a CPU can:

- the attention mask (flex BlockMask, flash cu_seqlens, the dense SDPA mask) is built once per
  forward, not once per layer; the batch's host-side cu_seqlens are used as given;
- the flash-attn path (with a stand-in for flash_attn_varlen_func built from SDPA) equals SDPA;
- attn_backend=auto never picks flash-attn for fp32 compute;
- RoPE tables reach the kernel in fp32 under FSDP bf16 mixed precision;
- every collective's tensor lives on a device that the GPU job's process group serves
  (tests/recipes/test_collectives.py).
"""

import pytest
import torch

from ie_engine.engine import parallel
from ie_engine.engine.model import attention as attn_mod
from ie_engine.engine.model.attention import cu_seqlens_from_doc_ids, select_backend
from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.run_config import ParallelConfig
from ie_engine.engine.train.batching import to_device

from helpers import make_model, sdpa_flash_varlen, tiny_model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    return tiny_model_config(**{"n_layers": 3, **kw})


make = make_model


def packed(vocab: int, T: int = 20):
    """Two rows: documents of 7, 9 and 4 tokens; one of 12 then 8 pads."""
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, T))
    doc_ids = torch.tensor([[0] * 7 + [1] * 9 + [2] * 4, [3] * 12 + [-1] * 8])
    positions = torch.cat([torch.cat([torch.arange(7), torch.arange(9), torch.arange(4)]),
                           torch.cat([torch.arange(12), torch.arange(8)])]).view(2, T)
    return ids, positions, doc_ids


def count_calls(monkeypatch, module, name):
    real, calls = getattr(module, name), []

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_built_once_per_forward(monkeypatch):
    cfg = tiny(attn_backend="flex")
    model = make(cfg)
    ids, positions, doc_ids = packed(cfg.vocab_size)
    calls = count_calls(monkeypatch, attn_mod, "_flex_block_mask")
    with torch.no_grad():
        flex = model(ids, positions=positions, doc_ids=doc_ids)
    assert len(calls) == 1, f"{len(calls)} block masks for {cfg.n_layers} layers"
    sdpa = make(tiny(attn_backend="sdpa"))
    with torch.no_grad():
        ref = sdpa(ids, positions=positions, doc_ids=doc_ids)
    real = doc_ids >= 0
    torch.testing.assert_close(flex[real], ref[real], rtol=1e-5, atol=1e-5)


def test_dense_mask_built_once_per_forward_and_recompute(monkeypatch):
    """SDPA (the CPU path) with activation checkpointing: the (B, 1, T, T) mask is made once; the
    recompute in backward reuses it."""
    from ie_engine.engine.parallel import apply_activation_checkpointing
    cfg = tiny(attn_backend="sdpa")
    model = make(cfg).train()
    apply_activation_checkpointing(model, "full")
    ids, positions, doc_ids = packed(cfg.vocab_size)
    calls = count_calls(monkeypatch, attn_mod, "build_doc_mask")
    import ie_engine.engine.model.transformer as model_mod
    monkeypatch.setattr(model_mod, "build_doc_mask", attn_mod.build_doc_mask)
    model(ids, positions=positions, doc_ids=doc_ids).sum().backward()
    assert len(calls) == 1


def test_flash_path_uses_host_cu_seqlens_and_matches_sdpa(monkeypatch):
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_func", sdpa_flash_varlen)
    cfg = tiny(attn_backend="flash")
    model = make(cfg)
    ids, positions, doc_ids = packed(cfg.vocab_size)
    batch = to_device({"input_ids": ids, "positions": positions, "doc_ids": doc_ids}, torch.device("cpu"),
                      with_cu_seqlens=True)
    assert batch["cu_seqlens"].tolist() == [0, 7, 16, 20, 32, 40] and batch["max_seqlen"] == 12
    calls = count_calls(monkeypatch, attn_mod, "cu_seqlens_from_doc_ids")
    with torch.no_grad():
        got = model(ids, positions=positions, doc_ids=doc_ids, cu_seqlens=batch["cu_seqlens"],
                    max_seqlen=batch["max_seqlen"])
        assert calls == []  # the batch's host-side boundaries, none computed per layer
        again = model(ids, positions=positions, doc_ids=doc_ids)
        assert len(calls) == 1  # without them: once per forward, not per layer
        ref = make(tiny(attn_backend="sdpa"))(ids, positions=positions, doc_ids=doc_ids)
    real = doc_ids >= 0
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got)


def test_cu_seqlens_pads_and_row_starts():
    doc_ids = torch.tensor([[0, 0, 1, -1], [2, 2, 2, 2], [3, -1, -1, -1]])
    cu, longest = cu_seqlens_from_doc_ids(doc_ids)
    assert cu.tolist() == [0, 2, 3, 4, 8, 9, 12] and longest == 4 and cu.dtype == torch.int32


def test_auto_backend_never_flash_for_fp32(monkeypatch):
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_func", sdpa_flash_varlen)
    cuda = torch.device("cuda", 0)
    assert select_backend(cuda, "auto", torch.float32) == "flex"
    assert select_backend(cuda, "auto", torch.bfloat16) == "flash"
    assert select_backend(torch.device("cpu"), "auto", torch.bfloat16) == "sdpa"
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_func", None)
    assert select_backend(cuda, "auto", torch.bfloat16) == "flex"




def test_rope_tables_stay_fp32_under_bf16_mixed_precision(world1, monkeypatch):
    import ie_engine.engine.model.transformer as transformer
    seen = []
    real = transformer.apply_rope

    def spy(q, k, cos, sin, positions=None):
        seen.append((q.dtype, cos.dtype, sin.dtype))
        return real(q, k, cos, sin, positions)

    monkeypatch.setattr(transformer, "apply_rope", spy)
    cfg = tiny()
    pcfg = ParallelConfig(mixed_precision="bf16")
    model = parallel.parallelize(build_model(cfg, "meta"), pcfg, world1)
    parallel.materialize(model, world1, pcfg, seed=0)
    ids, positions, doc_ids = packed(cfg.vocab_size)
    model(ids, positions=positions, doc_ids=doc_ids).float().sum().backward()
    assert len(seen) == cfg.n_layers
    assert all(s == (torch.bfloat16, torch.float32, torch.float32) for s in seen), seen
    # pure bf16 parameters: the tables are rebuilt in fp32 after the cast
    pcfg = ParallelConfig(mixed_precision="pure_bf16")
    model = parallel.parallelize(build_model(cfg, "meta"), pcfg, world1)
    parallel.materialize(model, world1, pcfg, seed=0)
    assert model.rope_cos.dtype == torch.float32


def test_served_device_types():
    assert parallel.served_device_types("gloo") == {"cpu"}
    assert parallel.served_device_types("nccl") == {"cuda"}
    assert parallel.served_device_types("cpu:gloo,cuda:nccl") == {"cpu", "cuda"}

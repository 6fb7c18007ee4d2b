"""Model tests: shapes, parameter counts of the presets, causality, GQA, packed rows."""
import pytest
import torch
import torch.nn.functional as F

from ie_engine.engine.model.attention import attention, build_doc_mask
from ie_engine.engine.model.config import PRESETS
from ie_engine.engine.model.transformer import build_model

from helpers import make_model, tiny_model_config

PUBLISHED = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192}


tiny = tiny_model_config
make = make_model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_published(name):
    assert build_model(PRESETS[name], "meta").num_params() == PUBLISHED[name]


def test_ffn_hidden_rule():
    assert PRESETS["llama2-7b"].hidden_dim == 11008
    assert PRESETS["llama2-13b"].hidden_dim == 13824
    assert PRESETS["llama2-70b"].hidden_dim == 28672


def test_shapes_and_hidden_states():
    cfg = tiny()
    model = make(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 11))
    logits = model(x)
    assert logits.shape == (3, 11, cfg.vocab_size) and logits.dtype == torch.float32
    hidden, weight = model(x, head_fn=lambda h, w: (h, w))
    assert hidden.shape == (3 * 11, cfg.dim) and weight is model.output.weight
    torch.testing.assert_close(model.output(hidden).view(3, 11, -1), logits)


def test_init_is_deterministic_and_seeded():
    a, b, c = make(tiny(), 1), make(tiny(), 1), make(tiny(), 2)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), n
        if p.dim() == 2:
            assert not torch.equal(p, r), n


def test_causal_later_tokens_never_change_earlier_logits():
    cfg = tiny()
    model = make(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 15))
    y = x.clone()
    y[:, 9:] = torch.randint(0, cfg.vocab_size, (2, 6))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_gqa_equals_repeated_kv_heads():
    """A GQA model equals the same model with each k/v head repeated to n_heads (MHA)."""
    gqa_cfg, mha_cfg = tiny(n_kv_heads=2), tiny(n_kv_heads=6)
    gqa, mha = make(gqa_cfg), make(mha_cfg)
    sd = gqa.state_dict()
    rep = gqa_cfg.n_heads // gqa_cfg.n_kv_heads
    for k, v in list(sd.items()):
        if k.endswith(("wk.weight", "wv.weight")):
            heads = v.view(gqa_cfg.n_kv_heads, gqa_cfg.head_dim, -1)
            sd[k] = heads.repeat_interleave(rep, dim=0).reshape(-1, v.shape[-1])
    mha.load_state_dict(sd)
    x = torch.randint(0, gqa_cfg.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


def _packed_batch(lengths_per_row, vocab, T):
    B = len(lengths_per_row)
    ids = torch.randint(0, vocab, (B, T))
    positions = torch.zeros(B, T, dtype=torch.long)
    doc_ids = torch.full((B, T), -1, dtype=torch.long)
    docs, d = [], 0
    for b, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths:
            positions[b, start:start + n] = torch.arange(n)
            doc_ids[b, start:start + n] = d
            docs.append((b, start, n))
            start, d = start + n, d + 1
        positions[b, start:] = torch.arange(T - start)  # padding: its own "document"
    return ids, positions, doc_ids, docs


def test_packed_rows_equal_separate_documents():
    cfg = tiny()
    model = make(cfg)
    T = 23
    ids, positions, doc_ids, docs = _packed_batch([[7, 5, 9], [11, 3]], cfg.vocab_size, T)
    with torch.no_grad():
        packed = model(ids, positions=positions, doc_ids=doc_ids)
        for b, start, n in docs:
            alone = model(ids[b:b + 1, start:start + n])
            torch.testing.assert_close(packed[b, start:start + n], alone[0], rtol=1e-5, atol=1e-5)


def test_positions_without_doc_ids_is_an_error():
    cfg = tiny()
    with pytest.raises(ValueError, match="doc_ids"):
        make(cfg)(torch.zeros(1, 4, dtype=torch.long), positions=torch.zeros(1, 4, dtype=torch.long))


def _backends():
    out = ["sdpa", "flex"]  # FlexAttention's forward runs on CPU too (no backward there)
    if torch.cuda.is_available():
        from ie_engine.engine.model.attention import flash_attn_varlen_func
        if flash_attn_varlen_func is not None:
            out.append("flash")
    return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", _backends())
def test_every_backend_matches_per_document_attention(backend):
    """Packed attention on each backend equals plain causal attention per document."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and backend == "flash" else torch.float32
    torch.manual_seed(0)
    B, T, Hq, Hk, D = 2, 37, 6, 2, 16
    q, k, v = (torch.randn(B, T, h, D, device=device, dtype=dtype) for h in (Hq, Hk, Hk))
    _, _, doc_ids, docs = _packed_batch([[10, 17, 4], [30]], 5, T)
    doc_ids = doc_ids.to(device)
    out = attention(q, k, v, build_doc_mask(backend, doc_ids, T, q.device))
    for b, start, n in docs:
        sl = slice(start, start + n)
        qd, kd, vd = (t[b:b + 1, sl].transpose(1, 2).float() for t in (q, k, v))
        kd, vd = (t.repeat_interleave(Hq // Hk, dim=1) for t in (kd, vd))
        ref = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True).transpose(1, 2)[0]
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(out[b, sl].float(), ref, rtol=tol, atol=tol)


def test_packed_gradients_equal_separate_documents():
    cfg = tiny()
    model = make(cfg).train()
    T = 19
    ids, positions, doc_ids, docs = _packed_batch([[8, 11]], cfg.vocab_size, T)
    model(ids, positions=positions, doc_ids=doc_ids)[0, :T].sum().backward()
    packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for b, start, n in docs:
        model(ids[b:b + 1, start:start + n]).sum().backward()
    for g, p in zip(packed, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_causal_mask_is_built_once_per_length_not_per_layer(monkeypatch):
    """Rows without doc_ids (padded batches): one causal BlockMask per sequence length, shared by
    every layer and every later forward (each build is a compiled call on CUDA), and the flex
    forward equals SDPA's causal one."""
    from torch.nn.attention import flex_attention as flex_mod

    from ie_engine.engine.model import attention as attn_mod

    def clear_caches():  # module-level caches of built masks and of the (compiled) builder
        for name in ("_causal_block_mask", "_block_mask_builder"):
            getattr(getattr(attn_mod, name, None), "cache_clear", lambda: None)()

    clear_caches()
    builds = []
    real = flex_mod.create_block_mask
    monkeypatch.setattr(flex_mod, "create_block_mask", lambda *a, **kw: builds.append(a[3]) or real(*a, **kw))
    cfg = tiny(n_layers=3)
    model = make(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 37))
    with torch.no_grad():
        want = model(x)  # sdpa, the CPU default
        model.attn_backend = "flex"
        got = [model(x), model(x[:1]), model(x[:, :29])]
    assert builds == [37, 29]  # not once per layer (3), nor once per forward
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[:, :29], rtol=1e-5, atol=1e-5)
    clear_caches()

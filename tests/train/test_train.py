"""The train step's losses: packed rows equal unpacked documents (SFT and DPO log-probs), and
the step normalisation makes k micro-batches equal one k-times-larger batch."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.run_config import OptimConfig
from ie_engine.engine.train.losses import score_documents, sft_loss
from ie_engine.engine.train.optim import build_optimizer, build_scheduler
from ie_engine.engine.train.step import train_step


def tiny_model(seed=0):
    model = build_model(ModelConfig(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=97,
                                    multiple_of=16, max_seq_len=64), "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def packed_batch(doc_lengths, T, vocab=97, seed=0):
    """One row per list of doc lengths; random targets mask; labels pre-shifted per document."""
    g = torch.Generator().manual_seed(seed)
    B = len(doc_lengths)
    batch = {k: torch.zeros(B, T, dtype=torch.long) for k in ("input_ids", "positions")}
    batch["labels"] = torch.full((B, T), -100, dtype=torch.long)
    batch["doc_ids"] = torch.full((B, T), -1, dtype=torch.long)
    docs, d = [], 0
    for b, lengths in enumerate(doc_lengths):
        s = 0
        for n in lengths:
            ids = torch.randint(0, vocab, (n,), generator=g)
            target = torch.rand(n, generator=g) < 0.7
            batch["input_ids"][b, s:s + n] = ids
            batch["positions"][b, s:s + n] = torch.arange(n)
            batch["doc_ids"][b, s:s + n] = d
            batch["labels"][b, s:s + n - 1] = torch.where(target[1:], ids[1:], -100)
            docs.append((b, s, n))
            s, d = s + n, d + 1
        batch["positions"][b, s:] = torch.arange(T - s)
    batch["num_docs"] = d
    return batch, docs


def test_sft_packed_loss_equals_unpacked_documents():
    model = tiny_model()
    batch, docs = packed_batch([[9, 14, 5], [20, 7]], T=31)
    n_valid = (batch["labels"] != -100).sum()
    packed, _ = sft_loss(model, batch, n_valid)
    total = 0.0
    for b, s, n in docs:
        logits = model(batch["input_ids"][b:b + 1, s:s + n])[0]
        total = total + F.cross_entropy(logits, batch["labels"][b, s:s + n], ignore_index=-100, reduction="sum")
    torch.testing.assert_close(packed, total / n_valid, rtol=1e-5, atol=1e-6)


def test_score_documents_equal_unpacked_documents():
    model = tiny_model()
    batch, docs = packed_batch([[9, 14, 5], [20, 7]], T=31, seed=1)
    got = score_documents(model, batch)
    for d, (b, s, n) in enumerate(docs):
        logp = model(batch["input_ids"][b:b + 1, s:s + n])[0].log_softmax(-1)
        labels = batch["labels"][b, s:s + n]
        ok = labels != -100
        want = logp[ok].gather(1, labels[ok][:, None]).sum()
        torch.testing.assert_close(got[d], want, rtol=1e-5, atol=1e-5)


def test_accumulation_equals_one_big_batch():
    big, _ = packed_batch([[9, 14, 5], [20, 7], [30], [12, 12]], T=31, seed=2)
    halves = [{k: (v[i:i + 2] if torch.is_tensor(v) else v) for k, v in big.items()} for i in (0, 2)]
    count = lambda b: int((b["labels"] != -100).sum())  # noqa: E731
    results = []
    for micro in ([big], halves):
        model = tiny_model()
        opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1, warmup_ratio=0.0))
        sched = build_scheduler(opt, OptimConfig(warmup_ratio=0.0), total_steps=3)
        outs = [train_step(model, opt, sched, micro, sft_loss, count, 1.0) for _ in range(3)]
        results.append((outs, copy.deepcopy(model.state_dict())))
    (a, sa), (b, sb) = results
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-4)  # Adam turns rounding of ~0 grads into steps up to lr


def test_weight_decay_only_on_matrices_and_schedules():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for schedule in ("cosine", "linear"):
        cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_ratio=0.1)
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg, total_steps=100)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)   # linear warmup over 10 steps
        assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))   # then decays
        assert lrs[-1] < 0.02

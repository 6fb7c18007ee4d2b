"""engine/train/losses.py's preference losses against their formulas in float64 (on per-document sums
and target-token counts of a packed batch), and against TRL's DPOTrainer where TRL has the same
loss (ipo on per-token averages, sigmoid_norm = dpo_norm, sigmoid + sft = RPO)."""
import collections
import types

import pytest
import torch
import torch.nn.functional as F

from ie_engine.engine.run_config import PREFERENCE_LOSSES, DPOSection
from ie_engine.engine.train.losses import preference_loss

P = 5


def fake_batch(gen):
    """2P documents with random lengths; a model stand-in returns their summed log-probs."""
    counts = torch.randint(3, 9, (2 * P,), generator=gen)
    doc_ids = torch.repeat_interleave(torch.arange(2 * P), counts)[None]  # (1, N)
    labels = torch.ones_like(doc_ids)
    sums = -torch.rand(2 * P, generator=gen, dtype=torch.float64) * counts * 2
    ref = sums + 0.3 * torch.randn(2 * P, generator=gen, dtype=torch.float64)
    batch = {"input_ids": doc_ids, "labels": labels, "doc_ids": doc_ids, "positions": doc_ids, "num_docs": 2 * P,
             "ref_logps": ref.float()}
    return batch, sums, ref, counts.double()


def run(loss_type, **kw):
    gen = torch.Generator().manual_seed(7)
    batch, sums, ref, counts = fake_batch(gen)
    policy = sums.float().clone().requires_grad_()

    def model(input_ids, head_fn=None, **_):
        return policy

    dpo = DPOSection(loss_type=loss_type, **kw)
    loss, stats = preference_loss(model, batch, torch.tensor(float(P)), dpo)
    return loss, stats, policy, sums, ref, counts


def expected(loss_type, sums, ref, counts, beta=0.1, gamma=0.5, ls=0.0):
    avg = PREFERENCE_LOSSES[loss_type][1]
    pol, rf = (sums / counts, ref / counts) if avg else (sums, ref)
    h = (pol[0::2] - pol[1::2]) - (0 if loss_type == "simpo" else (rf[0::2] - rf[1::2]))
    if loss_type in ("sigmoid", "dpo_norm"):
        return (-F.logsigmoid(beta * h) * (1 - ls) - F.logsigmoid(-beta * h) * ls).mean()
    if loss_type == "simpo":
        return -F.logsigmoid(beta * h - gamma).mean()
    if loss_type == "ipo":
        return ((h - 1 / (2 * beta)) ** 2).mean()
    if loss_type == "hinge":
        return torch.relu(1 - beta * h).mean()
    return ((-F.logsigmoid(beta * h) * (1 - ls) + F.logsigmoid(-beta * h) * ls) / (1 - 2 * ls)).mean()


@pytest.mark.parametrize("loss_type", sorted(PREFERENCE_LOSSES))
def test_matches_float64_formula(loss_type):
    loss, _, _, sums, ref, counts = run(loss_type)
    torch.testing.assert_close(loss.double(), expected(loss_type, sums, ref, counts), rtol=2e-6, atol=1e-7)


def test_rpo_adds_length_normalised_chosen_nll():
    base = run("sigmoid")[0]
    loss, stats, _, sums, ref, counts = run("sigmoid", rpo_alpha=0.7)
    nll = -(sums[0::2] / counts[0::2])
    torch.testing.assert_close(loss.double(), base.double() + 0.7 * nll.mean(), rtol=2e-6, atol=1e-7)
    assert "chosen_nll" in stats


def test_simpo_needs_no_reference():
    gen = torch.Generator().manual_seed(7)
    batch, sums, _, counts = fake_batch(gen)
    del batch["ref_logps"]
    loss, _ = preference_loss(lambda input_ids, head_fn=None, **_: sums.float(), batch, torch.tensor(float(P)),
                              DPOSection(loss_type="simpo", beta=2.0, simpo_gamma=1.0))
    torch.testing.assert_close(loss.double(), expected("simpo", sums, sums, counts, beta=2.0, gamma=1.0),
                               rtol=2e-6, atol=1e-7)


def trl_loss(loss_types, weights, sums, ref, counts, beta=0.1):
    """TRL 1.x DPOTrainer._compute_loss fed per-token log-probs whose sums are ours: each document's
    sum is spread evenly over its target tokens, padded to the longest."""
    from trl.trainer.dpo_trainer import DPOTrainer
    n = int(counts.max())
    order = torch.cat([torch.arange(0, 2 * P, 2), torch.arange(1, 2 * P, 2)])  # TRL: chosen..., rejected...
    mask = (torch.arange(n)[None] < counts[order][:, None]).long()
    log_probs = (sums[order] / counts[order])[:, None].float() * mask
    log_probs.requires_grad_()

    def model(**kwargs):
        z = torch.zeros(2 * P, n)
        return types.SimpleNamespace(log_probs=log_probs, entropy=z, mean_logits=z, is_top1=z.bool())

    model.training = False
    same = lambda t: t  # noqa: E731
    trainer = types.SimpleNamespace(
        model=model, accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=loss_types, loss_weights=weights, beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * P, n + 1, dtype=torch.long), "attention_mask": torch.ones(2 * P, n + 1, dtype=torch.long),
              "completion_mask": torch.cat([torch.zeros(2 * P, 1, dtype=torch.long), mask], 1),
              "ref_chosen_logps": ref[0::2].float(), "ref_rejected_logps": ref[1::2].float()}
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.parametrize("ours, theirs", [("ipo", "ipo"), ("dpo_norm", "sigmoid_norm")])
def test_matches_trl(ours, theirs):
    pytest.importorskip("trl", minversion="1.0")
    loss, _, _, sums, ref, counts = run(ours)
    try:
        expect = trl_loss([theirs], [1.0], sums, ref, counts)
    except (AttributeError, TypeError, KeyError) as e:  # TRL's internals moved
        pytest.skip(f"TRL's DPOTrainer._compute_loss changed: {e}")
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)

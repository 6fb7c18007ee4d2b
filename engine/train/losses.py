"""The training losses on the fused head (no full logits): SFT cross-entropy and the preference
losses, plus `score_documents`, the per-document log-prob sums both DPO and its reference pass use.

Preference losses (dpo.loss_type; PREFERENCE_LOSSES is the one vocabulary), all through the
fused DPO kernel (kernels/dpo_loss.py) on per-document log-probs from the packed rows:
  sigmoid   DPO on summed log-probs (with dpo.label_smoothing: conservative DPO, cDPO)
  robust    robust DPO (Chowdhury et al.) on sums
  hinge     SLiC-style hinge on sums
  ipo       IPO on per-token AVERAGE log-probs (its definition; TRL's "ipo"): (h - 1/(2 beta))^2
  dpo_norm  DPO on per-token averages (open-instruct's default; TRL's "sigmoid_norm")
  simpo     SimPO: reference-free, -log sigmoid(beta (avg_c - avg_r) - gamma); no reference pass
and dpo.rpo_alpha > 0 adds RPO's NLL term on the chosen answers, alpha x (-log p(chosen) /
its target tokens), averaged over pairs. Token counts per document are the target tokens of the
packed rows (labels != -100), so few-shot demonstration answers, which are trained too, count.

Normalisation: SFT's loss is the sum of token losses divided by the number of valid target
tokens of the WHOLE step (all micro-batches, all ranks), and DPO's the sum of pair losses over
the step's pairs, so k micro-batches equal one batch k times larger and N ranks equal one
process. That needs gradients SUMMED over ranks, which engine/parallel.py sets FSDP to do.

Each loss returns (loss, stats): stats are sums over this micro-batch that the train step
totals over the step and divides by the step's count; the loop logs them under these names.
"""
from __future__ import annotations

import torch

from ie_engine.engine.run_config import PREFERENCE_LOSSES, DPOSection
from ie_engine.engine.train.batching import model_inputs
from ie_engine.kernels.cross_entropy import fused_linear_cross_entropy
from ie_engine.kernels.dpo_loss import dpo_loss
from ie_engine.kernels.fused_linear_logprob import fused_linear_logprob, sequence_logps


def sft_loss(model, batch: dict, num_valid_tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy summed over this micro-batch's valid tokens / the step's valid tokens."""
    labels = batch["labels"].flatten()

    def head(hidden, weight):  # (N, dim), (V, dim)
        return fused_linear_cross_entropy(hidden, weight, labels, num_valid_tokens=num_valid_tokens)

    loss = model(batch["input_ids"], head_fn=head, **model_inputs(batch))
    return loss, {}


def score_documents(model, batch: dict) -> torch.Tensor:
    """Summed log-probs of every document's targets: (num_docs,) fp32, through the fused head."""
    labels, doc_ids = batch["labels"].flatten(), batch["doc_ids"].flatten()

    def head(hidden, weight):
        return sequence_logps(fused_linear_logprob(hidden, weight, labels), doc_ids,
                                      batch["num_docs"])

    return model(batch["input_ids"], head_fn=head, **model_inputs(batch))


def document_token_counts(batch: dict) -> torch.Tensor:
    """Target tokens of every document of the batch: (num_docs,) float."""
    labels, doc_ids = batch["labels"].flatten(), batch["doc_ids"].flatten()
    valid = labels != -100
    return torch.bincount(doc_ids[valid], minlength=batch["num_docs"]).float()


def preference_loss(model, batch: dict, num_pairs: torch.Tensor, dpo: DPOSection) -> tuple[torch.Tensor, dict]:
    """Sum of pair losses / the step's pair count. batch["ref_logps"] (num_docs,) holds the
    reference model's summed log-probs (from the cache, or a frozen model) in the same order:
    chosen at even positions, rejected at odd ones (absent for the reference-free simpo)."""
    kernel_loss, average, reference_free = PREFERENCE_LOSSES[dpo.loss_type]
    logps = score_documents(model, batch)  # (2P,) summed log-probs
    counts = document_token_counts(batch).to(logps.device).clamp(min=1.0)
    policy = logps / counts if average else logps
    if reference_free:  # simpo: beta * (c - gamma / beta - r) = beta (c - r) - gamma
        ref = torch.zeros_like(policy)
        ref[0::2] = dpo.simpo_gamma / dpo.beta
    else:
        ref = batch["ref_logps"].to(logps.device, torch.float32)
        ref = ref / counts if average else ref
    losses, chosen, rejected = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], beta=dpo.beta,
                                                loss_type=kernel_loss, label_smoothing=dpo.label_smoothing)
    if reference_free:
        chosen = chosen + dpo.simpo_gamma  # report SimPO's implicit reward beta * avg_c, without the margin
    stats = {"reward_accuracy": (chosen > rejected).float().sum(), "reward_margin": (chosen - rejected).sum(),
             "chosen_reward": chosen.sum(), "rejected_reward": rejected.sum()}
    if dpo.rpo_alpha > 0:
        nll = -(logps[0::2] / counts[0::2])  # (P,) per-token NLL of each chosen answer
        losses = losses + dpo.rpo_alpha * nll
        stats["chosen_nll"] = nll.detach().sum()
    return losses.sum() / num_pairs, stats

"""The training losses on the fused head (no full logits): SFT cross-entropy and the DPO
preference loss, plus `score_documents`, the per-document log-prob sums both DPO and its
reference pass use.

Normalisation: SFT's loss is the sum of token losses divided by the number of valid target
tokens of the WHOLE step (all micro-batches, all ranks), and DPO's the sum of pair losses over
the step's pairs, so k micro-batches equal one batch k times larger and N ranks equal one
process. That needs gradients SUMMED over ranks, which engine/parallel.py sets FSDP to do.

Each loss returns (loss, stats): stats are sums over this micro-batch that the train step
totals over the step and divides by the step's count; the loop logs them under these names.
"""
from __future__ import annotations

import torch

import kernels
from engine.batching import model_inputs
from engine.run_config import DPOSection


def sft_loss(model, batch: dict, num_valid_tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy summed over this micro-batch's valid tokens / the step's valid tokens."""
    labels = batch["labels"].flatten()

    def head(hidden, weight):  # (N, dim), (V, dim)
        return kernels.fused_linear_cross_entropy(hidden, weight, labels, num_valid_tokens=num_valid_tokens)

    loss = model(batch["input_ids"], head_fn=head, **model_inputs(batch))
    return loss, {}


def score_documents(model, batch: dict) -> torch.Tensor:
    """Summed log-probs of every document's targets: (num_docs,) fp32, through the fused head."""
    labels, doc_ids = batch["labels"].flatten(), batch["doc_ids"].flatten()

    def head(hidden, weight):
        return kernels.sequence_logps(kernels.fused_linear_logprob(hidden, weight, labels), doc_ids,
                                      batch["num_docs"])

    return model(batch["input_ids"], head_fn=head, **model_inputs(batch))


def preference_loss(model, batch: dict, num_pairs: torch.Tensor, dpo: DPOSection) -> tuple[torch.Tensor, dict]:
    """Sum of pair losses / the step's pair count. batch["ref_logps"] (num_docs,) holds the
    reference model's summed log-probs (from the cache, or a frozen model) in the same order:
    chosen at even positions, rejected at odd ones."""
    logps = score_documents(model, batch)
    ref = batch["ref_logps"].to(logps.device, torch.float32)
    losses, chosen, rejected = kernels.dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta=dpo.beta,
                                                loss_type=dpo.loss_type, label_smoothing=dpo.label_smoothing)
    stats = {"reward_accuracy": (chosen > rejected).float().sum(), "reward_margin": (chosen - rejected).sum(),
             "chosen_reward": chosen.sum(), "rejected_reward": rejected.sum()}
    return losses.sum() / num_pairs, stats

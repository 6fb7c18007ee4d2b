"""bench_train_step's baseline losses: the unfused logits head, transformers' padded
cross-entropy, and TRL's DPO loss paths (its logits path written from its definition, so the
ratio exists where trl is not installed).
"""
from __future__ import annotations

import types
from collections import defaultdict

import torch
import torch.nn.functional as F

from ie_engine.bench.train_step_data import BETA, IGNORE, have
from ie_engine.engine.train.losses import sft_loss



# ----------------------------------------------------------------------------- losses

def logits_ce_loss(model, batch: dict, num_valid: torch.Tensor):
    """The unfused head: (B, T, V) fp32 logits, then cross-entropy summed / the step's count."""
    logits = model(batch["input_ids"], batch.get("positions"), batch.get("doc_ids"))  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum")
    return loss / num_valid, {}


def padded_sft_loss(model, batch: dict, num_valid: torch.Tensor):
    """Ours on right-padded rows: plain causal attention (pads come after every real token)."""
    return sft_loss(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]}, num_valid)


def hf_sft_loss(hf, batch: dict, num_valid: torch.Tensor):
    out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["hf_labels"],
             num_items_in_batch=num_valid, use_cache=False)
    return out.loss, {}


def selective_log_softmax_by_definition(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's selective_log_softmax by its definition, log_softmax(logits)[..., index], computed
    one sequence at a time as TRL does (so only one sequence's (T, V) log-softmax is live at
    once): logits (B, T, V), index (B, T) -> (B, T) in the logits' dtype."""
    return torch.stack([F.log_softmax(row, dim=-1).gather(-1, idx[:, None])[:, 0] for row, idx in zip(logits, index)])


def selective_log_softmax():
    """TRL's own when trl is installed, else the same computation written here."""
    if have("trl"):
        from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax
        return trl_selective_log_softmax
    return selective_log_softmax_by_definition


def trl_logits_dpo_loss(hf, batch: dict, num_pairs: torch.Tensor):
    """TRL's concatenated forward before its fused head (TRL <= 0.2x, what ADELIE ran): full
    logits, TRL's selective_log_softmax on the completion tokens, summed per sequence, then
    TRL's sigmoid loss -logsigmoid(beta * ((pc - rc) - (pr - rr)))."""
    logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["input_ids"][:, 1:]                                      # (2P, T-1)
    mask = batch["completion_mask"][:, 1:].bool()
    per_token = selective_log_softmax()(logits[:, :-1], labels.masked_fill(~mask, 0))  # (2P, T-1)
    logps = (per_token * mask).sum(-1)                                      # (2P,)
    chosen, rejected = logps.chunk(2)
    logits_dpo = (chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"])
    losses = -F.logsigmoid(BETA * logits_dpo)
    return losses.sum() / num_pairs, {}


def trl_fused_dpo_loss(hf, batch: dict, num_pairs: torch.Tensor):
    """Installed TRL's DPOTrainer._compute_loss (sigmoid, precomputed reference log-probs) on a
    stand-in trainer: the model must already carry add_fused_lm_head (see build_cases)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    identity = lambda t: t  # noqa: E731
    trainer = types.SimpleNamespace(
        model=hf, accelerator=types.SimpleNamespace(device=batch["input_ids"].device, gather=identity,
                                                    gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=BETA, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask", "ref_chosen_logps",
                                    "ref_rejected_logps")}
    mean = DPOTrainer._compute_loss(trainer, hf, inputs, return_outputs=False)  # mean over this batch's pairs
    return mean * (batch["input_ids"].shape[0] // 2) / num_pairs, {}

"""Triton kernels, each beside its PyTorch reference (one kernel per file).

Public functions run their Triton kernels on CUDA tensors and their PyTorch references on CPU
tensors (the rule is kernels._dispatch.use_triton). Without Triton installed (it ships for
Linux only) everything imports and the references run everywhere.
"""
from kernels.rms_norm import rms_norm, rms_norm_ref  # noqa: E402
from kernels.rope import apply_rope, apply_rope_ref  # noqa: E402
from kernels.swiglu import swiglu, swiglu_ref  # noqa: E402
from kernels.dpo_loss import dpo_loss, dpo_loss_ref  # noqa: E402
from kernels.fused_linear_logprob import fused_linear_logprob, fused_linear_logprob_ref, sequence_logps  # noqa: E402
from kernels.cross_entropy import fused_linear_cross_entropy, fused_linear_cross_entropy_ref  # noqa: E402

"""Where a public kernel function runs: the one dispatch rule, and the one import of Triton.

The rule is `use_triton(x)`, read once per call by each public function (its autograd backward
reuses the answer):

    CUDA tensor, Triton importable   -> True:  the Triton kernels
    CUDA tensor, no Triton           -> False: the PyTorch reference, after a one-time warning
    any other tensor (CPU)           -> False: the PyTorch reference (the spec and the CPU path)

Nothing else changes it: no environment variable, no global switch. Tests run the Triton kernels
on CPU tensors through Triton's interpreter by replacing `use_triton` with a spy
(tests/kernels/conftest.py); Triton builds its kernels for the interpreter only when
TRITON_INTERPRET=1 is set before it is imported (tests/conftest.py does that on machines without
CUDA), so kernel modules look the rule up as `_dispatch.use_triton` at call time.

Triton ships for Linux only (pyproject.toml). Without it `import kernels` still works: `triton`
below is then a stand-in whose `jit` keeps the plain function (never launched, since the rule
never says True) and `tl` is None (kernel files use `from __future__ import annotations`, so
`tl.constexpr` annotations are never evaluated).
"""
from __future__ import annotations

import functools
import types
import warnings

import torch

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # macOS / Windows, or not installed
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = None
    HAS_TRITON = False

PUBLIC_OPS = "rms_norm, apply_rope, swiglu, dpo_loss, fused_linear_logprob and fused_linear_cross_entropy"


def use_triton(x: torch.Tensor) -> bool:
    """True when the op on x runs its Triton kernels: x is a CUDA tensor and Triton is installed."""
    if not x.is_cuda:
        return False
    if not HAS_TRITON:
        _warn_no_triton()
        return False
    return True


@functools.cache
def _warn_no_triton() -> None:
    warnings.warn(
        f"kernels: Triton is not installed, so {PUBLIC_OPS} run their PyTorch references on CUDA "
        "tensors: eager and unfused, i.e. slower, and RMSNorm/RoPE/SwiGLU keep more activations "
        "for backward (the fused lm-head still chunks, so its logits stay within its memory "
        "budget). bench/ measures the kernels against these references. Install Triton (Linux: "
        "pip install triton) to use the kernels.", RuntimeWarning, stacklevel=3)

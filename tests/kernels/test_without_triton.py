"""The kernels imported where Triton cannot be imported (pyproject.toml installs it on Linux only):
every public op runs on CPU through its reference, and a CUDA tensor that would have taken the
Triton path gets one warning saying what falls back. Runs in a subprocess whose import system
refuses `triton`, so this process's own Triton stays untouched."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys, types, warnings

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "triton":
                raise ImportError(f"No module named {name!r} (refused by the test)")

    sys.meta_path.insert(0, NoTriton())
    import torch
    from ie_engine.kernels import _dispatch
    from ie_engine.kernels.cross_entropy import fused_linear_cross_entropy, fused_linear_cross_entropy_ref
    from ie_engine.kernels.dpo_loss import dpo_loss, dpo_loss_ref
    from ie_engine.kernels.fused_linear_logprob import fused_linear_logprob, fused_linear_logprob_ref, sequence_logps
    from ie_engine.kernels.rms_norm import rms_norm, rms_norm_ref
    from ie_engine.kernels.rope import apply_rope, apply_rope_ref
    from ie_engine.kernels.swiglu import swiglu, swiglu_ref

    assert not _dispatch.HAS_TRITON and "triton" not in sys.modules
    torch.manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64).requires_grad_()

    def same(fn, ref, *args, **kwargs):
        """fn and its reference agree on outputs and on gradients of all leaf inputs."""
        outs = [fn(*args, **kwargs), ref(*args, **kwargs)]
        outs = [out if isinstance(out, tuple) else (out,) for out in outs]
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        for got, want in zip(*outs):
            torch.testing.assert_close(got, want, check_dtype=False, rtol=1e-5, atol=1e-6)
        grads = [torch.autograd.grad(sum(o.sum() for o in out if o.requires_grad), leaves) for out in outs]
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, check_dtype=False, rtol=1e-5, atol=1e-6)

    x, w = leaf(5, 16), leaf(16)
    same(rms_norm, rms_norm_ref, x, w, 1e-5)
    q, k = leaf(2, 3, 4, 8), leaf(2, 3, 2, 8)
    angles = torch.outer(torch.arange(10.0), torch.rand(4)).double()
    same(apply_rope, apply_rope_ref, q, k, angles.cos(), angles.sin())
    same(swiglu, swiglu_ref, leaf(5, 7), leaf(5, 7))
    same(dpo_loss, dpo_loss_ref, leaf(4), leaf(4), torch.randn(4), torch.randn(4))
    hidden, weight, labels = leaf(9, 16), leaf(50, 16), torch.randint(0, 50, (9,))
    labels[2] = -100
    same(fused_linear_logprob, fused_linear_logprob_ref, hidden, weight, labels)
    same(fused_linear_cross_entropy, fused_linear_cross_entropy_ref, hidden, weight, labels)
    logps = sequence_logps(fused_linear_logprob(hidden, weight, labels),
                                   torch.tensor([0, 0, 0, 1, 1, -1, 2, 2, 2]), 3)
    assert logps.shape == (3,) and logps.isfinite().all()

    cuda_tensor = types.SimpleNamespace(is_cuda=True)  # what use_triton reads of a CUDA tensor
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _dispatch.use_triton(cuda_tensor) is False
        assert _dispatch.use_triton(cuda_tensor) is False
    assert len(caught) == 1, [str(c.message) for c in caught]
    message = str(caught[0].message)
    assert "Triton is not installed" in message and "fused_linear_logprob" in message, message
    print("ok")
''')


def test_kernels_import_and_run_without_triton():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr

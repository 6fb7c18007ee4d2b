"""The paths a kernel test runs on, and a spy that proves the Triton kernels ran on them.

    cpu-interpret   CPU tensors; the public function is told to take its Triton path (the
                    dispatch rule, ie_engine.kernels._dispatch.use_triton, is replaced by a spy that says
                    True for CPU tensors) and the kernels run in Triton's interpreter. That needs
                    them built for it: TRITON_INTERPRET=1 before triton is imported, which
                    tests/conftest.py sets without CUDA. On a CUDA machine run
                    `TRITON_INTERPRET=1 pytest tests/kernels` for this path (the kernels are then
                    not compiled, so cuda-compiled skips).
    cuda-compiled   CUDA tensors, the real dispatch rule, the compiled kernels. Marked gpu.
    cpu-torch       CPU tensors, the real rule: the PyTorch reference path (for the fused
                    head, its chunked PyTorch twin of the Triton row kernels).

Fixtures: `path` (cpu-interpret, cuda-compiled), `path_or_torch` (all three), `cuda_path`
(cuda-compiled only, for GPU-sized cases). Each yields a `KernelPath`: put inputs on `path.device`
and end with `path.assert_ran("_<op>_fwd_kernel", ...)`, which checks that those kernels were
launched on that device in that mode (compiled or interpreted), or for cpu-torch that no kernel
was launched at all.
"""
import dataclasses
import importlib

import pytest
import torch

from ie_engine.kernels import _dispatch

KERNEL_MODULES = ["ie_engine.kernels.rms_norm", "ie_engine.kernels.rope", "ie_engine.kernels.swiglu", "ie_engine.kernels.dpo_loss",
                  "ie_engine.kernels.fused_linear_logprob"]


def kernels_interpreted() -> bool:
    """Whether Triton built this process's kernels for its interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(importlib.import_module("ie_engine.kernels.rms_norm")._rms_norm_fwd_kernel, InterpretedFunction)


@dataclasses.dataclass
class KernelPath:
    name: str
    device: str
    launches: list = dataclasses.field(default_factory=list)  # (kernel, "compiled"/"interpreted", device)
    dispatched: list = dataclasses.field(default_factory=list)  # use_triton's answers

    @property
    def triton(self) -> bool:
        return self.name != "cpu-torch"

    def assert_dispatched(self) -> None:
        """The public function asked the rule and got this path's answer (for calls that launch
        nothing, e.g. an empty batch)."""
        assert self.dispatched and all(d == self.triton for d in self.dispatched), (self.name, self.dispatched)

    def assert_ran(self, *kernels: str) -> None:
        self.assert_dispatched()
        if not self.triton:
            assert not self.launches, f"cpu-torch launched Triton kernels: {self.launches}"
            return
        mode = "interpreted" if self.name == "cpu-interpret" else "compiled"
        for name in kernels:
            runs = [(m, d) for k, m, d in self.launches if k == name]
            assert runs, f"{name} never ran on {self.name} (launched: {sorted({k for k, _, _ in self.launches})})"
            assert all(r == (mode, self.device) for r in runs), (name, runs)


class _LaunchSpy:
    """Stands in for a kernel object in its module: kernel[grid](*args) records, then launches."""

    def __init__(self, name, kernel, path):
        self.name, self.kernel, self.path = name, kernel, path

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
            mode = "interpreted" if type(self.kernel).__name__ == "InterpretedFunction" else "compiled"
            self.path.launches.append((self.name, mode, device))
            return launch(*args, **kwargs)
        return run


def _enter(name: str, monkeypatch) -> KernelPath:
    if name != "cpu-torch" and not _dispatch.HAS_TRITON:
        pytest.skip("Triton is not installed")
    if name == "cpu-interpret" and not kernels_interpreted():
        pytest.skip("the kernels were compiled for CUDA in this process; TRITON_INTERPRET=1 pytest tests/kernels "
                    "runs them in the interpreter")
    if name == "cuda-compiled" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if name == "cuda-compiled" and kernels_interpreted():
        pytest.skip("the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 at import)")
    path = KernelPath(name, "cuda" if name == "cuda-compiled" else "cpu")
    real_rule = _dispatch.use_triton

    def use_triton(x):
        answer = True if name == "cpu-interpret" and not x.is_cuda else real_rule(x)
        path.dispatched.append(answer)
        return answer

    monkeypatch.setattr(_dispatch, "use_triton", use_triton)
    if _dispatch.HAS_TRITON:
        from triton.runtime import KernelInterface
        for module_name in KERNEL_MODULES:
            module = importlib.import_module(module_name)
            for attr, obj in list(vars(module).items()):
                if attr.endswith("_kernel") and isinstance(obj, KernelInterface):
                    monkeypatch.setattr(module, attr, _LaunchSpy(attr, obj, path))
    return path


TRITON_PATHS = ["cpu-interpret", pytest.param("cuda-compiled", marks=pytest.mark.gpu)]


@pytest.fixture(params=TRITON_PATHS)
def path(request, monkeypatch) -> KernelPath:
    return _enter(request.param, monkeypatch)


@pytest.fixture(params=TRITON_PATHS + ["cpu-torch"])
def path_or_torch(request, monkeypatch) -> KernelPath:
    return _enter(request.param, monkeypatch)


@pytest.fixture
def cuda_path(monkeypatch) -> KernelPath:
    return _enter("cuda-compiled", monkeypatch)

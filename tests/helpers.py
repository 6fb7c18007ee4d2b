"""Small helpers shared by tests in several folders."""
import numpy as np
import torch


def rel_err(a, b) -> float:
    """Max abs error of a against the reference b, scaled by b's largest magnitude (float64).
    Takes tensors (any device, dtype or grad state), arrays or numbers."""
    a, b = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
            for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

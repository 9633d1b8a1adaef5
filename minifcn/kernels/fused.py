"""Element-wise updates fused into one CUDA kernel each (``cupy.ElementwiseKernel``).

On the GPU a training step is bound by how many kernels Python launches, not by their
arithmetic: written as NumPy-style array expressions, SGD with momentum and weight decay
launches four kernels per parameter and Adam eight. These do each update in one pass,
with exactly the formulas of :mod:`minifcn.optim` (whose NumPy code is the reference the
GPU tests hold them to). Without a GPU, ``tests/test_kernels_emulated.py`` compiles the
same operation text for the CPU and holds it to torch.optim.
"""
from __future__ import annotations

# name -> cupy.ElementwiseKernel's (in_params, out_params, operation, name): every array
# argument is one element of the update, ``T`` the parameters' dtype
SPECS = {
    "sgd": ("T g, T lr, T mu, T wd", "T w, T v",
            "T d = g + wd * w; v = mu * v + d; w -= lr * v;",
            "minifcn_sgd_update"),
    "adam": ("T g, T lr_c1, T b1, T b2, T c2, T eps, T wd", "T w, T m, T v",
             "T d = g + wd * w;"
             "m = b1 * m + (1 - b1) * d;"
             "v = b2 * v + (1 - b2) * d * d;"
             "w -= lr_c1 * m / (sqrt(v / c2) + eps);",
             "minifcn_adam_update"),
}
_KERNELS = {}


def _kernel(name):
    if name not in _KERNELS:
        import cupy
        _KERNELS[name] = cupy.ElementwiseKernel(*SPECS[name])
    return _KERNELS[name]


def sgd_update(w, v, g, lr, momentum, weight_decay):
    """In place: ``v = mu*v + (g + wd*w); w -= lr*v``."""
    t = w.dtype.type
    _kernel("sgd")(g, t(lr), t(momentum), t(weight_decay), w, v)


def adam_update(w, m, v, g, lr, b1, b2, step, eps, weight_decay):
    """In place: Adam's moments and bias-corrected step (``step`` counts from 1)."""
    t = w.dtype.type
    c1, c2 = 1 - b1 ** step, 1 - b2 ** step
    _kernel("adam")(g, t(lr / c1), t(b1), t(b2), t(c2), t(eps), t(weight_decay), w, m, v)

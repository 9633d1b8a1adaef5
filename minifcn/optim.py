r"""Optimisers and learning-rate schedules. Each updates a model's parameters in place from
``model.grads``, skipping frozen parameters.

SGD with momentum ``mu`` and weight decay ``lambda`` (decay on weights only, never on biases,
as in the FCN paper's Caffe solver)::

    g  = grad + lambda * w          (lambda = 0 for biases)
    v  = mu * v + g
    w -= lr * v                     (lr * bias_lr_mult for biases)

``bias_lr_mult`` (both optimisers; default 1) is Caffe's ``lr_mult: 2`` on biases, which
the FCN solvers use and ``--recipe paper`` sets.

This is torch's momentum form: ``v`` sums gradients and ``lr`` multiplies at the update.
Caffe's solver keeps ``lr`` inside ``v`` (``v = mu v + lr g``, ``w -= v``); the two agree
while ``lr`` is constant and differ when it changes (the ``poly`` schedule).

Adam (Kingma & Ba)::

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

where ``t`` counts the updates of *this* parameter (as torch does): a parameter that first
gets a gradient at the optimiser's 5th step takes a full-size first step (t = 1), not one
scaled down by ``(1 - b1) / (1 - b1^5)``.

Schedules: ``fixed`` (lr constant) and ``poly`` (``lr * (1 - it/max_it)^power``), either
with an optional linear warm-up.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .functional._checks import shape_of


CPU_UPDATE_CHUNK = 1 << 16   # values per chunk of a CPU parameter update (see Optimizer.step)


def _decays(name):
    return not name.endswith(".bias")


def _real(name, value, positive=False):
    """``value`` as a float: a finite real number (not a bool), > 0 with ``positive``,
    else >= 0; or a ValueError naming it."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")
    return float(value)


def _count(key, value):
    """A checkpoint's count (``steps``, ``updates/<param>``) as an int >= 0."""
    a = np.asarray(value)
    if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
        raise ValueError(f"optimizer state {key!r} must be a whole number >= 0, got {value!r}")
    return int(a)


class Optimizer:
    """Common parts: which parameters to update, buffers, state for checkpoints."""

    buffers = ()

    def __init__(self, model, lr, weight_decay=0.0, bias_lr_mult=1.0):
        self.lr = _real("lr", lr, positive=True)
        self.weight_decay = _real("weight_decay", weight_decay)
        self.bias_lr_mult = _real("bias_lr_mult", bias_lr_mult, positive=True)
        self.model = model
        self.state = {b: {} for b in self.buffers}     # buffer name -> param name -> array
        self.steps = 0                                  # calls of step()
        self.updates = {}                               # param name -> updates it has had

    def _trainable(self):
        frozen = self.model.frozen
        grads = self.model.grads
        for name, layer, p in self.model.parameters():
            if name not in frozen and name in grads:
                yield name, layer.params[p], grads[name]

    def _buffer(self, kind, name, like):
        buf = self.state[kind].get(name)
        if buf is None or buf.shape != like.shape or get_array_module(buf) is not get_array_module(like):
            buf = self.state[kind][name] = get_array_module(like).zeros_like(like)
        return buf

    def step(self, lr=None):
        """One update of every trainable parameter that has a gradient.

        On the CPU the update runs over each parameter in chunks of ``CPU_UPDATE_CHUNK``
        values, so that its temporaries (``wd * w``, ``lr * v``, ...) are chunk-sized and
        stay in cache: whole-array temporaries are fresh memory (page faults) as large as
        the parameter, 8 MB for fc7 at full width. Element by element the arithmetic is
        the same, so the result is too.
        """
        base = self.lr if lr is None else _real("step: lr", lr, positive=True)
        trainable = list(self._trainable())
        for name, w, g in trainable:            # checked before any parameter moves
            if getattr(g, "shape", None) != w.shape or getattr(getattr(g, "dtype", None),
                                                                "kind", None) != "f":
                got = shape_of(g) if not hasattr(g, "dtype") else f"{g.dtype} {shape_of(g)}"
                raise ValueError(f"the gradient of {name!r} must be a float array of its "
                                 f"parameter's shape {tuple(w.shape)}, got {got}")
        self.steps += 1
        for name, w, g in trainable:
            decays = _decays(name)
            wd, lr = (self.weight_decay, base) if decays else (0.0, base * self.bias_lr_mult)
            t = self.updates[name] = self.updates.get(name, 0) + 1
            if get_array_module(w) is not np:      # one fused CUDA kernel per parameter
                # (its kernel takes one dtype: a float64 g is cast to w's first, where the
                # NumPy update computes in float64 and casts the result)
                self._update_gpu(name, w, g.astype(w.dtype, copy=False), lr, wd, t)
                continue
            arrays = [w, g, *self._buffers_of(name, w)]
            if all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
                flat = [a.reshape(-1) for a in arrays]
                for i in range(0, w.size, CPU_UPDATE_CHUNK):
                    self._update(*(a[i:i + CPU_UPDATE_CHUNK] for a in flat), lr=lr, wd=wd, t=t)
            else:
                self._update(*arrays, lr=lr, wd=wd, t=t)

    def _buffers_of(self, name, w):
        """The state arrays ``_update`` takes after ``w`` and ``g`` (made on first use)."""
        return [self._buffer(kind, name, w) for kind in self.buffers]

    def state_dict(self):
        """Buffers as host arrays ``{"<buffer>/<param>": array}``, each parameter's count of
        updates as ``{"updates/<param>": int array}``, plus ``steps``."""
        out = {f"{kind}/{name}": to_numpy(a) for kind, bufs in self.state.items()
               for name, a in bufs.items()}
        out.update({f"updates/{name}": np.array(t) for name, t in self.updates.items()})
        out["steps"] = np.array(self.steps)
        return out

    def load_state_dict(self, state):
        params = self.model.params
        if "steps" not in state:
            raise ValueError("optimizer state: no 'steps' in it")
        self.steps = _count("steps", state["steps"])
        self.updates = {}
        for key, value in state.items():
            if key == "steps":
                continue
            kind, _, name = str(key).partition("/")
            if kind == "updates" and name in params:
                self.updates[name] = _count(key, value)
                continue
            if kind not in self.state or name not in params:
                raise ValueError(f"optimizer state {key!r} does not fit this model/optimizer")
            if np.shape(value) != params[name].shape:
                raise ValueError(f"optimizer state {key!r} has shape {np.shape(value)}, its "
                                 f"parameter {tuple(params[name].shape)}")
            device = "cpu" if get_array_module(params[name]) is np else "cuda"
            self.state[kind][name] = to_device(np.asarray(value, dtype=params[name].dtype), device)
        for bufs in self.state.values():        # a checkpoint from before per-parameter
            for name in bufs:                   # counts: every parameter had them all
                self.updates.setdefault(name, self.steps)

    def to(self, device):
        for bufs in self.state.values():
            for name in bufs:
                bufs[name] = to_device(bufs[name], device)
        return self


class SGD(Optimizer):
    buffers = ("momentum",)

    def __init__(self, model, lr, momentum=0.9, weight_decay=0.0, bias_lr_mult=1.0):
        super().__init__(model, lr, weight_decay, bias_lr_mult)
        if not (isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
                and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _update_gpu(self, name, w, g, lr, wd, t):
        from .kernels.fused import sgd_update
        # plain SGD keeps no state, on the GPU as on the CPU (a checkpoint must not depend
        # on the device); its kernel still needs a buffer, of zeros (0 * NaN is NaN)
        v = (self._buffer("momentum", name, w) if self.momentum
             else get_array_module(w).zeros_like(w))
        sgd_update(w, v, g, lr, self.momentum, wd)

    def _buffers_of(self, name, w):
        return super()._buffers_of(name, w) if self.momentum else []   # plain SGD: no state

    def _update(self, w, g, v=None, *, lr, wd, t):
        if wd:
            g = g + wd * w
        if self.momentum:
            v *= self.momentum
            v += g
            g = v
        w -= w.dtype.type(lr) * g


class Adam(Optimizer):
    buffers = ("m", "v")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 bias_lr_mult=1.0):
        super().__init__(model, lr, weight_decay, bias_lr_mult)
        try:
            self.b1, self.b2 = map(float, betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}") from None
        for i, b in enumerate((self.b1, self.b2)):
            if not 0 <= b < 1:     # b = 1: the bias correction 1 - b^t is 0
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        self.eps = _real("eps", eps)

    def _update_gpu(self, name, w, g, lr, wd, t):
        from .kernels.fused import adam_update
        adam_update(w, self._buffer("m", name, w), self._buffer("v", name, w), g, lr,
                    self.b1, self.b2, t, self.eps, wd)

    def _update(self, w, g, m, v, *, lr, wd, t):
        xp = get_array_module(w)
        if wd:
            g = g + wd * w
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * (g * g)
        c1, c2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        w -= (lr / c1) * m / (xp.sqrt(v / c2) + self.eps)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
SCHEDULES = ("fixed", "poly")


def learning_rate(base_lr, iteration, max_iterations, schedule="fixed", power=0.9, warmup=0):
    """The learning rate at ``iteration`` (0-based) of ``max_iterations``; during the first
    ``warmup`` iterations it ramps up linearly (``(it + 1) / warmup`` of the schedule's)."""
    if not (isinstance(iteration, numbers.Integral) and iteration >= 0):
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    if schedule == "poly" and not (isinstance(power, numbers.Real) and power > 0):
        raise ValueError(f"power must be a number > 0, got {power!r}")
    if schedule == "fixed":
        lr = base_lr
    elif schedule == "poly":
        lr = base_lr * (1 - min(iteration, max_iterations) / max(max_iterations, 1)) ** power
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if iteration < warmup:
        lr *= (iteration + 1) / warmup
    return lr

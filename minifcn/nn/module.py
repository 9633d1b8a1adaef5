"""The layer contract every part of minifcn relies on.

- ``y = layer.forward(x)`` keeps on ``self`` what the backward pass needs.
- ``dx = layer.backward(dy)`` returns the input gradient and fills ``self.grads[name]``
  for every ``self.params[name]`` (same shape). It never writes into ``dy``.
- ``self.params`` is the one owner of the parameter arrays: replacing an entry
  (``layer.params['weight'] = w``) replaces the parameter. Nothing else keeps a
  reference, so loading weights or changing dtype/device is just assignment.
- ``train()`` / ``eval()`` switch the mode (it matters for dropout only).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..backend import to_device


class Layer:
    """Base class: no parameters, identity-free; subclasses define forward/backward."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.frozen: set = set()      # names of params the optimiser must not update
        self.training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        self.grads = {}

    def to(self, device: str):
        """Move the parameters (and any gradients) to 'cpu' or 'cuda'."""
        for store in (self.params, self.grads):
            for name in store:
                store[name] = to_device(store[name], device)
        self.clear_cache()
        return self

    def astype(self, dtype):
        """Parameters in another float dtype (float16/32/64); gradients dropped."""
        if np.dtype(dtype).kind != "f":            # as the constructors: weights are floats
            raise ValueError(f"{type(self).__name__}.astype: dtype must be a float type, got "
                             f"{np.dtype(dtype)}")
        for name in self.params:
            self.params[name] = self.params[name].astype(dtype)
        self.grads = {}
        return self

    def clear_cache(self):
        """Drop what forward kept for backward (frees memory after evaluation)."""

    # -- geometry, used by summaries and by the models' crop offsets -------------------
    def output_shape(self, in_shape):
        """Output shape for an input shape, without computing anything (default: same)."""
        return tuple(in_shape)

    def coord_map(self):
        """Per axis (h, w), the affine map ``(a, b)`` with ``input_coord = a * output_coord + b``
        (coordinates of receptive-field centres; exact Fractions). Default: identity."""
        return (Fraction(1), Fraction(0)), (Fraction(1), Fraction(0))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def default_rng(seed):
    """A NumPy Generator from a seed, a Generator, or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)

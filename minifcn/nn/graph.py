"""A network as a fixed list of named layers, each fed by earlier ones: the Caffe way.

    graph = Graph([
        ("conv1", Conv2d(3, 8, 3, padding=1), ["data"]),
        ("relu1", ReLU(),                      ["conv1"]),
        ("fuse",  Add(),                       ["relu1", "conv1"]),
    ])

``forward(x)`` runs the nodes in order, feeding each the outputs of its named inputs
(``"data"`` is the network input). ``backward(dy)`` runs them in reverse, calling every
layer's own hand-written backward. The only rule the graph itself adds is the chain rule
for a map used twice: **when a node's output feeds several nodes, its gradient is the sum
of the gradients that come back from each** (FCN's pool4 feeds both conv5 and the skip).
This is not autograd: nothing is traced; the graph is written down once, by hand.

The graph also owns the naming of parameters: layer ``conv1_1``'s ``weight`` is
``"conv1_1.weight"`` in ``params``, ``grads`` and ``state_dict()``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_device
from ..functional._select import all_finite
from .module import Layer

INPUT = "data"


def _count_non_finite(a):
    """``(how many values are NaN or inf, how many values)`` of ``a`` (a NumPy or CuPy
    array, or anything NumPy reads as one: a list, a CPU torch tensor)."""
    xp = get_array_module(a)
    a = xp.asarray(a)
    if a.dtype.kind not in "fc" or all_finite(a):      # (a pass without a temporary)
        return 0, a.size
    return int(a.size - int(xp.isfinite(a).sum())), a.size


class Graph(Layer):
    """Named layers wired by name. See the module docstring."""

    def __init__(self, nodes):
        # no super().__init__(): a graph owns no parameters; params/grads are views
        self.training = True
        nodes = list(nodes)
        if not nodes:
            raise ValueError("Graph: needs at least one node (name, layer, [input names])")
        self.nodes = []                     # (name, layer, [input names]) in run order
        self.layers = {}
        seen = {INPUT}
        for name, layer, inputs in nodes:
            if name in seen:
                raise ValueError(f"Graph: node name {name!r} is used twice")
            if not (callable(getattr(layer, "forward", None))
                    and callable(getattr(layer, "backward", None))):
                raise ValueError(f"Graph: node {name!r} is a {type(layer).__name__}, not a "
                                 "layer (it needs forward and backward)")
            missing = [i for i in inputs if i not in seen]
            if missing:
                raise ValueError(f"Graph: node {name!r} reads {missing} before they are computed")
            if len(inputs) != getattr(layer, "n_inputs", 1):
                raise ValueError(f"Graph: node {name!r} ({type(layer).__name__}) takes "
                                 f"{getattr(layer, 'n_inputs', 1)} inputs, got {inputs}")
            self.nodes.append((name, layer, list(inputs)))
            self.layers[name] = layer
            seen.add(name)
        self.output = self.nodes[-1][0]
        # for each map, the nodes that read it (to free it, and to sum gradients)
        self._readers = {INPUT: []}
        for name, _, inputs in self.nodes:
            self._readers.setdefault(name, [])
            for i in inputs:
                self._readers[i].append(name)

    # -- forward / backward ----------------------------------------------------------
    def forward(self, x, hook=None):
        """Run every node in order. ``hook(name, output)``, if given, sees each output
        (the trainer uses it to find the first layer whose output is not finite); an
        in-place layer (``ReLU(inplace=True)``) may write over it next, so a hook that
        keeps an output should keep a copy.

        An in-place layer writes over its input only when nothing else can see that
        memory: no other node reads the map, before or after it (an earlier reader may
        keep it for its backward: a Conv2d keeps its input), no other live map shares its
        memory (a Dropout in eval mode hands on its input itself, a Crop a view of it),
        and it is not the caller's ``x``. Otherwise that call runs out of place."""
        values = {INPUT: x}
        pending = {k: len(v) for k, v in self._readers.items()}
        for name, layer, inputs in self.nodes:
            args = [values[i] for i in inputs]
            if getattr(layer, "inplace", False) and not self._sole_owner(values, inputs[0]):
                layer.inplace = False
                try:
                    values[name] = layer.forward(*args)
                finally:
                    layer.inplace = True
            else:
                values[name] = layer.forward(*args)
            if hook is not None:
                hook(name, values[name])
            for i in inputs:                      # free maps nobody reads any more
                pending[i] -= 1
                if pending[i] == 0 and i != INPUT:
                    del values[i]
        return values[self.output]

    def _sole_owner(self, values, key):
        """May an in-place layer reading map ``key`` write over it (see :meth:`forward`)?"""
        if key == INPUT or len(self._readers[key]) > 1:
            return False
        a = values[key]
        if get_array_module(a) is not np:
            return True                      # the layers go in place on the CPU only
        return not any(np.may_share_memory(a, v) for k, v in values.items()
                       if k != key and get_array_module(v) is np)

    def backward(self, dy, hook=None):
        """Returns d loss / d input, and fills every layer's ``grads``.
        ``hook(name, grad_of_output)``, if given, sees each gradient as it arrives."""
        self.zero_grad()                  # free the last step's gradients before making new ones
        grads = {self.output: dy}
        for name, layer, inputs in reversed(self.nodes):
            g = grads.pop(name, None)
            if g is None:                          # output unused by the loss: no gradient
                continue
            if hook is not None:
                hook(name, g)
            dxs = layer.backward(g)
            if len(inputs) == 1:
                dxs = (dxs,)
            for i, dx in zip(inputs, dxs):
                if dx is None:                     # e.g. a Crop's size reference
                    continue
                if i in grads:                     # a map read twice: gradients add
                    grads[i] = grads[i] + dx
                else:
                    grads[i] = dx
        return grads.get(INPUT)

    # -- parameters --------------------------------------------------------------------
    @property
    def params(self):
        """Flat view ``{"layer.param": array}``. The arrays are the layers' own (edit in place
        or go through ``load_state_dict``; assigning into this dict changes nothing)."""
        return {f"{n}.{p}": a for n, layer in self.layers.items() for p, a in layer.params.items()}


    @property
    def grads(self):
        return {f"{n}.{p}": a for n, layer in self.layers.items() for p, a in layer.grads.items()}


    @property
    def frozen(self):
        return {f"{n}.{p}" for n, layer in self.layers.items() for p in layer.frozen}


    def parameters(self):
        """``(name, layer, param_name)`` for every parameter, in graph order."""
        return [(f"{n}.{p}", layer, p) for n, layer in self.layers.items() for p in layer.params]

    def num_params(self):
        return int(sum(a.size for a in self.params.values()))

    def state_dict(self):
        """``{"layer.param": array}`` — the same arrays as ``params``."""
        return self.params

    def load_state_dict(self, state, strict=True):
        """Replace every parameter by the array of the same name (converted to the current
        dtype and device). Names or shapes that do not match raise one ValueError listing
        all of them; nothing is changed unless everything fits (with ``strict``)."""
        if not hasattr(state, "keys") or not all(isinstance(k, str) for k in state.keys()):
            raise ValueError(f"load_state_dict: state must be a dict of 'layer.param' names to "
                             f"arrays, got {type(state).__name__}"
                             + ("" if not hasattr(state, "keys") else " with non-str keys"))
        own = self.params
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k}: file {tuple(np.shape(state[k]))} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)]
        # numbers only: a complex array would lose its imaginary part, and dates or strings
        # would be cast to weights without a word
        wrong += [f"{k}: dtype {getattr(state[k], 'dtype', type(state[k]).__name__)} is not a "
                  "real number type (type mismatch)" for k in own if k in state
                  and getattr(getattr(state[k], "dtype", None), "kind", "f") not in "fiub"]
        # NaN or inf weights would make every output NaN, silently
        non_finite = [] if wrong else [f"{k}: {bad} of {size} values"
                                       for k in own if k in state
                                       for bad, size in [_count_non_finite(state[k])] if bad]
        if wrong or non_finite or (strict and (missing or unexpected)):
            parts = []
            if missing:
                parts.append(f"missing from the weights: {', '.join(missing)}")
            if unexpected and strict:
                parts.append(f"not in the model: {', '.join(unexpected)}")
            if wrong:
                parts.append("shape mismatch: " + "; ".join(wrong))
            if non_finite:
                parts.append("NaN or inf: " + "; ".join(non_finite))
            raise ValueError("state dict does not fit the model — " + " | ".join(parts))
        for name, layer, p in self.parameters():
            if name in state:
                old = layer.params[p]
                xp = get_array_module(old)
                value = to_device(np.asarray(state[name]) if xp is np else state[name],
                                  "cpu" if xp is np else "cuda")
                layer.params[p] = xp.array(value, dtype=old.dtype, copy=True)
        return missing

    # -- modes, devices ------------------------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers.values():
            layer.train(mode)
        return self

    def zero_grad(self):
        for layer in self.layers.values():
            layer.zero_grad()

    def to(self, device):
        for layer in self.layers.values():
            layer.to(device)
        return self

    def astype(self, dtype):
        for layer in self.layers.values():
            layer.astype(dtype)
        return self

    def clear_cache(self):
        for layer in self.layers.values():
            layer.clear_cache()

    # -- shapes and geometry without computing anything -----------------------------------
    def shapes(self, in_shape):
        """``{name: output shape}`` for an input shape, by each layer's ``output_shape``."""
        shapes = {INPUT: tuple(in_shape)}
        for name, layer, inputs in self.nodes:
            shapes[name] = tuple(layer.output_shape(*(shapes[i] for i in inputs)))
        return shapes

    def output_shape(self, in_shape):
        return self.shapes(in_shape)[self.output]

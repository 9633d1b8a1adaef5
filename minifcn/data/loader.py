"""Batches for training and evaluation, reproducible to the batch and resumable.

``BatchLoader`` walks a dataset in epochs. Each epoch visits every item once, in an order
drawn from ``(seed, epoch)`` (or in index order when ``shuffle=False``); the random flip
and crop of the item at place ``p`` of epoch ``e`` are drawn from ``(seed, e, p)``. So
the whole stream of batches is a function of the seed alone, and the loader's state is
just *where it is*: ``(epoch, position)``. ``state_dict()`` records that (plus the current
epoch's order, so a NumPy upgrade between save and resume cannot reshuffle the epoch
in progress), and a loader given it back produces exactly the batches the first one
would have produced next.

One batch::

    items    image_k uint8 (h_k, w_k, 3), mask_k uint8 (h_k, w_k)     sizes may differ
    flip     mirrored left-right with probability 1/2                (flip=True)
    x_k      preprocess(image_k): float32 (3, h_k, w_k), the mean colour -> 0
    crop     crop_size=(H, W): a random H x W window; where the image is smaller it is
             padded, x with 0 and the labels with 255
    or pad   no crop_size: every item padded at the bottom and right to the largest
             h_k, w_k in the batch (rounded up to pad_multiple), x with 0, labels with 255
    ->       x float32 (N, 3, H, W), y int64 (N, H, W)

Label 255 is ignored by the loss and the metrics, so padding never teaches anything.
"""
from __future__ import annotations

import numbers

import numpy as np

from .palette import IGNORE_INDEX
from .transforms import crop_or_pad, get_preprocess, hflip

_ORDER, _ITEM = 0, 1   # stream tags: the epoch order and the item augmentations never share draws


class BatchLoader:
    """Batches of ``(x float32 (N, 3, H, W), y int64 (N, H, W))`` from ``dataset``.

    - ``next_batch()`` returns the next batch, going on into the next epoch forever;
    - ``for x, y in loader`` runs through the rest of the current epoch (a whole epoch
      on a fresh loader: what evaluation wants);
    - ``epoch``, ``position`` (items of this epoch already served), ``iteration``
      (batches served in all), ``len(loader)`` (batches per epoch), ``last_indices``
      (the dataset indices in the last batch);
    - ``state_dict()`` / ``load_state_dict()``: save and restore where it is.

    With ``drop_last=False`` the last batch of an epoch may be smaller than ``batch_size``;
    with ``drop_last=True`` it is skipped (a different subset is skipped each epoch when
    shuffling).
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 crop_size=None, flip: bool = False, preprocess="simple", drop_last: bool = False,
                 pad_multiple: int = 1):
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot make batches from an empty dataset")
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > n:
            raise ValueError(f"batch_size={batch_size} with drop_last=True leaves no batch: "
                             f"the dataset has only {n} items")
        if not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if crop_size is not None:
            if isinstance(crop_size, numbers.Integral):
                crop_size = (crop_size, crop_size)
            if (not isinstance(crop_size, (tuple, list)) or len(crop_size) != 2
                    or not all(isinstance(c, numbers.Integral) and c >= 1 for c in crop_size)):
                raise ValueError(f"crop_size must be a positive int or (H, W), got {crop_size!r}")
            crop_size = (int(crop_size[0]), int(crop_size[1]))
        if not isinstance(pad_multiple, numbers.Integral) or pad_multiple < 1:
            raise ValueError(f"pad_multiple must be a positive int, got {pad_multiple!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.crop_size = crop_size
        self.flip = bool(flip)
        self.preprocess = get_preprocess(preprocess)
        self.drop_last = bool(drop_last)
        self.pad_multiple = int(pad_multiple)
        self.epoch = 0
        self.position = 0
        self.iteration = 0
        self.last_indices = []
        self._order_epoch, self._order = None, None

    # ------------------------------------------------------------------ the walk
    @property
    def num_items(self) -> int:
        return len(self.dataset)

    def _epoch_end(self) -> int:
        """How many items an epoch serves (all, or all but the last partial batch)."""
        n = self.num_items
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._epoch_end() // self.batch_size if self.drop_last else -(-self.num_items // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices in the order epoch ``epoch`` visits them."""
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(self.num_items)
            else:
                self._order = np.arange(self.num_items)
            self._order_epoch = epoch
        return self._order

    def next_batch(self):
        """The next ``(x float32 (N, 3, H, W), y int64 (N, H, W))``; moves on by one batch."""
        order = self.order(self.epoch)
        start, stop = self.position, min(self.position + self.batch_size, self._epoch_end())
        items = [self._item(self.epoch, p, int(order[p])) for p in range(start, stop)]
        self.last_indices = [int(i) for i in order[start:stop]]
        self.position, self.iteration = stop, self.iteration + 1
        if self.position >= self._epoch_end():           # epoch done: the next call starts a new one
            self.epoch, self.position = self.epoch + 1, 0
        return self._collate(items)

    def __iter__(self):
        """The batches left in the current epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    # ------------------------------------------------------------------ one item, one batch
    def _item(self, epoch: int, place: int, index: int):
        """Item ``index`` at ``place`` of ``epoch``: preprocessed x (3, h, w), labels (h, w)."""
        image, mask = self.dataset[index]
        rng = np.random.default_rng([self.seed, _ITEM, epoch, place])
        if self.flip and rng.random() < 0.5:
            image, mask = hflip(image, mask)
        x = self.preprocess(image)                                # (3, h, w) float32
        if self.crop_size is not None:
            hwc, mask = crop_or_pad(np.moveaxis(x, 0, -1), mask, self.crop_size, rng, pad_value=0.0)
            x = np.moveaxis(hwc, -1, 0)                           # (3, H, W)
        return x, mask

    def _collate(self, items):
        """Stack items of possibly different sizes, padding x with 0 and labels with 255."""
        m = self.pad_multiple
        h = -(-max(x.shape[1] for x, _ in items) // m) * m
        w = -(-max(x.shape[2] for x, _ in items) // m) * m
        xs = np.zeros((len(items), 3, h, w), dtype=np.float32)
        ys = np.full((len(items), h, w), IGNORE_INDEX, dtype=np.int64)
        for k, (x, mask) in enumerate(items):
            xs[k, :, :x.shape[1], :x.shape[2]] = x
            ys[k, :mask.shape[0], :mask.shape[1]] = mask
        return xs, ys

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Where the loader is, as plain ints and lists (JSON-serialisable)."""
        return {
            "version": 1,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "iteration": self.iteration,
            "num_items": self.num_items,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "order": [int(i) for i in self.order(self.epoch)],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): the next batch is the one that
        would have come next. The dataset and batch size must be those of the saved run;
        the seed and ``shuffle`` are taken from the state (crop, flip and preprocessing
        are this loader's own: give it the saved run's)."""
        try:
            epoch, position, iteration = int(state["epoch"]), int(state["position"]), int(state["iteration"])
            seed, num_items, batch_size = int(state["seed"]), int(state["num_items"]), int(state["batch_size"])
            shuffle, order = bool(state["shuffle"]), state["order"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a BatchLoader state ({type(e).__name__}: {e})") from None
        if num_items != self.num_items:
            raise ValueError(f"the saved loader state is for a dataset of {num_items} items, "
                             f"this dataset has {self.num_items}")
        if batch_size != self.batch_size:
            raise ValueError(f"the saved loader state is for batch_size={batch_size}, "
                             f"this loader has batch_size={self.batch_size}")
        raw = np.asarray(order)
        if (raw.size and raw.dtype.kind not in "iu") or any(isinstance(state[k], float) for k in (
                "epoch", "position", "iteration", "seed", "num_items", "batch_size")):
            raise ValueError("the saved loader state's counters and order must be whole numbers "
                             f"(order has dtype {raw.dtype})")
        order = raw.astype(np.int64)
        if order.shape != (num_items,) or not np.array_equal(np.sort(order), np.arange(num_items)):
            raise ValueError("the saved loader state's order is not a permutation of the dataset")
        if not (0 <= position < max(self._epoch_end(), 1) and epoch >= 0 and iteration >= 0):
            raise ValueError(f"the saved loader state is out of range (epoch={epoch}, position={position})")
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position, self.iteration = epoch, position, iteration
        self._order_epoch, self._order = epoch, order

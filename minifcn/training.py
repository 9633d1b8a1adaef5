"""The training loop behind ``python -m minifcn.train``, and the checkpoints it writes.

One iteration::

    x, y = loader.next_batch()            # x (N, 3, H, W) float32, y (N, H, W) int64
    logits = model.forward(x)             # (N, C, H, W)
    loss = criterion.forward(logits, y)   # softmax cross-entropy, 255 ignored
    model.backward(criterion.backward())  # every layer's hand-written backward
    optimizer.step(lr)                    # SGD or Adam, in place

A run directory holds ``config.json``, ``log.csv``, ``checkpoint.npz`` (latest),
``best.npz`` (best validation mean IU), ``metrics.json`` (final validation metrics) and
``val_samples.png`` (image | truth | prediction). Checkpoints are written atomically, and
hold everything needed to continue exactly: weights, optimizer buffers, the data loader's
position, the dropout generators' states and the iteration.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import time
import typing
from dataclasses import dataclass

import numpy as np

from . import io, openblas_core
from .backend import check_device, get_array_module, to_device, to_numpy
from .cli import WRITE_CHECK_PREFIX, check_output_dir, same_file
from .data import BatchLoader, colorize, deprocess, open_dataset
from .data.synthetic import MIN_SIZE as SYNTHETIC_MIN_SIZE
from .data.transforms import get_preprocess
from .metrics import ConfusionMatrix
from .models import MODELS, build_model
from .models.fcn import GEOMETRIES
from .nn import Dropout, SoftmaxCrossEntropy
from .optim import OPTIMIZERS, SCHEDULES, learning_rate


class TrainingError(Exception):
    """A run that cannot go on (non-finite loss, bad resume directory...): one-line message."""


@dataclass
class TrainConfig:
    """Every setting of a run. ``None`` means "the default for the rest of the settings"."""
    # -- data
    data: str = "synthetic"        # 'synthetic' (built in, no download) or a dataset directory
    num_classes: int = None        # classes incl. background; None: from the dataset
    image_size: int = 64           # synthetic images are image_size x image_size
    train_images: int = 5000       # synthetic training images
    val_images: int = 200          # synthetic validation images
    crop_size: int = None          # random training crops (None: whole images, padded per batch)
    flip: bool = True              # random horizontal flips in training
    preprocess: str = None         # 'simple' | 'caffe' | 'imagenet'; None: what --init needs
    # -- model
    model: str = "fcn8s"           # fcn32s | fcn16s | fcn8s | fcn8s-atonce
    geometry: str = "notes"        # 'notes' (the study notes' net) | 'paper' (Caffe: pad 100, crops)
    width: float = 0.125           # channel multiplier (1 = VGG16's 64..512, 4096)
    dropout: float = 0.0           # dropout after fc6 and fc7 (the paper: 0.5)
    learn_upsampling: bool = False  # learn the bilinear upsampling kernels too
    init: str = None               # start from weights: FCN state dict (.npz/.pth) or torchvision VGG16 .pth
    # -- optimisation
    recipe: str = "normalized"     # 'normalized' (mean loss) | 'paper' (Caffe's solver: summed loss, batch 1, SGD lr 1e-10, momentum 0.99, fixed lr, biases at 2x lr)
    optimizer: str = None          # 'sgd' | 'adam'; None: adam (normalized) / sgd (paper)
    lr: float = None               # None: 5e-3 adam, 1e-2 sgd (normalized); 1e-10 (paper)
    momentum: float = None         # SGD momentum; None: 0.9 (normalized), 0.99 (paper)
    weight_decay: float = None     # on weights, not biases; None: 0 (adam), 5e-4 (sgd)
    schedule: str = None           # 'fixed' | 'poly' (lr * (1 - it/iters)^0.9); None: poly (normalized), fixed (paper)
    warmup: int = None             # iterations of linear lr warm-up (0: none); None: 200 (normalized), 0 (paper)
    bias_lr_mult: float = None     # the biases' lr is this times --lr; None: 1 (normalized), 2 (paper: Caffe's lr_mult)
    iters: int = None              # iterations; None: from --epochs, else 1500
    epochs: float = None           # epochs over the training set (alternative to --iters)
    batch_size: int = None         # images per iteration; None: 16 (normalized), 1 (paper, as its solver)
    # -- the run
    device: str = "cpu"            # 'cpu' (NumPy) | 'cuda' (CuPy)
    out: str = None                # run directory; None: runs/<date>-<time>
    resume: str = None             # continue the run in this directory
    seed: int = 0                  # seeds the weights, the synthetic data, the batch order, flips and dropout
    val_every: int = 250           # validate (and checkpoint) every this many iterations
    pictures: int = 4              # validation samples drawn into val_samples.png
    progress: bool = True          # show a progress bar
    validate_data: bool = True     # check every image and mask before training

    def resolved(self):
        """A copy with every ``None`` default filled in and every value checked."""
        c = dataclasses.replace(self)
        _check_choice("model", c.model, sorted(MODELS))
        _check_choice("geometry", c.geometry, GEOMETRIES)
        _check_choice("recipe", c.recipe, ("normalized", "paper"))
        check_device(c.device)
        paper = c.recipe == "paper"
        if c.schedule is None:
            c.schedule = "fixed" if paper else "poly"
        _check_choice("schedule", c.schedule, SCHEDULES)
        if c.warmup is None:
            c.warmup = 0 if paper else 200
        if c.bias_lr_mult is None:
            c.bias_lr_mult = 2.0 if paper else 1.0
        if c.batch_size is None:
            c.batch_size = 1 if paper else 16
        if c.optimizer is None:
            c.optimizer = "sgd" if paper else "adam"
        _check_choice("optimizer", c.optimizer, sorted(OPTIMIZERS))
        sgd = c.optimizer == "sgd"
        if c.lr is None:
            c.lr = 1e-10 if paper else (1e-2 if sgd else 5e-3)
        if c.momentum is None:
            c.momentum = 0.99 if paper else 0.9
        if c.weight_decay is None:
            c.weight_decay = 5e-4 if sgd else 0.0
        if c.preprocess is None:
            c.preprocess = _preprocess_for(c.init)
        get_preprocess(c.preprocess)
        for name in ("image_size", "train_images", "val_images", "batch_size", "val_every"):
            if getattr(c, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(c, name)}")
        if c.data == "synthetic" and c.image_size < SYNTHETIC_MIN_SIZE:
            raise ValueError(f"--image-size must be at least {SYNTHETIC_MIN_SIZE} for the "
                             f"synthetic shapes, got {c.image_size}")
        if c.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {c.warmup}")
        for name in ("crop_size", "iters", "num_classes"):
            v = getattr(c, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if c.iters is not None and c.epochs is not None:
            raise ValueError("give --iters or --epochs, not both")
        for name, ok, rule in (
                ("epochs", c.epochs is None or 0 < c.epochs < math.inf, "a positive finite number"),
                ("lr", 0 < c.lr < math.inf, "a positive finite number"),
                ("width", 0 < c.width < math.inf, "a positive finite number"),
                ("dropout", 0 <= c.dropout < 1, "in [0, 1)"),
                ("momentum", 0 <= c.momentum < 1, "in [0, 1)"),
                ("bias_lr_mult", 0 < c.bias_lr_mult < math.inf, "a positive finite number"),
                ("weight_decay", 0 <= c.weight_decay < math.inf, "a finite number >= 0"),
                ("pictures", c.pictures >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(c, name)}")
        if c.init is not None and not os.path.isfile(c.init):
            raise ValueError(f"--init: no such file: {c.init}")
        if c.out is not None and c.resume is None:
            check_output_dir(c.out, "--out")        # before the data and the model are built
        return c


RESUME_MAY_CHANGE = {"resume", "device", "progress", "iters", "epochs", "validate_data"}
# what a resumed run may be given beside --resume: where it runs, for how long, how it
# shows progress, whether it checks the data first; everything else is the run's own


def _refused_on_resume(config, given):
    """The settings that a resume of ``config.resume`` would not use, in field order: of
    those ``given`` (names), or where None, of those that differ from their defaults.
    ``--out`` naming the run's own directory is no change."""
    fields = dataclasses.fields(TrainConfig)
    names = {f.name for f in fields if _was_given(f.name, config, given)}
    if "out" in names and config.out is not None and same_file(config.out, config.resume):
        names.discard("out")
    return [f.name for f in fields if f.name in names and f.name not in RESUME_MAY_CHANGE]


def _was_given(name, config, given):
    """Whether setting ``name`` was given: named in ``given``, or (``given`` None) set to
    other than its default."""
    if given is not None:
        return name in given
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    return getattr(config, name) != default


def _past_the_length(run_dir, iteration, iters):
    return (f"--resume {run_dir} is already at iteration {iteration}, past the {iters} "
            "iterations asked for (--iters or --epochs); ask for more, or for none to finish "
            "the run as set up")


def _check_saved_types(saved, path):
    """Each setting read back from a run's config.json has its field's type (an int for a
    float too; None only where the field's default is None), so that a hand-edited file
    gets an error naming the field instead of a TypeError deep in the run."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, value in saved.items():
        kind = hints[name]
        if value is None:
            ok = defaults[name] is None
        elif kind is bool:
            ok = isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            want = {bool: "true or false", float: "a number", int: "an integer",
                    str: "a string"}.get(kind, kind.__name__)
            raise ValueError(f"{path}: setting {name!r} must be {want}"
                             f"{'' if defaults[name] is not None else ' or null'}, got {value!r}")


def _taken(path):
    """Why a fresh run may not use the directory ``path`` (which holds files)."""
    if not os.path.isfile(os.path.join(path, "checkpoint.npz")) and os.path.isfile(
            os.path.join(path, "config.json")):
        return (f"--out {path} holds a run with no checkpoint yet (still running, or stopped "
                "before its first one; its log.csv is there): choose a new directory")
    return (f"--out {path} already holds files; choose a new directory, "
            f"or continue that run with --resume {path}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}")


def _preprocess_for(init):
    """Weights expect the input they were trained on: torchvision VGG16 -> 'imagenet';
    the Caffe FCN and its PyTorch port -> 'caffe'; training from scratch -> 'simple'."""
    if init is None:
        return "simple"
    model = io.load_meta(init).get("model")
    if isinstance(model, dict) and isinstance(model.get("preprocess"), str):
        return model["preprocess"]
    names = set(io.load(init))
    return "imagenet" if "features.0.weight" in names else "caffe"


# -- checkpoints -------------------------------------------------------------------------

OPTIMIZER_PREFIX = "optimizer/"


def model_spec(config, num_classes, class_names):
    """What it takes to rebuild the model from a checkpoint alone."""
    return {"name": config.model, "num_classes": num_classes, "geometry": config.geometry,
            "width": config.width, "preprocess": config.preprocess,
            "class_names": list(class_names), "dropout": config.dropout}


def build_from_spec(spec, dtype=np.float32, **kwargs):
    return build_model(spec["name"], num_classes=int(spec["num_classes"]),
                       geometry=spec["geometry"], width=float(spec["width"]),
                       dropout=float(spec.get("dropout", 0.0)), dtype=dtype, **kwargs)


def load_checkpoint_model(path, device="cpu", **overrides):
    """Rebuild the model a checkpoint (``best.npz``/``checkpoint.npz``) was saved from, with
    its weights. Returns ``(model, spec)``. ``overrides`` fill in or replace spec entries
    (needed for weights without minifcn metadata, e.g. a PyTorch-port ``.pth``)."""
    arrays, meta = io.load(path, with_meta=True)
    # a torch checkpoint's scalar entries are its metadata too: a 'model' there that is not
    # minifcn's model description (a dict) is not one
    spec = dict(meta["model"]) if isinstance(meta.get("model"), dict) else {}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in ("name", "num_classes", "geometry", "width") if k not in spec]
    if missing:
        raise ValueError(f"{path}: no model description in the file (missing {missing}); "
                         "pass --model, --num-classes, --geometry and --width")
    spec.setdefault("preprocess", "caffe")
    spec.setdefault("class_names", [str(i) for i in range(int(spec["num_classes"]))])
    model = build_from_spec(spec)
    weights = {k: v for k, v in arrays.items() if not k.startswith(OPTIMIZER_PREFIX)}
    _check_finite(weights, path)
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.to(device).eval()
    return model, spec


def _check_finite(weights, path):
    """Weights with an inf or NaN make every prediction meaningless (and training stop at
    its first step with a misleading hint): refuse them, naming the file and the entry."""
    for name, value in weights.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"{path}: {name!r} holds inf or NaN values; these weights "
                             "cannot be used")


def _dropout_layers(model):
    return {name: layer for name, layer in model.layers.items() if isinstance(layer, Dropout)}


def save_checkpoint(path, model, optimizer=None, meta=None):
    arrays = {k: to_numpy(v) for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({OPTIMIZER_PREFIX + k: v for k, v in optimizer.state_dict().items()})
    io.save(path, arrays, meta=meta or {})


# -- the run -------------------------------------------------------------------------------

LOG_FIELDS = ["iteration", "epoch", "loss", "lr", "it_per_s", "pixel_acc", "mean_acc",
              "mean_iou", "fw_iou"]


class Run:
    """One training run: data, model, optimizer, and the files of its directory."""

    def __init__(self, config: TrainConfig, log=print, given=None):
        """``given``: the names of the settings given on the command line (``train``
        passes them), so that a resume refuses every one it would not use, even one given
        its default value; None: those that differ from their defaults."""
        self.log = log
        resume = config.resume
        # a resume given --iters or --epochs asks for a length; a plain one finishes the run
        self._length_asked = config.iters is not None or config.epochs is not None
        if resume is not None:
            config = self._config_to_resume(config, given)
        try:
            self.config = c = config.resolved()
        except ValueError as e:
            if resume is None:
                raise
            raise ValueError(f"--resume {resume}: its config.json (or this command's --iters / "
                             f"--epochs / --device): {e}") from None
        self.dir = c.out or time.strftime("runs/%Y%m%d-%H%M%S")
        if (c.out is not None and resume is None and os.path.isdir(self.dir)
                and [f for f in os.listdir(self.dir) if not f.startswith(WRITE_CHECK_PREFIX)]):
            raise ValueError(_taken(self.dir))

        # data
        extra = dict(image_size=(c.image_size, c.image_size), seed=c.seed) if c.data == "synthetic" else {}
        n_train = {"num_images": c.train_images} if c.data == "synthetic" else {}
        n_val = {"num_images": c.val_images} if c.data == "synthetic" else {}
        self.train_set = open_dataset(c.data, "train", c.num_classes, **extra, **n_train)
        self.val_set = open_dataset(c.data, "val", c.num_classes, **extra, **n_val)
        self.num_classes = c.num_classes = c.num_classes or self.train_set.num_classes
        if c.validate_data:
            self.train_set.validate()
            self.val_set.validate()
        self.loader = BatchLoader(self.train_set, c.batch_size, seed=c.seed, flip=c.flip,
                                  crop_size=c.crop_size, preprocess=c.preprocess, drop_last=True
                                  if len(self.train_set) >= c.batch_size else False)
        if c.iters is None:
            epochs = c.epochs if c.epochs is not None else None
            c.iters = (max(1, round(epochs * len(self.loader))) if epochs is not None else 1500)

        # model and optimisation
        self.spec = model_spec(c, self.num_classes, self.train_set.class_names)
        self.model = build_from_spec(self.spec, seed=c.seed, learn_upsampling=c.learn_upsampling)
        self.model.need_input_grad = False          # nothing upstream of conv1_1 to train
        if c.init is not None and resume is None:
            self._load_init(c.init)
        self.model.to(c.device)
        opt_cls = OPTIMIZERS[c.optimizer]
        kwargs = {"momentum": c.momentum} if c.optimizer == "sgd" else {}
        self.optimizer = opt_cls(self.model, c.lr, weight_decay=c.weight_decay,
                                 bias_lr_mult=c.bias_lr_mult, **kwargs)
        self.criterion = SoftmaxCrossEntropy(255, "sum" if c.recipe == "paper" else "mean")
        self.iteration = 0
        self.best_miou = -1.0
        self.metrics = None
        self.checkpointed = resume is not None      # is there a checkpoint to resume from?

        if resume is not None:
            self._resume()
        else:
            self._claim_directory(default_name=c.out is None)
        self._log_file = self._open_log()

    # -- setting up -------------------------------------------------------------------
    def _claim_directory(self, default_name):
        """Make the run directory this run's alone, and write config.json into it.

        Two runs started in the same second (same default name), or given the same --out,
        must not share a directory: a taken default name gets a suffix (-2, -3, ...), and
        config.json is created exclusively, so the second of two runs racing for one
        directory stops before writing anything."""
        base = self.dir
        for i in itertools.count(2):
            try:
                os.makedirs(self.dir, exist_ok=not default_name)
                break
            except FileExistsError:
                if not default_name:
                    raise
                self.dir = f"{base}-{i}"
        try:
            f = open(os.path.join(self.dir, "config.json"), "x")
        except FileExistsError:
            raise ValueError(_taken(self.dir)) from None
        with f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)

    @staticmethod
    def _config_to_resume(config, given=None):
        path = os.path.join(config.resume, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"--resume {config.resume}: no config.json there (not a run directory)")
        checkpoint = os.path.join(config.resume, "checkpoint.npz")
        if os.path.lexists(checkpoint) and not os.path.isfile(checkpoint):
            raise ValueError(f"--resume {config.resume}: {checkpoint} is not a file")
        if not os.path.isfile(checkpoint):
            raise ValueError(f"--resume {config.resume}: no checkpoint.npz there yet (the run is "
                             "still before its first validation, or stopped there: nothing to "
                             "resume; a new run needs a new --out)")
        refused = _refused_on_resume(config, given)
        if refused:
            flags = ", ".join("--" + name.replace("_", "-") for name in refused)
            allowed = ", ".join("--" + n.replace("_", "-") for n in sorted(RESUME_MAY_CHANGE)
                                if n != "resume")
            raise ValueError(f"--resume {config.resume} continues that run with the settings it "
                             f"saved: {flags} cannot be given with it (only {allowed}, and "
                             f"--out naming the same directory, can; a new run needs a new "
                             "--out)")
        if config.iters is not None and config.epochs is not None:
            raise ValueError("give --iters or --epochs, not both")
        if config.iters is not None:            # (--epochs: checked once the data is open)
            checkpoint = os.path.join(config.resume, "checkpoint.npz")
            try:
                iteration = io.load_meta(checkpoint).get("iteration")
            except ValueError as e:
                raise ValueError(f"--resume {config.resume}: {e}") from None
            if isinstance(iteration, int) and config.iters < iteration:
                raise ValueError(_past_the_length(config.resume, iteration, config.iters))
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable ({e})") from None
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: not a run's configuration (a JSON object of settings), "
                             f"got a JSON {type(saved).__name__}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: v for k, v in saved.items() if k in known}
        _check_saved_types(saved, path)
        saved.setdefault("bias_lr_mult", 1.0)   # a run from before the setting: biases at 1x
        # a resumed run keeps its settings; only where it runs, and for how long, may change
        saved.update(resume=config.resume, out=config.resume, device=config.device,
                     progress=config.progress)
        if _was_given("validate_data", config, given):     # else the run's own choice
            saved["validate_data"] = config.validate_data
        if config.iters is not None:
            saved["iters"] = config.iters
        elif config.epochs is not None:
            saved["iters"], saved["epochs"] = None, config.epochs
        if saved.get("iters") is not None:
            saved["epochs"] = None      # the saved iters may have been resolved from --epochs
        return TrainConfig(**saved)

    def _load_init(self, path):
        weights = io.load(path)
        _check_finite({k: v for k, v in weights.items() if not k.startswith(OPTIMIZER_PREFIX)},
                      f"--init {path}")
        vgg = "features.0.weight" in weights
        try:
            if vgg:
                self.model.load_vgg16(weights)
            else:
                self.model.load_state_dict({k: v for k, v in weights.items()
                                            if not k.startswith(OPTIMIZER_PREFIX)})
        except ValueError as e:
            raise ValueError(f"--init {path}: {e}") from None
        self.log(f"initialised the backbone from torchvision VGG16 weights {path}" if vgg
                 else f"initialised the model from {path}")

    def _resume(self):
        path = os.path.join(self.dir, "checkpoint.npz")
        arrays, meta = io.load(path, with_meta=True)
        if meta.get("kind") != "minifcn-checkpoint":
            raise ValueError(f"{path}: not a minifcn training checkpoint")
        weights = {k: v for k, v in arrays.items() if not k.startswith(OPTIMIZER_PREFIX)}
        try:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict({k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items()
                                            if k.startswith(OPTIMIZER_PREFIX)})
            self.loader.load_state_dict(meta["loader"])
            for name, layer in _dropout_layers(self.model).items():
                layer.rng.bit_generator.state = meta["dropout_rng"][name]
            self.iteration = _meta_number(meta, "iteration", int, minimum=0)
            self.best_miou = _meta_number(meta, "best_mean_iou", float, default=-1.0)
        except KeyError as e:
            raise ValueError(f"{path}: incomplete checkpoint (no {e} in it)") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None
        if self._length_asked and self.config.iters < self.iteration:
            raise ValueError(_past_the_length(self.dir, self.iteration, self.config.iters))
        self.log(f"resuming {self.dir} at iteration {self.iteration}")

    def _open_log(self):
        """log.csv, keeping only the rows up to the checkpoint's iteration (a run killed after
        its last checkpoint may have logged iterations that will now be run again)."""
        path = os.path.join(self.dir, "log.csv")
        rows = []
        if self.config.resume is not None and os.path.isfile(path):
            rows = self._read_log(path)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)
        except BaseException:
            os.remove(tmp)
            raise
        os.replace(tmp, path)
        f = open(path, "a", newline="")
        return f, csv.DictWriter(f, LOG_FIELDS)

    def _read_log(self, path):
        """The rows of log.csv up to the checkpoint's iteration; a damaged file is an error
        that names it and the line (the file is left as it is)."""
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "iteration" not in reader.fieldnames:
                    raise ValueError(f"its header {reader.fieldnames} has no 'iteration' column")
                unknown = [name for name in reader.fieldnames if name not in LOG_FIELDS]
                if unknown:
                    raise ValueError(f"its header has columns minifcn does not write: {unknown}")
                rows = []
                for r in reader:
                    if None in r:
                        raise ValueError(f"line {reader.line_num} has more fields than the header")
                    try:
                        it = int(r["iteration"])
                    except (TypeError, ValueError):
                        raise ValueError(f"line {reader.line_num} does not start with an "
                                         f"iteration number: {r['iteration']!r}") from None
                    if it <= self.iteration:
                        rows.append(r)
                return rows
        except (csv.Error, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is damaged ({e}); repair or delete it to resume "
                             "(the checkpoint does not need it)") from None

    # -- one step, validation, files ------------------------------------------------------
    def step(self, lr):
        x, y = self.loader.next_batch()
        x, y = to_device(x, self.config.device), to_device(y, self.config.device)
        self.model.train()
        with np.errstate(over="ignore", invalid="ignore"):     # a diverging run is caught below
            logits = self.model.forward(x)
            loss = self.criterion.forward(logits, y)
        self.last_pixels = self.criterion.counted                          # pixels in the loss
        if not math.isfinite(loss):
            raise TrainingError(f"iteration {self.iteration + 1}: the loss is {loss}; "
                                + diagnose_nonfinite(self.model, x, y, self.criterion))
        with np.errstate(over="ignore", invalid="ignore"):     # caught at validation
            self.model.backward(self.criterion.backward())
            self.optimizer.step(lr)
        return loss

    def validate(self):
        c = self.config
        self.model.eval()
        cm = ConfusionMatrix(self.num_classes)
        # images of different sizes would be padded to a common size in a batch, which
        # changes what the network sees near their borders: batch only the synthetic data
        batch = c.batch_size if c.data == "synthetic" else 1
        loader = BatchLoader(self.val_set, batch, shuffle=False, preprocess=c.preprocess)
        for x, y in loader:
            logits = self.model.forward(to_device(x, c.device))
            cm.update(to_numpy(logits.argmax(axis=1)), y)
        self.model.clear_cache()
        return cm.compute()

    def save_pictures(self):
        """val_samples.png: one row per validation sample, image | truth | prediction."""
        from PIL import Image
        c = self.config
        pre = get_preprocess(c.preprocess)
        rows = []
        self.model.eval()
        for i in range(min(c.pictures, len(self.val_set))):
            image, mask = self.val_set[i]
            x = to_device(pre(image)[None], c.device)
            pred = to_numpy(self.model.forward(x).argmax(axis=1))[0]
            rows.append(np.concatenate([deprocess(pre(image), pre), colorize(mask),
                                        colorize(pred.astype(np.uint8))], axis=1))
        if rows:
            width = max(r.shape[1] for r in rows)
            rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                    for r in rows]
            tmp = os.path.join(self.dir, "val_samples.png.tmp")
            Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
            os.replace(tmp, os.path.join(self.dir, "val_samples.png"))
        self.model.clear_cache()

    def checkpoint(self):
        meta = {"kind": "minifcn-checkpoint", "iteration": self.iteration,
                "model": self.spec, "config": dataclasses.asdict(self.config),
                "loader": self.loader.state_dict(),
                "dropout_rng": {n: l.rng.bit_generator.state
                                for n, l in _dropout_layers(self.model).items()},
                "best_mean_iou": self.best_miou}
        save_checkpoint(os.path.join(self.dir, "checkpoint.npz"), self.model, self.optimizer, meta)

    def write_log(self, row):
        f, writer = self._log_file
        writer.writerow(row)
        f.flush()

    # -- the loop --------------------------------------------------------------------------
    def train(self):
        c = self.config
        self.log(f"training {type(self.model).__name__} ({self.model.num_params():,} parameters) "
                 f"on {c.data} ({len(self.train_set)} train / {len(self.val_set)} val images, "
                 f"{self.num_classes} classes) for {c.iters} iterations; run directory {self.dir}")
        if c.device == "cpu":
            self.log(f"NumPy's BLAS: {openblas_core.describe()}")
        bar = _progress(c.iters, self.iteration, c.progress)
        losses = []
        warned = warned_void = False
        ln_c = math.log(self.num_classes)
        try:
            while self.iteration < c.iters:
                lr = learning_rate(c.lr, self.iteration, c.iters, c.schedule, warmup=c.warmup)
                t0 = time.perf_counter()
                loss = self.step(lr)
                elapsed = time.perf_counter() - t0
                self.iteration += 1
                # per pixel: the summed loss (paper recipe) over the pixels it summed
                per_pixel = loss if c.recipe != "paper" else loss / max(1, self.last_pixels)
                losses.append(per_pixel)
                row = {"iteration": self.iteration, "epoch": self.loader.epoch,
                       "loss": f"{loss:.6g}", "lr": f"{lr:.6g}", "it_per_s": f"{1 / elapsed:.3f}"}
                bar.set_postfix_str(f"loss {loss:.4f}" + (
                    f" mIU {_number(self.metrics['mean_iou'], '.3f')}" if self.metrics else ""))
                bar.update(1)
                if not warned and self._stuck(losses, ln_c):
                    warned = True
                    self.log(f"warning: after {self.iteration} iterations the loss per pixel "
                             f"({per_pixel:.4f}) is still ln(num_classes) = {ln_c:.4f}: the network "
                             "is not learning (weights not loaded? learning rate too small?)")
                if self.iteration % c.val_every == 0 or self.iteration == c.iters:
                    self._check_parameters()             # never validate or save NaN weights
                    self.metrics = self.validate()
                    row.update({k: _number(self.metrics[k], ".6f") for k in LOG_FIELDS[5:]})
                    if self.metrics["mean_iou"] is None and not warned_void:
                        warned_void = True
                        self.log("warning: the validation split has no labelled pixels (all "
                                 "255): no validation score, and no best.npz")
                    elif (self.metrics["mean_iou"] is not None
                          and self.metrics["mean_iou"] > self.best_miou):
                        self.best_miou = self.metrics["mean_iou"]
                        save_checkpoint(os.path.join(self.dir, "best.npz"), self.model, None,
                                        {"kind": "minifcn-weights", "model": self.spec,
                                         "iteration": self.iteration, "metrics": self.metrics})
                    if c.pictures:
                        self.save_pictures()
                    self.write_log(row)
                    self.checkpoint()
                    self.checkpointed = True
                    bar.write(f"iteration {self.iteration}: loss {loss:.4f}, validation "
                              f"pixel acc {_number(self.metrics['pixel_acc'], '.3f')}, mean IU "
                              f"{_number(self.metrics['mean_iou'], '.3f')}")
                else:
                    self.write_log(row)
        finally:
            bar.close()
            self._log_file[0].close()
        if self.metrics is None:                # resumed a run that had already finished
            self.metrics = self.validate()
        with open(os.path.join(self.dir, "metrics.json.tmp"), "w") as f:
            json.dump(self.metrics, f, indent=2)
        os.replace(os.path.join(self.dir, "metrics.json.tmp"), os.path.join(self.dir, "metrics.json"))
        return self.metrics

    def _check_parameters(self):
        """Stop, keeping the last checkpoint, if an update made a parameter inf or NaN (the
        loss of the step was still finite; the next one would not be)."""
        for name, arr in self.model.params.items():
            if not bool(get_array_module(arr).isfinite(arr).all()):
                kept = ("the last checkpoint is kept" if self.checkpointed
                        else "no checkpoint was written")
                raise TrainingError(f"iteration {self.iteration}: the update made parameter "
                                    f"{name!r} non-finite (lower --lr, or --weight-decay or "
                                    f"--bias-lr-mult if they are large); {kept}")

    @staticmethod
    def _stuck(losses, ln_c):
        """True when, well into training, the recent mean loss per pixel (``losses``: one
        per iteration, per pixel) is still ln(C)."""
        if len(losses) < 200 or len(losses) % 50:
            return False
        recent = float(np.mean(losses[-50:]))
        return abs(recent - ln_c) < 0.01 * ln_c


def _meta_number(meta, key, kind, default=None, minimum=None):
    """``meta[key]`` (``default`` where absent) as a finite number of ``kind`` (``int``: a
    whole number), at least ``minimum``; else a ValueError that names the field (a
    hand-edited checkpoint gave Python's own 'invalid literal for int()')."""
    value = meta.get(key, default) if default is not None else meta[key]
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (kind is float or float(value).is_integer())
          and (minimum is None or value >= minimum))
    if not ok:
        what = "a whole number" if kind is int else "a finite number"
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{key!r} must be {what}{bound}, got {value!r}")
    return kind(value)


def _number(value, spec):
    """A metric for the log and the console: ``format(value, spec)``, or ``n/a`` for None
    (no labelled pixels)."""
    return "n/a" if value is None else format(value, spec)


def diagnose_nonfinite(model, x, y, criterion):
    """Replay the step node by node; name the first layer whose output, or (going back)
    whose incoming gradient or parameter gradient, is not finite."""
    xp = get_array_module(x)
    found = []

    def check(kind):
        def hook(name, value):
            if not found and not bool(xp.isfinite(value).all()):
                found.append(f"the first non-finite {kind} is at layer {name!r}")
        return hook

    for name, arr in model.params.items():
        if not bool(xp.isfinite(arr).all()):
            return f"parameter {name!r} is not finite (the previous step diverged; lower --lr)"
    if not bool(xp.isfinite(x).all()):
        return "the input batch itself is not finite"
    with np.errstate(all="ignore"):            # the replay overflows, as the step did
        logits = model.forward(x, hook=check("output"))
        if found:
            return found[0] + " (lower --lr, or check the input scale)"
        criterion.forward(logits, y)
        model.backward(criterion.backward(), hook=check("gradient"))
    for name, g in model.grads.items():
        if not found and not bool(xp.isfinite(g).all()):
            found.append(f"the first non-finite gradient is of parameter {name!r}")
    return (found[0] if found else "every layer's output was finite; the loss overflowed "
            "(logits too large: lower --lr)")


class _NoBar:
    def set_postfix_str(self, *a, **k):
        pass

    def update(self, *a):
        pass

    def write(self, text):
        print(text, flush=True)

    def close(self):
        pass


def _progress(total, initial, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)

"""The settings of one training run, validated in one place (CLI flags, ``--config run.yaml``, the workflow)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from zigzag.errors import ZigzagError
from zigzag.modelimport import MODELS, builtin_has_batch_norm, check_model_name, is_custom
from zigzag.runchoices import (
    LOSSES,
    MAX_ITER,
    NCV_COLD,
    NCV_WARM,
    PRECISIONS,
    REFINE_EVERY,
    REFINE_FROM,
    REFINE_UNTIL,
    TOL,
)
from zigzag.scheduleconfig import SCHEDULE, SCHEDULE_KEYS, schedule_setting
from zigzag.settings import MAX_SEED, MAX_STEPS, Spec, json_schema, parse_step_selection, setting, specs

OPTIMIZERS = ("gd", "sgd")
RAW_DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "gzip", "lzf")
DEVICES = ("auto", "cpu", "cuda")
# Wider than this no machine holds a model: even the cnn has 7.7e10 parameters at width 1024 (over 4 TB with its
# gradient and lag ring; VGG-16 and the ResNets 30 times more). Below it the trainer estimates what the model and
# its lag ring need and compares that with the device's available memory before allocating anything.
MAX_WIDTH = 1024
# The trajectory stores 2 (lags + 1) numbers per step and the lag ring holds lags + 1 gradients; the analysis
# needs lags >= h - 1 (the paper's h is 5).
MAX_LAGS = 1000

# The keys of a run's ``sharpness`` mapping; the flag --sharpness sets ``every``.
SHARPNESS = {
    "every": Spec("top Hessian eigenvalue (edge of stability) at none, every:K or a list of steps", "steps",
                  "none", fill=False),
    "subset": Spec("training samples the Hessian's loss is taken on (default all); with BatchNorm a multiple of "
                   "micro_batch", "int", None, low=1, fill=False),
    "refine_every": Spec("with every:K, solve every this many steps where the sharpness nears 2/lr (see "
                         "refine_from, refine_until); K or more: the grid alone", "int", REFINE_EVERY, low=1,
                         fill=False),
    "refine_from": Spec("refine once the sharpness, or its linear extrapolation to the next grid step, reaches this "
                        "fraction of 2/lr", "float", REFINE_FROM, low=0, low_open=True, fill=False),
    "refine_until": Spec("refine until a solve reaches this fraction of 2/lr (1 - the analysis's eos_tolerance)",
                         "float", REFINE_UNTIL, low=0, low_open=True, fill=False),
    "tol": Spec("Lanczos tolerance: a solve stops once |H v - lambda v| <= tol lambda", "float", TOL, low=0,
                low_open=True, high=1, high_open=True, fill=False),
    "max_iter": Spec("Lanczos cycles at most; a solve that stops there is recorded with sharpness_converged 0",
                     "int", MAX_ITER, low=1, fill=False),
    "ncv": Spec(f"Lanczos basis size, products per cycle (default {NCV_COLD} for the first solve, {NCV_WARM} for "
                "the next, warm-started ones)", "int", None, low=3, fill=False),
}


@dataclass
class RunConfig:
    """One run. ``steps`` counts updates: epochs for GD, iterations for SGD (``epochs`` x batches).

    Each field declares its help, choices, bounds and default (zigzag/settings.py): the flags of
    ``zigzag train``, the check below and the ``runs`` entries of the workflow's config come from them.
    """

    dataset: str = setting(None, "prepared dataset file (zigzag prepare); in the workflow's config a key of "
                                 "datasets", unset=True)
    model: str = setting(None, f"the network: {', '.join(MODELS)}, or an import path package.module:factory "
                               f"(called with num_classes, in_channels, image_size and model_args)", unset=True)
    model_args: dict = setting({}, "keyword arguments of a package.module:factory model's factory", flag=False)
    loss: str = setting("cross_entropy", "training loss: cross_entropy, or mse = the mean of 1/2 sum_c (f_c(x) - "
                                         "onehot_c)^2", choices=LOSSES)
    lr: float = setting(0.0, "constant learning rate (required unless a warm-up schedule sets it)", low=0,
                        low_open=True, unset=True)
    steps: int = setting(0, "GD steps (epochs)", low=1, high=MAX_STEPS, unset=True)
    width: float = setting(1.0, "channel width multiplier (1 = the standard CIFAR model)", low=0, low_open=True,
                           high=MAX_WIDTH)
    batch_norm: bool = setting(True, "BatchNorm in the cnn model (--no-batch-norm for exact one-batch "
                                     "gradients)")
    optimizer: str = setting("gd", "gd (full batch) or sgd", choices=OPTIMIZERS)
    epochs: int = setting(0, f"SGD epochs (epochs x batches per epoch at most {MAX_STEPS} iterations)", low=1,
                          high=MAX_STEPS, unset=True)
    batch_size: int = setting(0, "SGD batch size", low=1, unset=True)
    base_batch: int = setting(0, "SGD linear scaling: lr x batch_size / base_batch", low=1, unset=True)
    momentum: float = setting(0.0, "SGD momentum", low=0, high=1, high_open=True)
    nesterov: bool = setting(False, "Nesterov momentum: step along g_k + momentum x buffer (needs momentum > 0)")
    weight_decay: float = setting(0.0, "weight decay", low=0)
    lags: int = setting(8, "lags L of the gradient statistics (window h <= L + 1); lags beyond the run's steps "
                           "are recorded as NaN", low=1, high=MAX_LAGS)
    micro_batch: int = setting(1000, "micro-batch size of the gradient accumulation (a memory bound, not a batch "
                                     "size: larger than the training set means one pass over all of it)", low=1)
    seed: int = setting(0, "seed of the initialisation and the SGD batches", low=0, high=MAX_SEED)
    eval_every: int = setting(10, "test loss/accuracy every N steps", low=1)
    per_layer: bool = setting(False, "record the lag statistics of every parameter tensor too (/steps/layer_dot, "
                                     "/steps/layer_opposite)")
    raw_gradients: str | list[int] = setting("none", "steps whose whole gradient g_k is stored: none, every:N "
                                                     "or a list of steps like 0,5,10, each below the run's steps")
    raw_parameters: str | list[int] = setting("none", "steps whose parameters theta_k (float32) are stored, as "
                                                       "raw_gradients (e.g. every:1 for a divergence figure)")
    init_perturbation: float = setting(0.0, "relative perturbation eps of the initial weights: p += eps |p| z, z ~ "
                                            "N(0, 1) from a generator seeded by (seed, PERTURBATION_STREAM); 0: none",
                                       low=0)
    raw_dtype: str = setting("float32", "dtype of the stored gradients", choices=RAW_DTYPES)
    raw_compression: str = setting("none", "HDF5 compression of the stored gradients", choices=COMPRESSIONS)
    checkpoint_every: int = setting(50, "checkpoint every N steps (resume after a kill)", low=1)
    device: str = setting("auto", "training device", choices=DEVICES)
    precision: str = setting("tf32", "GPU arithmetic: fp32 (TF32 off), tf32 (TF32 + channels_last) or bf16 "
                                     "(bf16 autocast + channels_last, float32 gradient and state); all three are "
                                     "float32 on a CPU", choices=tuple(PRECISIONS))
    compile: bool = setting(False, "torch.compile the model for the training step's forward+backward")
    schedule: dict = setting({}, "learning-rate schedule", keys=SCHEDULE, flag=False)
    sharpness: dict = setting({}, "top Hessian eigenvalue (edge of stability) at selected steps", keys=SHARPNESS,
                              flag="every")

    @classmethod
    def json_schema(cls) -> dict:
        """A ``runs`` entry of the workflow's config (checked with jsonschema, defaults filled in)."""
        return json_schema(cls, required=("dataset", "model"))

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        declared = specs(cls)
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise ZigzagError(f"unknown run setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(declared))}")
        for name, spec in declared.items():
            if name in values and spec.type != "steps" and values[name] is not None:
                spec.check(name, values[name])
        schedule = values.get("schedule") or {}
        needed = ["dataset", "model"] + (["lr"] if schedule_setting(schedule, "kind") == "constant" else [])
        needed += ["epochs", "batch_size"] if values.get("optimizer") == "sgd" else ["steps"]
        missing = [name for name in needed if values.get(name) is None]
        if missing:
            optimizer = values.get("optimizer", "gd")
            raise ZigzagError(f"missing run setting(s) {', '.join(missing)} (optimizer {optimizer}"
                              f"{', constant lr' if 'lr' in missing else ''})")
        if schedule_setting(schedule, "kind") != "constant" and "growth" not in schedule:
            values = {**values, "schedule": {**schedule, "growth": "paper"}}  # recorded: the default spelt out
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def lr_scale(self) -> float:
        """Linear scaling rule: batch_size / base_batch when base_batch is set (SGD), else 1."""
        if self.optimizer == "sgd" and self.base_batch:
            return self.batch_size / self.base_batch
        return 1.0

    @property
    def effective_lr(self) -> float:
        """The constant lr (a warm-up schedule sets its own, from its scaled eta0)."""
        return self.lr * self.lr_scale

    def validate(self) -> None:
        """Every field against its declaration, then what depends on several of them."""
        def bad(key, value, allowed):
            raise ZigzagError(f"invalid {key}={value!r}: must be {allowed}")

        for name, spec in specs(type(self)).items():
            spec.check(name, getattr(self, name))
        check_model_name(self.model)
        if self.model_args and not is_custom(self.model):
            bad("model_args", self.model_args, "empty for a built-in model (it is passed to a package.module:factory)")
        constant = self.schedule_setting("kind") == "constant"
        if constant and not self.lr > 0:
            bad("lr", self.lr, "a number > 0")
        if self.optimizer == "gd" and self.steps < 1:
            bad("steps", self.steps, "an integer >= 1 (full-batch GD: one step per epoch)")
        if self.optimizer == "sgd":
            if self.epochs < 1:
                bad("epochs", self.epochs, "an integer >= 1 for optimizer sgd")
            if self.batch_size < 1:
                bad("batch_size", self.batch_size, "an integer >= 1 for optimizer sgd")
        if self.nesterov and self.momentum == 0:
            bad("nesterov", self.nesterov, "false without momentum (set momentum > 0)")
        parse_step_selection(self.raw_gradients, *self.step_bound("raw_gradients"))
        parse_step_selection(self.raw_parameters, *self.step_bound("raw_parameters"))
        self._validate_schedule()
        self._validate_sharpness()

    def step_bound(self, key: str) -> tuple[int, str, str]:
        """``parse_step_selection``'s bound for the step list ``key`` before the dataset is read: GD's steps,
        or for SGD (whose steps follow from the dataset's size) the most steps a run may have."""
        if self.optimizer == "gd":
            return self.steps, key, "the run's steps"
        return MAX_STEPS, key, "the steps a run may have"

    def _validate_sharpness(self) -> None:
        s = self.sharpness
        unknown = sorted(set(s) - set(SHARPNESS))
        if unknown:
            raise ZigzagError(f"unknown sharpness key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SHARPNESS))}")
        for key, value in s.items():
            SHARPNESS[key].check(f"sharpness.{key}", value)
        parse_step_selection(s.get("every", "none"), *self.step_bound("sharpness.every"))
        if "subset" in s and not is_custom(self.model):  # a built-in's layers are known without building it
            self.check_sharpness_subset(builtin_has_batch_norm(self.model, self.batch_norm))

    def check_sharpness_subset(self, batch_norm: bool) -> None:
        """With BatchNorm (``batch_norm``: read from the built model) the loss depends on how samples are batched:
        the Hessian's loss must use the ghost batches of training (micro_batch), so the subset must split into
        them exactly."""
        s = self.sharpness
        if "subset" in s and batch_norm and s["subset"] % self.micro_batch:
            below = s["subset"] // self.micro_batch * self.micro_batch
            nearest = " or ".join(str(v) for v in (below, below + self.micro_batch) if v > 0)
            raise ZigzagError(f"invalid sharpness.subset={s['subset']}: with BatchNorm it must be a multiple of "
                              f"micro_batch={self.micro_batch} (the ghost batches GD trains on), e.g. {nearest}; "
                              f"leave it out to use the whole training set")

    def sharpness_setting(self, key: str):
        """``sharpness.<key>`` as given, else its declared default."""
        return self.sharpness.get(key, SHARPNESS[key].default)

    def schedule_setting(self, key: str):
        """``schedule.<key>`` as given, else its declared default."""
        return schedule_setting(self.schedule, key)

    def _validate_schedule(self) -> None:
        s = self.schedule
        kind = schedule_setting(s, "kind")
        SCHEDULE["kind"].check("schedule.kind", kind)
        unknown = sorted(set(s) - SCHEDULE_KEYS[kind])
        if unknown:
            raise ZigzagError(f"unknown schedule key(s) {', '.join(unknown)} for {kind}; "
                              f"valid: {', '.join(sorted(SCHEDULE_KEYS[kind]))}")
        required = SCHEDULE_KEYS[kind] & {"eta0", "omega", "change_point"}
        for key in sorted(set(s) | required):
            SCHEDULE[key].check(f"schedule.{key}", s.get(key))
        self.check_change_point()

    def schedule_units(self, batches_per_epoch: int | None = None) -> int | None:
        """Units of the schedule in the whole run: GD steps, SGD epochs (unit epoch) or iterations (unit
        iteration: epochs x ``batches_per_epoch``, None while the dataset's size is unknown)."""
        if self.optimizer == "gd":
            return self.steps
        if self.schedule_setting("unit") == "epoch":
            return self.epochs
        return None if batches_per_epoch is None else self.epochs * batches_per_epoch

    def check_change_point(self, batches_per_epoch: int | None = None) -> None:
        """A warmup_cosine change point t must lie in the run: 0 <= t < its schedule units."""
        units = self.schedule_units(batches_per_epoch)
        t = self.schedule.get("change_point")
        if self.schedule.get("kind") == "warmup_cosine" and units is not None and t >= units:
            raise ZigzagError(f"invalid schedule.change_point={t}: beyond the budget of {units} "
                              f"{self.schedule_setting('unit') if self.optimizer == 'sgd' else 'step'}s; "
                              f"must be in 0..{units - 1}")


def load_yaml(path, what: str):
    """A YAML file as Python values; a syntax error or a key given twice in one mapping (which YAML
    readers silently resolve as last-wins) is one ``ZigzagError`` naming the line."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise ZigzagError(f"{what} {path}, line {key_node.start_mark.line + 1}: key {key!r} is given "
                                      f"twice in the same mapping; keep one (names must be unique)")
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path) as f:
            return yaml.load(f, Loader=Loader)
    except OSError as err:
        raise ZigzagError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ZigzagError(f"{what} {path} is not a YAML text file: byte {err.start} is not UTF-8 text ({err.reason}); "
                          f"give a YAML file") from None
    except yaml.YAMLError as err:
        raise ZigzagError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None

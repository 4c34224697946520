"""The settings of one training run, validated in one place (CLI flags, ``--config run.yaml``, the workflow)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from zigzag.errors import ZigzagError
from zigzag.models import MODELS
from zigzag.precision import PRECISIONS
from zigzag.schedules import GROWTHS

OPTIMIZERS = ("gd", "sgd")
RAW_DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "gzip", "lzf")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunConfig:
    """One run. ``steps`` counts updates: epochs for GD, iterations for SGD (``epochs`` x batches)."""

    dataset: str
    model: str
    lr: float = 0.0
    steps: int = 0
    width: float = 1.0
    batch_norm: bool = True
    optimizer: str = "gd"
    epochs: int = 0
    batch_size: int = 0
    base_batch: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    lags: int = 8
    micro_batch: int = 1000
    seed: int = 0
    eval_every: int = 10
    raw_gradients: str | list[int] = "none"
    raw_dtype: str = "float32"
    raw_compression: str = "none"
    checkpoint_every: int = 50
    device: str = "auto"
    precision: str = "tf32"
    compile: bool = False
    schedule: dict = field(default_factory=dict)
    sharpness: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ZigzagError(f"unknown run setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        for f in dataclasses.fields(cls):
            if f.name in values and f.type in TYPE_NAMES and not _has_type(values[f.name], f.type):
                raise ZigzagError(f"invalid {f.name}={values[f.name]!r}: must be {TYPE_NAMES[f.type]}")
        needed = ("dataset", "model") if values.get("schedule", {}).get("kind", "constant") != "constant" \
            else ("dataset", "model", "lr")
        missing = [name for name in needed if values.get(name) is None]
        if missing:
            raise ZigzagError(f"missing run setting(s) {', '.join(missing)}")
        schedule = values.get("schedule") or {}
        if schedule.get("kind", "constant") != "constant" and "growth" not in schedule:
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
        def bad(key, value, allowed):
            raise ZigzagError(f"invalid {key}={value!r}: must be {allowed}")

        if self.model not in MODELS:
            bad("model", self.model, f"one of {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        constant = self.schedule.get("kind", "constant") == "constant"
        if constant and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", self.lr, "a number > 0")
        if self.width <= 0:
            bad("width", self.width, "> 0")
        if self.optimizer == "gd" and self.steps < 1:
            bad("steps", self.steps, "an integer >= 1 (full-batch GD: one step per epoch)")
        if self.optimizer == "sgd":
            if self.epochs < 1:
                bad("epochs", self.epochs, "an integer >= 1 for optimizer sgd")
            if self.batch_size < 1:
                bad("batch_size", self.batch_size, "an integer >= 1 for optimizer sgd")
        if self.lags < 1:
            bad("lags", self.lags, "an integer >= 1")
        if self.micro_batch < 1:
            bad("micro_batch", self.micro_batch, "an integer >= 1")
        if self.seed < 0:
            bad("seed", self.seed, "an integer >= 0")
        if self.eval_every < 1:
            bad("eval_every", self.eval_every, "an integer >= 1")
        if self.checkpoint_every < 1:
            bad("checkpoint_every", self.checkpoint_every, "an integer >= 1")
        if not 0 <= self.momentum < 1:
            bad("momentum", self.momentum, "in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, ">= 0")
        if self.raw_dtype not in RAW_DTYPES:
            bad("raw_dtype", self.raw_dtype, f"one of {', '.join(RAW_DTYPES)}")
        if self.raw_compression not in COMPRESSIONS:
            bad("raw_compression", self.raw_compression, f"one of {', '.join(COMPRESSIONS)}")
        if self.device not in DEVICES:
            bad("device", self.device, f"one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        if not isinstance(self.compile, bool):
            bad("compile", self.compile, "true or false")
        parse_step_selection(self.raw_gradients, 1 << 62, "raw_gradients")
        self._validate_schedule()
        self._validate_sharpness()

    def _validate_sharpness(self) -> None:
        s = self.sharpness
        allowed = {"every", "subset", "tol", "max_iter", "ncv"}
        unknown = sorted(set(s) - allowed)
        if unknown:
            raise ZigzagError(f"unknown sharpness key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
        parse_step_selection(s.get("every", "none"), 1 << 62, "sharpness.every")
        for key, low in (("subset", 1), ("max_iter", 1), ("ncv", 3)):
            if key in s and not (isinstance(s[key], int) and s[key] >= low):
                raise ZigzagError(f"invalid sharpness.{key}={s[key]!r}: must be an integer >= {low}")
        if "tol" in s and not (isinstance(s["tol"], (int, float)) and 0 < s["tol"] < 1):
            raise ZigzagError(f"invalid sharpness.tol={s['tol']!r}: must be in (0, 1)")
        # With BatchNorm the loss depends on how samples are batched: the Hessian's loss must use the
        # ghost batches of training (micro_batch), so the subset must split into them exactly.
        if "subset" in s and self.has_batch_norm and s["subset"] % self.micro_batch:
            below = s["subset"] // self.micro_batch * self.micro_batch
            nearest = " or ".join(str(v) for v in (below, below + self.micro_batch) if v > 0)
            raise ZigzagError(f"invalid sharpness.subset={s['subset']}: with BatchNorm it must be a multiple of "
                              f"micro_batch={self.micro_batch} (the ghost batches GD trains on), e.g. {nearest}; "
                              f"leave it out to use the whole training set")

    @property
    def has_batch_norm(self) -> bool:
        """vgg16 and the ResNets always have BatchNorm; the cnn has it when ``batch_norm`` is set."""
        return self.model != "cnn" or self.batch_norm

    def _validate_schedule(self) -> None:
        s = self.schedule
        kind = s.get("kind", "constant")
        allowed = {"constant": {"kind"},
                   "warmup_cosine": {"kind", "eta0", "omega", "change_point", "unit", "growth"},
                   "gawu": {"kind", "eta0", "omega", "unit", "h", "max_warmup", "growth"}}
        if kind not in allowed:
            raise ZigzagError(f"invalid schedule.kind={kind!r}: must be one of {', '.join(allowed)}")
        unknown = sorted(set(s) - allowed[kind])
        if unknown:
            raise ZigzagError(f"unknown schedule key(s) {', '.join(unknown)} for {kind}; "
                              f"valid: {', '.join(sorted(allowed[kind]))}")
        for key in sorted(allowed[kind] & {"eta0", "omega"}):
            value = s.get(key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ZigzagError(f"invalid schedule.{key}={value!r}: must be a number > 0")
        if kind == "warmup_cosine" and not (isinstance(s.get("change_point"), int) and s["change_point"] >= 0):
            raise ZigzagError(f"invalid schedule.change_point={s.get('change_point')!r}: must be an integer >= 0")
        if kind != "constant" and s.get("growth", "paper") not in GROWTHS:
            raise ZigzagError(f"invalid schedule.growth={s['growth']!r}: must be one of {', '.join(GROWTHS)} "
                              "(paper: eta_u = exp(omega u) eta_(u-1); constant: exp(omega) per unit)")
        if s.get("unit", "epoch") not in ("epoch", "iteration"):
            raise ZigzagError(f"invalid schedule.unit={s['unit']!r}: must be epoch or iteration")
        if kind == "warmup_cosine" and self.optimizer == "gd" and s["change_point"] >= self.steps:
            raise ZigzagError(f"invalid schedule.change_point={s['change_point']}: beyond the budget of "
                              f"{self.steps} steps; must be in 0..{self.steps - 1}")
        if kind == "warmup_cosine" and self.optimizer == "sgd" and s.get("unit", "epoch") == "epoch" \
                and s["change_point"] >= self.epochs:
            raise ZigzagError(f"invalid schedule.change_point={s['change_point']}: beyond the budget of "
                              f"{self.epochs} epochs; must be in 0..{self.epochs - 1}")


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
    except yaml.YAMLError as err:
        raise ZigzagError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None


TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
              "dict": "a mapping of keys to values"}


def _has_type(value, annotation: str) -> bool:
    """Whether ``value`` (from JSON or YAML) has a field's type: bool is no number, an int is a float."""
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict}[annotation])


def parse_step_selection(spec, total_steps: int, key: str) -> set[int] | int | None:
    """``none`` -> None; ``every:N`` -> N (every N-th step from 0); ``"0,5,9"`` or a list -> a set of steps.

    Steps in a list must lie in ``0..total_steps-1``.
    """
    if spec is None or spec == "none" or spec == []:
        return None
    if isinstance(spec, str) and spec.startswith("every:"):
        try:
            every = int(spec[len("every:"):])
        except ValueError:
            every = 0
        if every < 1:
            raise ZigzagError(f"invalid {key}={spec!r}: 'every:N' needs an integer N >= 1")
        return every
    try:
        steps = {int(s) for s in (spec.split(",") if isinstance(spec, str) else spec)}
    except (TypeError, ValueError):
        raise ZigzagError(f"invalid {key}={spec!r}: use none, every:N or a list of steps like 0,5,10") from None
    outside = sorted(s for s in steps if not 0 <= s < total_steps)
    if outside:
        raise ZigzagError(f"invalid {key}: step(s) {outside} outside the run's steps 0..{total_steps - 1}")
    return steps


def selected(selection: set[int] | int | None, step: int) -> bool:
    if selection is None:
        return False
    if isinstance(selection, int):
        return step % selection == 0
    return step in selection

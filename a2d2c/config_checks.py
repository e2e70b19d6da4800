"""Types and ranges of the config values train.py and eval.py read, checked before anything is built or written.

Hydra parses `trainer.epochs=abc` as the string 'abc' and `optimizer.lr=nan` as a float, and passes
both on: without these checks they surface deep in the Trainer as a traceback, or not at all
(`trainer.epochs=1.5` would train 2 epochs). Each bad value ends with one ConfigError line naming
the key, what is valid and the file that sets it.
"""
import math
from typing import Callable, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from a2d2c.engine.batch_scaling import LR_RULES
from a2d2c.errors import ConfigError

AMP_CHOICES = (None, "bf16", "fp16")  # the keys of engine/build.py AMP_DTYPES, kept here so this module needs no torch
EVAL_NEEDS_CHECKPOINT = "eval.py needs checkpoint=<path to a .pt file a run wrote, e.g. outputs/<run>/checkpoints/best.pt>"


# ------------------------------------------------------------------------------ value tests
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int in Python, not a count


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(low: int) -> Callable:
    return lambda v: _is_int(v) and v >= low


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True) -> Callable:
    def test(v):
        return (_is_number(v) and (v > low if low_open else v >= low)
                and (v < high if high_open else v <= high))
    return test


def or_null(test: Callable) -> Callable:
    return lambda v: v is None or test(v)


def one_of(*choices) -> Callable:
    return lambda v: v in choices


def boolean(v) -> bool:
    return isinstance(v, bool)


def text(v) -> bool:
    return isinstance(v, str) and v != ""


def node(v) -> bool:
    return isinstance(v, DictConfig)


def key_list(v) -> bool:
    return isinstance(v, ListConfig) and all(text(k) for k in v)


class Rule(NamedTuple):
    key: str
    test: Callable
    valid: str          # what is valid, as the error message says it
    optional: bool = False  # the key may be absent (read with .get(), or only some optimizers have it)


# A key under a node that is null is skipped: the node's own rule says whether null is allowed
# (conv.tau_schedule=null turns annealing off). Nodes come before their keys.
TRAIN_RULES = (
    Rule("seed", whole(0), "a whole number >= 0"),
    Rule("trainer", node, "a node of trainer settings"),
    Rule("optimizer", node, "a node with the optimizer's _target_ and lr"),
    Rule("trainer.epochs", whole(1), "a whole number >= 1"),
    Rule("trainer.batch_size", whole(1), "a whole number >= 1"),
    Rule("trainer.per_device_batch_size", or_null(whole(1)), "null or a whole number >= 1", optional=True),
    Rule("trainer.accum_steps", whole(1), "a whole number >= 1"),
    Rule("trainer.eval_batch_size", or_null(whole(1)), "null (the training batch) or a whole number >= 1"),
    Rule("trainer.lr_scaling", or_null(node), "null or a node with rule and base_batch_size", optional=True),
    Rule("trainer.lr_scaling.rule", one_of(*LR_RULES), f"one of {', '.join(LR_RULES)}"),
    Rule("trainer.lr_scaling.base_batch_size", whole(1), "a whole number >= 1"),
    Rule("trainer.device", text, "a device name, e.g. auto, cpu, cuda or cuda:1"),
    Rule("trainer.amp", one_of(*AMP_CHOICES), "null (fp32), bf16 or fp16"),
    Rule("trainer.sync_bn", boolean, "true or false", optional=True),
    Rule("trainer.channels_last", boolean, "true or false"),
    Rule("trainer.compile", boolean, "true or false"),
    Rule("trainer.deterministic", boolean, "true or false"),
    Rule("trainer.clip_grad_norm", or_null(number(0, low_open=True)), "null or a finite number > 0"),
    Rule("trainer.ema", node, "a node with enabled, decay and use_warmup"),
    Rule("trainer.ema.enabled", boolean, "true or false"),
    Rule("trainer.ema.decay", number(0, 1, low_open=True), "a number in (0, 1), e.g. 0.9998"),
    Rule("trainer.ema.use_warmup", boolean, "true or false"),
    Rule("trainer.monitor", or_null(text), "null (the task's metric) or a metric name, e.g. top1"),
    Rule("trainer.resume", or_null(text), "null, auto or the path of a checkpoint"),
    # A bare string would be read letter by letter as a list of keys.
    Rule("trainer.resume_allow", key_list, "a list of config keys, e.g. [trainer.epochs,optimizer.lr]", optional=True),
    Rule("trainer.log_every", whole(1), "a whole number >= 1"),
    Rule("trainer.progress_bar", boolean, "true or false"),
    Rule("trainer.checkpoint_every_steps", or_null(whole(0)), "a whole number >= 0 (0: only at epoch ends)"),
    Rule("trainer.keep_last", whole(1), "a whole number >= 1"),
    Rule("trainer.skip_nonfinite", boolean, "true or false"),
    Rule("trainer.attention", node, "a node with stats, collapse_below and images", optional=True),
    Rule("trainer.attention.stats", boolean, "true or false"),
    Rule("trainer.attention.collapse_below", number(0, 1, high_open=False), "a number in [0, 1] (0: never warn)"),
    Rule("trainer.attention.images", whole(0), "a whole number >= 0 (0: none)"),
    Rule("optimizer.lr", number(0, low_open=True), "a finite number > 0"),
    Rule("optimizer.weight_decay", number(0), "a finite number >= 0", optional=True),
    Rule("optimizer.momentum", number(0, 1), "a number in [0, 1)", optional=True),
)

# τ's schedule (engine/temperature_schedule.py), read only for a conv type with a τ: under conv=static the
# node is null, or holds what a preset wrote for the dynamic types that include it, and is never read
# (condconv too: its sigmoid routing has no τ).
TAU_RULES = (
    Rule("conv.tau_schedule", or_null(node), "null (no annealing) or a node with start, end and epochs or fraction"),
    Rule("conv.tau_schedule.start", number(0, low_open=True), "a finite number > 0"),
    Rule("conv.tau_schedule.end", number(0, low_open=True), "a finite number > 0"),
    # The length: exactly one of epochs and fraction (check_train_config), the other null.
    Rule("conv.tau_schedule.epochs", or_null(number(0)), "null or a finite number >= 0 (fractions allowed)"),
    Rule("conv.tau_schedule.fraction", or_null(number(0, 1, high_open=False)),
         "null or a number in [0, 1] (of trainer.epochs)"),
    Rule("conv.tau_schedule.from_weights", boolean, "true or false", optional=True),
)
NO_TAU_CONVS = ("static", "condconv")  # the conv types without a τ (tau_schedule: null in their configs/conv/*.yaml)

EVAL_RULES = (
    Rule("checkpoint", text, "the path of a .pt file a run wrote"),
    Rule("ema", boolean, "true or false"),
    Rule("device", text, "a device name, e.g. auto, cpu, cuda or cuda:1"),
    Rule("batch_size", or_null(whole(1)), "null (the run's batch) or a whole number >= 1"),
)

# Where a key's default lives, by its first part.
WHERE = {"trainer": "configs/trainer/default.yaml", "optimizer": "configs/optimizer/",
         "seed": "configs/train.yaml", "conv": "configs/conv/"}

_ABSENT, _MISSING, _NO_NODE = object(), object(), object()


def _where(key: str) -> str:
    return WHERE[key.split(".")[0]]


def _lookup(cfg, key: str):
    """The value at `key` (interpolations resolved), or why there is none: _ABSENT (no such key), _MISSING (???)
    or _NO_NODE (a node above it is null, absent, ??? or a plain value: that node's own rule judges it)."""
    parent = cfg
    *path, last = key.split(".")
    for part in path:
        if part not in parent.keys() or OmegaConf.is_missing(parent, part):
            return _NO_NODE
        parent = parent[part]
        if not isinstance(parent, DictConfig):
            return _NO_NODE
    if last not in parent.keys():  # not `in parent`: that is False for a ??? (missing) value
        return _ABSENT
    if OmegaConf.is_missing(parent, last):
        return _MISSING
    return parent[last]


def _shown(value) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if OmegaConf.is_config(value):  # a node or list where a value belongs
        return str(OmegaConf.to_container(value))
    return repr(value)  # quotes a string ('abc'), so `trainer.epochs='1'` is told apart from 1


def _apply(cfg, rules, where) -> None:
    for rule in rules:
        value = _lookup(cfg, rule.key)
        if value is _NO_NODE or (value is _ABSENT and rule.optional):
            continue
        if value is _ABSENT or value is _MISSING:
            raise ConfigError(f"{rule.key} is not set: expected {rule.valid} ({where(rule.key)})")
        if not rule.test(value):
            raise ConfigError(f"{rule.key}={_shown(value)} is not valid: expected {rule.valid} ({where(rule.key)})")


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) for the first value the Trainer reads that has the wrong type or range."""
    epochs = _lookup(cfg, "trainer.epochs")
    if _is_int(epochs) and epochs < 1:  # a count, but of nothing: the user probably wants to evaluate
        raise ConfigError(f"trainer.epochs={epochs} trains nothing; use a count >= 1 "
                          f"(to score a checkpoint, run eval.py checkpoint=<path>)")
    _apply(cfg, TRAIN_RULES, _where)
    check_recipe(cfg)
    if _lookup(cfg, "conv.type") not in NO_TAU_CONVS:  # a model without τ does not read its conv.tau_schedule
        check_tau_schedule(cfg)


def check_tau_schedule(cfg: DictConfig) -> None:
    """conv.tau_schedule's values, and a length given exactly once (epochs or fraction)."""
    _apply(cfg, TAU_RULES, _where)
    tau = _lookup(cfg, "conv.tau_schedule")
    if isinstance(tau, DictConfig) and (tau.epochs is None) == (tau.fraction is None):
        raise ConfigError(f"conv.tau_schedule has epochs={_shown(tau.epochs)} and fraction={_shown(tau.fraction)}: "
                          f"set exactly one (an epoch count, or a fraction of trainer.epochs), the other null "
                          f"({WHERE['conv']})")


def check_recipe(cfg: DictConfig) -> None:
    """recipe.unverified names config keys; a misspelt one would hide the warning it is for."""
    unverified = OmegaConf.select(cfg, "recipe.unverified", default=None)
    if unverified is None:
        return
    if not isinstance(unverified, ListConfig):
        raise ConfigError(f"recipe.unverified={_shown(unverified)} must be a list of config keys "
                          f"(configs/experiment/ presets set it)")
    for key in unverified:
        if not isinstance(key, str) or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"recipe.unverified lists {key!r}, which is no key of this config; "
                              f"list the keys whose values the preset could not check (configs/experiment/)")


_ABSENT = object()


def unverified_recipe_line(cfg: DictConfig):
    """The warning a run prints when its preset's values are recalled, not checked; None when none are."""
    unverified = OmegaConf.select(cfg, "recipe.unverified", default=None)
    if not unverified:
        return None
    values = ", ".join(f"{key}={_shown(OmegaConf.select(cfg, key))}" for key in unverified)
    source = OmegaConf.select(cfg, "recipe.source", default=None) or "its source"
    return (f"recipe: {values} are as recalled, not checked against {source}; "
            f"verify them before quoting a comparison with the paper")


def check_eval_config(cfg: DictConfig) -> None:
    """eval.py's own values; a missing checkpoint= says how to give one."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError(EVAL_NEEDS_CHECKPOINT)
    _apply(cfg, EVAL_RULES, lambda key: "configs/eval.yaml")

"""Loading a classifier's weights from disk: one loader for every place that starts from them.

``build_classifier(init_weights=...)`` loads a *static* model's weights (a torchvision state
dict, or an a2d2c checkpoint of a static run) into the static torchvision backbone before its
convs are converted; ``build_detector(backbone_weights=...)`` loads a classification checkpoint
of the same conv type into the converted backbone. Both read the file and check its keys here.
"""
from __future__ import annotations

import torch
from torch import nn

from a2d2c.errors import ConfigError

__all__ = ["is_classifier_head", "load_classifier_weights"]


def is_classifier_head(key: str) -> bool:
    return key.startswith(("fc.", "classifier."))  # ResNet's and MobileNet's final layers


def _read(path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, foreign or damaged file
        raise ConfigError(f"cannot read {what} {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"cannot read {what} {path}: not a state dict (nor a checkpoint with a 'model' entry)")
    return weights


def load_classifier_weights(model: nn.Module, path, *, what: str, target: str, hint: str,
                            head: str = "skip") -> None:
    """Load the state dict at ``path`` (or its checkpoint's "model" entry) into ``model``.

    Every tensor of ``model`` but the classifier head's must be in the file with the same shape,
    and the file may hold nothing else; otherwise one ConfigError line ("<what> <path> do not
    fit <target>") names the first problem and ends with ``hint``. ``head="skip"`` ignores the file's head; ``head="if_fits"`` loads it
    when its shapes match (same number of classes) and keeps the model's own head otherwise.
    A checkpoint from before τ was model state has no ``.temperature`` buffers; the layers keep theirs.
    """
    weights = _read(path, what)
    own = model.state_dict()
    heads = {k: v for k, v in weights.items() if is_classifier_head(k)}
    weights = {k: v for k, v in weights.items() if not is_classifier_head(k)}
    problems = [f"missing {k}" for k in own
                if k not in weights and not is_classifier_head(k) and not k.endswith(".temperature")]
    problems += [f"unexpected {k}" for k in weights if k not in own]
    problems += [f"{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                 for k, v in weights.items() if k in own and v.shape != own[k].shape]
    if problems:
        raise ConfigError(f"{what} {path} do not fit {target} ({len(problems)} problems, "
                          f"first: {problems[0]}); {hint}")
    if head == "if_fits" and heads and all(k in own and v.shape == own[k].shape for k, v in heads.items()) \
            and all(k in heads for k in own if is_classifier_head(k)):
        weights.update(heads)
    model.load_state_dict(weights, strict=False)

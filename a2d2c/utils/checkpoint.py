"""Checkpoints: written atomically, read back with `weights_only=True`.

A checkpoint is a plain dict of tensors and Python primitives (the resolved config included), so
loading it never runs pickled code and it opens without this package installed.
"""
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from a2d2c.utils.errors import ConfigError


def _fsync_dir(directory: Path):
    # The rename is only durable once the directory entry is on disk too (POSIX; no-op elsewhere).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write):
    """Write through a temp file in the same directory, fsync it, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(state: dict, path) -> Path:
    _atomic_write(path, lambda f: torch.save(state, f))
    return Path(path)


def copy_checkpoint(src, dst) -> Path:
    """Atomic copy, used to publish `last.pt` as `best.pt` without serialising twice."""
    with open(src, "rb") as f_src:
        _atomic_write(dst, lambda f_dst: shutil.copyfileobj(f_src, f_dst))
    return Path(dst)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (give the path of a .pt file a run wrote, e.g. outputs/<run>/checkpoints/best.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for foreign or damaged files
        raise ConfigError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"{path} is not an a2d2c checkpoint (expected a dict with 'model' and 'config'; use a file from <run>/checkpoints/)")
    return state


def capture_rng_state() -> dict:
    """Every RNG a training step may draw from, as tensors and primitives (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict):
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    # random.setstate wants the nested tuples back that serialisation may have turned into lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# What must agree between a checkpoint and the run that loads its weights.
MODEL_IDENTITY = (("backbone", "name"), ("conv", "type"), ("dataset", "num_classes"), ("dataset", "stem"))


def check_same_model(saved_config: dict, config, path):
    """One clear line when a checkpoint was trained with another backbone, conv type or class count."""
    differences = []
    for section, key in MODEL_IDENTITY:
        saved = saved_config.get(section, {}).get(key)
        wanted = config[section][key]
        if saved != wanted:
            differences.append(f"{section}.{key}={saved} (this run: {wanted})")
    if differences:
        raise ConfigError(f"checkpoint {path} was trained with {', '.join(differences)}; resume it with the same "
                          f"settings or start a new run without trainer.resume")


def load_weights(model: torch.nn.Module, state_dict: dict, path):
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        # PyTorch lists every mismatched tensor over many lines; the first ones say enough.
        details = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise ConfigError(f"checkpoint {path} does not fit this model ({details}); was it trained with another "
                          f"backbone, conv type or class count?") from e

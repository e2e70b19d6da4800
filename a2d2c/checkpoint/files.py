"""Checkpoints: checksummed, written atomically, read back with `weights_only=True`.

A checkpoint is a plain dict of tensors and Python primitives (the resolved config included), so
loading it never runs pickled code and it opens with plain `torch.load` without this package.
It carries a SHA-256 of its own content under "checksum": a truncated file fails to unzip and
a damaged one fails the checksum, and either is reported by name (`resume=auto` then falls back
to the previous good checkpoint).
"""
import errno
import hashlib
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from a2d2c.checkpoint.config_upgrade import upgrade_saved_configs
from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)

CHECKSUM_KEY = "checksum"
# What a checkpoint holds, versioned. 1: the first layout, no "format" key; 2: adds "format",
# "batch" (per-device batch, accumulation, world size), "class_map" and "resume_history".
FORMAT_VERSION = 2
FORMAT_KEY = "format"
# What each reader needs. Resuming needs the run state; evaluating needs the weights and config.
# (Keys added by later formats are read with defaults: an older checkpoint that has these still loads.)
EVAL_KEYS = ("model", "config", "epoch")
RESUME_KEYS = ("model", "optimizer", "epoch", "step", "rng", "config", "metrics", "best")
# Numbered checkpoints (periodic and end-of-epoch) are kept for resume=auto to fall back on.
NUMBERED = re.compile(r"step-(\d+)\.pt")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be written or trusted (damaged, foreign, unsafe). One line, naming the file."""


class CheckpointFormatError(CheckpointError):
    """A sound checkpoint of a format this version cannot use: not damage, so never skipped over."""


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


def state_digest(state: dict) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every other value's repr, in dict order.

    Computed from the loaded objects rather than the file bytes, so the checksum can live inside
    the file it covers and the file stays a plain torch checkpoint.
    """
    sha = hashlib.sha256()

    def feed(value):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            sha.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            sha.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
        elif isinstance(value, dict):
            sha.update(b"{")
            for key, item in value.items():
                if key != CHECKSUM_KEY:
                    feed(key)
                    feed(item)
            sha.update(b"}")
        elif isinstance(value, (list, tuple)):  # serialisation may turn one into the other
            sha.update(b"[")
            for item in value:
                feed(item)
            sha.update(b"]")
        else:
            sha.update(f"{type(value).__name__}:{value!r};".encode())

    feed(state)
    return sha.hexdigest()


def save_checkpoint(state: dict, path) -> Path:
    """Checksum `state` and write it atomically; the file at `path` is replaced only by a complete one.

    A failed write (disk full, quota, I/O error) leaves the previous file untouched and ends in a
    CheckpointError naming the file and the cause.
    """
    path = Path(path)
    state = {**state, CHECKSUM_KEY: state_digest(state)}
    try:
        _atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        hint = "; free some space or point hydra.run.dir elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}{hint} "
                              f"(the previous checkpoint there, if any, is intact)") from e
    return path


def copy_checkpoint(src, dst) -> Path:
    """Publish `src` under the name `dst` atomically: a hard link where the filesystem has them, else a copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        tmp.unlink(missing_ok=True)  # rename() leaves it when dst already was a link to src
        _fsync_dir(dst.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(src, "rb") as f_src:
            try:
                _atomic_write(dst, lambda f_dst: shutil.copyfileobj(f_src, f_dst))
            except OSError as e:
                raise CheckpointError(f"cannot write checkpoint {dst}: {e.strerror or e} "
                                      f"(the previous checkpoint there, if any, is intact)") from e
    return dst


def load_checkpoint(path, map_location="cpu", require=("model", "config")) -> dict:
    """Load with `weights_only=True`, verify the checksum and that the keys in `require` are there.

    Every failure is one CheckpointError line: damaged, foreign, unsafe, or of a format this
    version cannot use (a newer one, or an older one that lacks what the caller needs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (give the path of a .pt file a run wrote, e.g. outputs/<run>/checkpoints/best.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global (class, function) it does not know before touching it: nothing has run.
        unsafe = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if unsafe is not None:
            raise CheckpointError(f"refusing to load {path}: it holds pickled Python objects that could run code "
                                  f"when loaded ({unsafe}); a2d2c checkpoints hold only tensors and plain data") from e
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), str(e).splitlines()[0])
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {detail[:120]}") from e
    except Exception as e:  # torch raises several types for truncated, foreign or damaged files
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an a2d2c checkpoint (expected a dict with 'model' and 'config'; use a file from <run>/checkpoints/)")
    expected = state.get(CHECKSUM_KEY)
    if expected is not None and state_digest(state) != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its checksum")
    check_format(state, path, require)
    upgrade_saved_configs(state)  # after the checksum: it covers the file as written
    return state


def check_format(state: dict, path, require) -> None:
    version = state.get(FORMAT_KEY, 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointFormatError(f"checkpoint {path} has format {version!r}, newer than this a2d2c reads "
                              f"(up to {FORMAT_VERSION}); update a2d2c to load it")
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointFormatError(f"checkpoint {path} (format {version}; this a2d2c writes {FORMAT_VERSION}) lacks "
                                    f"{', '.join(missing)}, which this needs; it was written by another version of "
                                    f"a2d2c: use that version for it, or start a new run")


def remove_stale_temp_files(directory) -> int:
    """Delete the temp files (`.<name>.*.tmp`) of writes that a kill interrupted; returns how many.

    Call it only while no other process writes to `directory` (the run dir's lock, a2d2c/cli/run_dir.py).
    """
    directory = Path(directory)
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()] if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d temp file(s) of an interrupted checkpoint write in %s: %s",
                    len(stale), directory, ", ".join(p.name for p in stale))
    return len(stale)


def numbered_checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}.pt"


def numbered_checkpoints(directory) -> list:
    """The `step-*.pt` files of `directory`, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := NUMBERED.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(directory, keep: int):
    """Delete all but the `keep` (at least 1) newest numbered checkpoints (`last.pt` and `best.pt` are separate names)."""
    for path in numbered_checkpoints(directory)[max(keep, 1):]:
        path.unlink(missing_ok=True)


def load_newest_valid(directory, require=RESUME_KEYS):
    """(path, state) of the newest checkpoint in `directory` that loads and verifies, or None if there is none.

    Damaged files are skipped with a warning naming each; if checkpoints exist but none is valid,
    that is an error rather than a silent restart from scratch.
    """
    directory = Path(directory)
    candidates = numbered_checkpoints(directory) + [p for p in (directory / "last.pt",) if p.is_file()]
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, require=require)
        except CheckpointFormatError:
            raise
        except CheckpointError as e:
            log.warning("skipping %s", e)
            problems.append(path.name)
    if problems:
        raise CheckpointError(f"no valid checkpoint in {directory}: {', '.join(problems)} are all damaged; "
                              f"resume from another run's checkpoint or start afresh without trainer.resume")
    return None


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


def load_weights(model: torch.nn.Module, state_dict: dict, path):
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        # PyTorch lists every mismatched tensor over many lines; the first ones say enough.
        details = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise ConfigError(f"checkpoint {path} does not fit this model ({details}); "
                          f"{_mismatch_hint(model, state_dict)}") from e


def _mismatch_hint(model: torch.nn.Module, state_dict: dict) -> str:
    # A2D2C+ layers got a cost-bounded form (separable attention head, rank bounded by C kh kw,
    # 1x1 experts on depthwise convs); the head's second conv is what an older one lacks.
    def has_spatial_head(keys):
        return any(k.endswith("local_attention.spatial.weight") for k in keys)

    if has_spatial_head(model.state_dict()) and not has_spatial_head(state_dict):
        return ("its a2d2c_plus layers are the earlier formulation (full attention head, rank "
                "O // 16, depthwise convs as a2d2c), which this a2d2c does not build; evaluate it "
                "with a2d2c at commit b477592")
    return "was it trained with another backbone, conv type or class count?"

"""Which computation a dynamic conv uses for a given shape: a cost rule, or measured once.

The same DyConv layer can run as per-sample kernels in a grouped conv ("aggregate"), as
per-sample kernels in im2col + batched matmul ("unfold"), or as K responses of one dense conv,
then mixed ("responses"). None wins at every shape and device (REFERENCES.md: on an H100 the
grouped conv takes 15.2 ms on ResNet-18's layer4 where the K responses take 1.7 ms, and 2.2 ms
on layer1 where they take 4.4 ms). ``default_path`` is the rule those measurements give;
``PathTuner`` times every candidate the first time it meets a shape, like cudnn.benchmark, and
keeps the fastest for the rest of the process. A candidate that fails on the device (out of
memory, a Triton kernel that does not build) is logged and left out, never fatal.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Callable, Dict, Hashable, Iterable

import torch

log = logging.getLogger(__name__)

TUNABLE_PATHS = ("aggregate", "unfold", "responses")


def default_path(batch: int, out_positions: int, groups: int) -> str:
    """Per-sample kernels at batch 1 (built once), for grouped convs and for large output maps
    (>= 28x28); K responses elsewhere, where a dense conv over K*O channels beats a grouped
    conv over B groups of large kernels."""
    if batch == 1 or groups > 1 or out_positions >= 28 * 28:
        return "aggregate"
    return "responses"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PathTuner:
    """Times each candidate path once per key and remembers the fastest."""

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.choices: Dict[Hashable, str] = {}

    def choose(self, key: Hashable, run: Callable[[str], None], device: torch.device,
               candidates: Iterable[str] = TUNABLE_PATHS) -> str:
        if key not in self.choices:
            timings = {}
            for path in candidates:
                try:
                    run(path)  # warm-up: kernel selection, allocator
                    samples = []
                    for _ in range(self.repeats):
                        _sync(device)
                        t0 = time.perf_counter()
                        run(path)
                        _sync(device)
                        samples.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory (unfold at a large batch), a kernel that does not build
                    # A candidate that cannot run here is not a reason to stop training: the others compute the same function.
                    log.warning("path %r failed while tuning %s, not a candidate there: %s", path, key,
                                str(e).splitlines()[0] if str(e) else type(e).__name__)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                timings[path] = statistics.median(samples)
            if not timings:
                raise RuntimeError(f"no computation path ran for {key}; tried {', '.join(candidates)}")
            self.choices[key] = min(timings, key=timings.get)
        return self.choices[key]


TUNER = PathTuner()

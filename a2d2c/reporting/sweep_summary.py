"""A Hydra callback: when a sweep (`train.py -m ...`) ends, write `<sweep dir>/summary.md`."""
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from a2d2c.distributed.launch_env import env_rank

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs):
        if env_rank() != 0:  # under torchrun every rank runs the sweep; rank 0 writes
            return
        from a2d2c.reporting.results_table import load_runs, markdown_table  # not loaded for single runs

        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_runs([sweep_dir])
        if not runs:
            log.warning("no results.json under %s: no summary written", sweep_dir)
            return
        out = sweep_dir / "summary.md"
        out.write_text(markdown_table(runs) + "\n")
        log.info("sweep summary (%d runs): %s", len(runs), out)

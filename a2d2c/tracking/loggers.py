"""Where metrics go: a JSONL file in the run directory and, optionally, a wandb run."""
import json
import math
from pathlib import Path


def _plain(value):
    # JSON has no NaN/inf; write null so every line stays parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a killed run keeps every line it logged."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict):
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


class WandbLogger:
    """One wandb run per job. Offline by default: files go to `<run dir>/wandb`, `wandb sync` uploads them.

    `run_id` is stored in checkpoints; passing it back on resume continues the same run.
    """

    def __init__(self, dir, run_config: dict, run_id=None, project="a2d2c", entity=None, name=None,
                 group=None, tags=(), mode="offline"):
        import wandb  # imported here so `logger=none` runs never touch it

        self._run = wandb.init(project=project, entity=entity, name=name, group=group, tags=list(tags),
                               mode=mode, dir=str(dir), config=run_config, id=run_id, resume="allow")

    @property
    def run_id(self) -> str:
        return self._run.id

    def log(self, metrics: dict, step: int):
        self._run.log(metrics, step=step)

    def log_images(self, key: str, images, step: int):
        """[(caption, H x W x 3 uint8 array)] as one list of wandb images under `key` (nothing when empty)."""
        if images:
            import wandb
            self._run.log({key: [wandb.Image(image, caption=caption) for caption, image in images]}, step=step)

    def summary(self, values: dict):
        self._run.summary.update(values)

    def finish(self):
        self._run.finish()

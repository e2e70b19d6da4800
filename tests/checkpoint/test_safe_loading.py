"""A checkpoint never decides which code runs (README "Safe loading").

Each crafted checkpoint below loads with `torch.load(weights_only=True)` (it holds only plain data)
and carries a valid checksum, yet its saved config names code to run. eval.py and trainer.resume
must refuse it, naming the key, before anything in it is instantiated; the payload never runs.
"""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from a2d2c.engine.trainer import Trainer
from a2d2c.engine.evaluation import evaluate_checkpoint
from a2d2c.checkpoint import files as ckpt
from a2d2c.errors import ConfigError
from a2d2c.checkpoint.saved_config import CONFIG_DIR, UnsafeConfigError, _special_entries, project_special_entries
from helpers.cli import assert_one_line_error
from helpers.train_utils import QUIET, TINY, compose_config, run_script

RUN = (*TINY, *QUIET, "conv=static", "trainer.epochs=1")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    Trainer(compose_config(*RUN), run_dir).fit()
    return run_dir / "checkpoints" / "last.pt"


def craft(checkpoint, out, edit):
    """A copy of `checkpoint` whose saved configs (resolved and unresolved) `edit` changed, re-checksummed."""
    state = ckpt.load_checkpoint(checkpoint)
    state = {k: v for k, v in state.items() if k != ckpt.CHECKSUM_KEY}
    for key in ("config", "config_unresolved"):
        state[key] = copy.deepcopy(state[key])
        edit(state[key])
    state[ckpt.CHECKSUM_KEY] = ckpt.state_digest(state)  # anyone can recompute it: integrity, not authenticity
    torch.save(state, out)
    return out


def touch(marker):
    return {"_target_": "os.system", "_args_": [f"touch {marker}"]}


def write_then_import(tmp_path, marker):
    """The chain from the issue: write a module with one call, import it and run it with another."""
    module = tmp_path / "planted_module.py"
    code = f"def run():\n    open({str(marker)!r}, 'w').write('pwned')\n"
    return {"_target_": "builtins.list", "_args_": [[
        {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(module)]}, code]},
        {"_target_": "planted_module.run"},
    ]]}


PAYLOADS = {
    "task": lambda cfg, m, tmp: cfg.update(task=touch(m)),
    "dataset.eval": lambda cfg, m, tmp: cfg["dataset"].update(eval=touch(m)),
    "task.model": lambda cfg, m, tmp: cfg["task"].update(model=touch(m)),
    "task-write-then-import": lambda cfg, m, tmp: cfg.update(task=write_then_import(tmp, m)),
    "oc.decode": lambda cfg, m, tmp: cfg.update(
        task="${oc.decode:'{_target_: os.system, _args_: [\"touch " + str(m) + "\"]}'}"),
    "extra args": lambda cfg, m, tmp: cfg["dataset"]["eval"].update(_args_=[f"touch {m}"]),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_eval_refuses_a_crafted_checkpoint_and_the_payload_never_runs(payload, checkpoint, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # so that the planted module would import, were it written
    marker = tmp_path / "pwned"
    crafted = craft(checkpoint, tmp_path / "crafted.pt", lambda cfg: PAYLOADS[payload](cfg, marker, tmp_path))
    with pytest.raises(UnsafeConfigError, match=r"refusing .*crafted\.pt: its saved config"):
        evaluate_checkpoint(crafted)
    assert not marker.exists() and not (tmp_path / "planted_module.py").exists()


def test_without_the_check_the_write_then_import_chain_runs(checkpoint, tmp_path, monkeypatch):
    # What the refusal prevents. (hydra-core 1.3.8 blocks os.system itself; 1.3.2, which
    # requirements.txt allows, does not. Neither blocks this chain.)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("a2d2c.checkpoint.saved_config.check_saved_config", lambda config, source: None)
    marker = tmp_path / "pwned"
    crafted = craft(checkpoint, tmp_path / "crafted.pt", lambda cfg: cfg.update(task=write_then_import(tmp_path, marker)))
    with pytest.raises(Exception):
        evaluate_checkpoint(crafted)  # the list it built is no task, but the payload ran first
    assert marker.read_text() == "pwned"


def test_an_escaped_interpolation_left_after_resolving_is_refused(checkpoint, tmp_path):
    # Resolving turns "\${...}" into "${...}", which instantiate would resolve again.
    crafted = craft(checkpoint, tmp_path / "c.pt", lambda cfg: cfg["dataset"].update(name="\\${oc.env:HOME}"))
    with pytest.raises(UnsafeConfigError, match=r"dataset\.name='\$\{oc\.env:HOME\}', an interpolation"):
        evaluate_checkpoint(crafted)


def test_eval_py_refuses_with_one_line(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    crafted = craft(checkpoint, tmp_path / "crafted.pt", lambda cfg: cfg.update(task=touch(marker)))
    proc = run_script("eval.py", f"checkpoint={crafted}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert_one_line_error(proc, "refusing", "task._target_='os.system'")
    assert not marker.exists()


def test_resume_refuses_a_crafted_checkpoint_and_the_payload_never_runs(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    crafted = craft(checkpoint, tmp_path / "crafted.pt", lambda cfg: cfg.update(task=touch(marker)))
    with pytest.raises(ConfigError, match=r"task\._target_"):
        Trainer(compose_config(*RUN, "trainer.epochs=2", f"trainer.resume={crafted}"), tmp_path / "run")
    assert not marker.exists()


def test_a_genuine_checkpoint_passes_the_check(checkpoint):
    assert evaluate_checkpoint(checkpoint)["metrics"]["samples"] == 16


def _options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "optimizer", "scheduler", "logger", "detector", "experiment"])
def test_every_special_key_a_composition_sets_is_on_the_allowed_list(group):
    # The allowed list is read from the YAML files without composing them; composing every option
    # shows that its key paths are where Hydra really puts them.
    allowed = project_special_entries()
    for option in _options(group):
        cfg = OmegaConf.to_container(compose_config(f"{group}={option}"), resolve=False)
        entries = set(_special_entries(cfg, ""))
        assert entries and entries <= allowed, (group, option, entries - allowed)

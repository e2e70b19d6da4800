"""The cross-operator tables: one backbone, one recipe, every conv type the layers build."""
import pytest
from omegaconf import OmegaConf

from a2d2c.config_checks import check_train_config
from a2d2c.layers import CONV_TYPES
from a2d2c.reporting.paper_tables import TABLES
from a2d2c.reporting.table_plan import compose_run, override_key, plan, run_overrides

CROSS_OPERATOR = ("conv_types_cifar100", "conv_types_imagenet", "conv_types_digits")


def conv_of(run) -> str:
    return next(o.split("=", 1)[1] for o in run if override_key(o) == "conv")


@pytest.mark.parametrize("name", CROSS_OPERATOR)
def test_every_conv_type_is_a_run_and_nothing_else_differs(name):
    runs = run_overrides(TABLES[name])
    # a2d2c.layers.CONV_TYPES read now: a type added there is a row here without editing the table.
    assert sorted(conv_of(run) for run in runs) == sorted(CONV_TYPES)
    assert len({tuple(o for o in run if override_key(o) != "conv") for run in runs}) == 1


@pytest.mark.parametrize("name", ["conv_types_cifar100", "conv_types_imagenet"])
def test_every_run_composes_and_shares_one_recipe(name):
    configs = []
    for run in run_overrides(TABLES[name]):
        cfg = compose_run(run)
        check_train_config(cfg)  # e.g. a preset's tau_schedule on a conv type without τ
        assert cfg.conv.type == conv_of(run)
        config = OmegaConf.to_container(cfg, resolve=True)
        del config["task"]["conv_options"], config["task"]["model"]["conv_type"]  # the conv's, from conv=
        configs.append(config)
    for key in ("backbone", "dataset", "optimizer", "scheduler", "trainer", "task"):
        assert all(c[key] == configs[0][key] for c in configs), key


def test_digits_plan_has_one_row_per_conv_type_with_its_k():
    rows = plan(TABLES["conv_types_digits"])
    assert [(r["conv"], r["num_kernels"]) for r in rows] == [(c, None if c == "static" else 4) for c in CONV_TYPES]
    assert len({(r["params"], r["macs"]) for r in rows}) == len(CONV_TYPES)  # six different models


@pytest.mark.slow
def test_imagenet_plan_puts_dyconvs_numbers_beside_its_two_rows_only():
    rows = plan(TABLES["conv_types_imagenet"])
    assert [r["conv"] for r in rows] == list(CONV_TYPES)
    with_paper = {r["conv"]: r["paper"]["params"] for r in rows if r["paper"] is not None}
    assert with_paper == {"static": 11.1e6, "dynamic": 42.7e6}

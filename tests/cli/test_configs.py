"""The config tree: every preset composes and trains, every group option builds, recipes match the papers."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from a2d2c.config_checks import check_train_config
from a2d2c.engine.trainer import Trainer
from a2d2c.layers import CONV_TYPES
from helpers.config_files import own_values, selected_groups, values_at
from helpers.train_utils import CONFIG_DIR, QUIET, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
CONVS = ("static", "dynamic", "a2d2c", "a2d2c_plus")
SOURCES = ("dyconv", "odconv", "torchvision", "ours")  # the DyConv paper, ODConv's code, torchvision, this project


def test_experiment_folder_has_the_required_presets():
    required = {f"dyconv_imagenet_{m}_{c}" for m in ("mobilenetv2_x1_0", "mobilenetv2_x0_5", "resnet18")
                for c in ("static", "dynamic")}
    required |= {f"ours_cifar100_resnet18_{c}" for c in CONVS}
    required |= {f"torchvision_coco_fasterrcnn_r50_fpn_1x_{c}" for c in CONVS}
    required |= {"torchvision_coco_retinanet_r50_fpn_1x_static"}
    assert required <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_trains_two_steps_on_synthetic_data(experiment, tmp_path, caplog):
    recipe = compose_config(f"experiment={experiment}")
    if recipe.task._target_.endswith("DetectionTask"):  # COCO presets: their detector on a few shapes images
        data = ("dataset=shapes", f"dataset.root={tmp_path / 'shapes'}", "dataset.num_train=4", "dataset.num_val=2",
                "dataset.image_size=64", "detector.min_size=64", "detector.max_size=64", "trainer.batch_size=2")
    else:
        # Batches of 4: with 2 images, BatchNorm over 1x1 maps sends MobileNetV2's weights to NaN at the
        # recipe's lr in two steps, and the Trainer rightly refuses to checkpoint those.
        data = ("dataset=synthetic", "dataset.image_size=32", f"dataset.num_classes={recipe.dataset.num_classes}",
                f"dataset.stem={recipe.dataset.stem}", "dataset.train_size=8", "dataset.eval_size=2", "trainer.batch_size=4")
    cfg = compose_config(f"experiment={experiment}", *QUIET, *data, "trainer.epochs=1")
    # The preset's model survives the data swap.
    assert (cfg.backbone.name, cfg.conv.type) == (recipe.backbone.name, recipe.conv.type)
    assert cfg.task._target_ == recipe.task._target_ and cfg.detector.name == recipe.detector.name
    results = Trainer(cfg, tmp_path).fit()
    assert results["final"]["step"] == 2
    # a preset whose values are recalled, not checked against its source, says so when it runs
    assert ("as recalled, not checked against" in caplog.text) == bool(cfg.recipe.unverified)
    assert torch.isfinite(torch.tensor(results["final"]["train/loss"]))
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


# The presets' recipes: the DyConv paper's as recalled (dyconv_*, every training value listed in
# recipe.unverified) and ODConv's README / main.py (odconv_*, REFERENCES.md).
DY_MOBILENET = dict(epochs=300, lr=0.05, weight_decay=4e-5, batch_size=256, scheduler="CosineLRScheduler")
DY_RESNET = dict(epochs=100, lr=0.1, weight_decay=1e-4, dropout=0.1, batch_size=256, scheduler="StepLRScheduler",
                 smoothing=0.0, mixup=0.0)
OD_MOBILENET = dict(epochs=150, lr=0.05, weight_decay=4e-5, dropout=0.2, batch_size=256,
                    scheduler="CosineLRScheduler", smoothing=0.0, mixup=0.0)
OD_RESNET = dict(OD_MOBILENET, epochs=100, lr=0.1, weight_decay=1e-4, scheduler="StepLRScheduler")
WIDE = dict(smoothing=0.1, mixup=0.2)        # DyConv: the wider MobileNetV2s
NARROW = dict(smoothing=0.0, mixup=0.0, dropout=0.0)
RECIPES = {
    "dyconv_imagenet_mobilenetv2_x1_0_dynamic": ("mobilenetv2_x1_0", "dynamic", dict(DY_MOBILENET, dropout=0.2, **WIDE)),
    "dyconv_imagenet_mobilenetv2_x1_0_static": ("mobilenetv2_x1_0", "static", dict(DY_MOBILENET, dropout=0.2, **WIDE)),
    "dyconv_imagenet_mobilenetv2_x0_75_dynamic": ("mobilenetv2_x0_75", "dynamic", dict(DY_MOBILENET, dropout=0.1, **WIDE)),
    "dyconv_imagenet_mobilenetv2_x0_5_dynamic": ("mobilenetv2_x0_5", "dynamic", dict(DY_MOBILENET, **NARROW)),
    "dyconv_imagenet_mobilenetv2_x0_5_static": ("mobilenetv2_x0_5", "static", dict(DY_MOBILENET, **NARROW)),
    "dyconv_imagenet_mobilenetv2_x0_35_dynamic": ("mobilenetv2_x0_35", "dynamic", dict(DY_MOBILENET, **NARROW)),
    "dyconv_imagenet_mobilenetv3_small_dynamic": ("mobilenetv3_small", "dynamic", dict(DY_MOBILENET, **NARROW)),
    "dyconv_imagenet_resnet18_dynamic": ("resnet18", "dynamic", DY_RESNET),
    "dyconv_imagenet_resnet18_static": ("resnet18", "static", DY_RESNET),
    "dyconv_imagenet_resnet10_dynamic": ("resnet10", "dynamic", DY_RESNET),
    "odconv_imagenet_mobilenetv2_x1_0_dynamic": ("mobilenetv2_x1_0", "dynamic", OD_MOBILENET),
    "odconv_imagenet_mobilenetv2_x0_75_dynamic": ("mobilenetv2_x0_75", "dynamic", OD_MOBILENET),
    "odconv_imagenet_mobilenetv2_x0_5_dynamic": ("mobilenetv2_x0_5", "dynamic", OD_MOBILENET),
    "odconv_imagenet_resnet18_dynamic": ("resnet18", "dynamic", OD_RESNET),
    "odconv_imagenet_resnet50_dynamic": ("resnet50", "dynamic", OD_RESNET),
    "odconv_imagenet_mobilenetv2_x1_0_odconv": ("mobilenetv2_x1_0", "odconv", OD_MOBILENET),
    "odconv_imagenet_resnet18_odconv": ("resnet18", "odconv", OD_RESNET),
}
# ODConv's own conversion layout (its models/od_resnet.py, od_mobilenetv2.py): (conv.exclude, backbone.keep_static)
ODCONV_LAYOUTS = {"odconv_imagenet_resnet18_odconv": (["layer*.0.downsample"], None),
                  "odconv_imagenet_mobilenetv2_x1_0_odconv": ([], [])}


@pytest.mark.parametrize("experiment", sorted(ODCONV_LAYOUTS))
def test_odconv_presets_convert_what_odconv_converts(experiment):
    cfg = compose_config(f"experiment={experiment}")
    exclude, keep_static = ODCONV_LAYOUTS[experiment]
    assert list(cfg.conv.exclude) == exclude and cfg.conv.options.num_kernels == 4
    assert (None if cfg.backbone.keep_static is None else list(cfg.backbone.keep_static)) == keep_static


def test_every_imagenet_preset_has_its_recipe_checked():
    assert {e for e in EXPERIMENTS if "_imagenet_" in e} == set(RECIPES)


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_imagenet_presets_encode_their_recipe(experiment):
    backbone, conv, recipe = RECIPES[experiment]
    cfg = compose_config(f"experiment={experiment}")
    assert (cfg.backbone.name, cfg.conv.type, cfg.dataset.name) == (backbone, conv, "imagenet")
    assert cfg.dataset.num_classes == 1000 and cfg.dataset.stem == "imagenet"
    assert cfg.trainer.epochs == recipe["epochs"] and cfg.trainer.batch_size == recipe["batch_size"]
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.lr == pytest.approx(recipe["lr"])
    assert cfg.optimizer.weight_decay == pytest.approx(recipe["weight_decay"])
    assert cfg.backbone.dropout == pytest.approx(recipe["dropout"])
    assert cfg.scheduler._target_ == f"timm.scheduler.{recipe['scheduler']}" and cfg.scheduler.warmup_t == 0
    if recipe["scheduler"] == "CosineLRScheduler":
        assert cfg.scheduler.t_initial == recipe["epochs"]  # cosine over the whole run
    assert cfg.task.label_smoothing == recipe["smoothing"] and cfg.task.mixup_alpha == recipe["mixup"]
    # A static conv gets the preset's values over its null (no from_weights) and ignores them.
    assert dict(cfg.conv.tau_schedule) == {"start": 30.0, "end": 1.0, "epochs": 10, "fraction": None,
                                           **({} if conv == "static" else {"from_weights": True})}
    if conv == "dynamic":
        assert cfg.conv.options.num_kernels == 4 and cfg.conv.options.reduction == 4


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_source_is_named_and_what_it_does_not_show_is_listed(experiment):
    cfg = compose_config(f"experiment={experiment}")
    assert cfg.recipe.source.startswith("the DyConv paper" if experiment.startswith("dyconv") else "ODConv's")
    unverified = set(cfg.recipe.unverified)
    if experiment.startswith("dyconv"):  # the paper's training values are as recalled: every one is listed
        assert {"trainer.epochs", "optimizer.lr", "optimizer.weight_decay", "backbone.dropout"} <= unverified
    else:  # ODConv's README shows the dropout rate for MobileNetV2 x1.0 (od_mobilenetv2_100) and, for ResNet-18,
        # only in its ODConv 4x example: the ResNet presets list it, as a 1x or static row's rate is not stated
        shown = experiment.startswith("odconv_imagenet_mobilenetv2_x1_0_")
        assert unverified == (set() if shown else {"backbone.dropout"})


def test_resnet_preset_divides_lr_by_ten_at_30_60_90(tmp_path):
    cfg = compose_config("experiment=dyconv_imagenet_resnet18_dynamic")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)
    lrs = {}
    for epoch in (0, 29.9, 30, 59.9, 60, 90, 99.9):
        scheduler.step(epoch)
        lrs[epoch] = optimizer.param_groups[0]["lr"]
    assert lrs[0] == lrs[29.9] == pytest.approx(0.1)
    assert lrs[30] == lrs[59.9] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001) and lrs[90] == lrs[99.9] == pytest.approx(1e-4)


@pytest.mark.parametrize("conv", ["static", "dynamic", "a2d2c", "a2d2c_plus"])
def test_cifar100_presets_differ_only_in_the_conv_type(conv):
    cfg = compose_config(f"experiment=ours_cifar100_resnet18_{conv}")
    base = compose_config("experiment=ours_cifar100_resnet18_static")
    assert cfg.conv.type == conv and cfg.dataset.name == "cifar100" and cfg.dataset.stem == "cifar"
    for section in ("backbone", "dataset", "optimizer", "scheduler", "trainer", "task"):
        if section != "task":
            assert cfg[section] == base[section], section
    assert cfg.task.model.name == "resnet18"


@pytest.mark.parametrize("group", ["backbone", "conv", "dataset", "detector", "optimizer", "scheduler", "trainer",
                                   "logger"])
def test_every_group_option_composes_with_its_own_values(group):
    # Each value the option's file sets (and the recipe a dataset brings, @_global_ in its defaults) is what
    # the composed config holds: nothing composed later overrides it. And the Trainer's checks pass.
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose_config(f"{group}={option}")
        assert values_at(cfg, own_values(CONFIG_DIR / group / f"{option}.yaml")) == {}, option
        check_train_config(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_selects_what_its_name_and_defaults_say(experiment):
    # <source>_<dataset>_<model>_<conv>, the groups its defaults list selects (through the presets it
    # includes), and its own values, none overridden by what is composed after them.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    selected = selected_groups(CONFIG_DIR / "experiment", experiment)
    assert {"backbone", "conv", "dataset"} <= set(selected)
    assert {group: choices[group] for group in selected} == selected
    source, dataset, model_conv = experiment.split("_", 2)
    conv = max((c for c in CONV_TYPES if model_conv.endswith(f"_{c}")), key=len)
    assert source in SOURCES and (dataset, conv) == (choices.dataset, choices.conv) == (cfg.dataset.name, cfg.conv.type)
    del cfg.hydra
    assert values_at(cfg, own_values(CONFIG_DIR / "experiment" / f"{experiment}.yaml")) == {}
    check_train_config(cfg)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop"])
@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_optimizer_and_scheduler_options_instantiate_with_warmup(optimizer, scheduler):
    cfg = compose_config(f"optimizer={optimizer}", f"scheduler={scheduler}", "scheduler.warmup_t=2")
    params = [torch.zeros(3, requires_grad=True)]
    opt = instantiate(cfg.optimizer)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.scheduler.warmup_lr_init)
    sched.step(1)  # half-way through the warmup
    assert opt.param_groups[0]["lr"] == pytest.approx((cfg.scheduler.warmup_lr_init + cfg.optimizer.lr) / 2)


def test_logger_none_disables_wandb_and_default_is_offline():
    assert compose_config("logger=none").logger is None
    default = compose_config()
    assert default.logger.mode == "offline" and default.logger._target_.endswith("WandbLogger")


def test_default_config_is_a2d2c_on_digits():
    cfg = compose_config()
    assert (cfg.conv.type, cfg.dataset.name, cfg.task._target_) == ("a2d2c", "digits", "a2d2c.engine.tasks.classification.ClassificationTask")
    assert cfg.seed == 0 and Path(CONFIG_DIR / "hydra" / "output" / "runs.yaml").is_file()


def test_slurm_launcher_preset_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.hydra.run.dir.startswith("outputs/") and cfg.hydra.sweep.dir.startswith("multirun/")

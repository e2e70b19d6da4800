"""Attention statistics at evaluation: the numbers against an independent computation on a fixed input,
their place in metrics.jsonl, and the collapse warning after τ's annealing."""
import json
import logging
import math

import pytest
import torch

from a2d2c.engine.trainer import Trainer
from a2d2c.layers import create_conv2d
from a2d2c.tracking.attention_stats import AttentionProbe, attention_layers, collapsed_layers
from helpers.reference_convs import ref_global_logits, ref_local_attention, ref_conv
from helpers.train_utils import QUIET, TINY, compose_config


def by_hand(units):
    """units: list of K-lists (one distribution per sample or position) -> entropy, balance, usage, kernels_90."""
    k = len(units[0])
    h = lambda p: -sum(q * math.log(q) for q in p if q > 0) / math.log(k)  # noqa: E731
    usage = [sum(u[j] for u in units) / len(units) for j in range(k)]
    mass, kernels = 0.0, 0
    for q in sorted(usage, reverse=True):
        if mass >= 0.9:
            break
        mass, kernels = mass + q, kernels + 1
    return sum(h(u) for u in units) / len(units), h(usage), usage, kernels


def independent_units(conv_type, m, x):
    """Each unit's distribution over the kernels, from the layer's formula (helpers/reference_convs.py)."""
    if conv_type == "dynamic":
        pi = torch.softmax(ref_global_logits(x, m.kernel_attention.fc1, m.kernel_attention.fc2) / m.temperature, 1)
        return pi.tolist()
    if conv_type == "condconv":
        r = torch.sigmoid(x.mean((2, 3)) @ m.routing.weight.T + m.routing.bias)
        return (r / r.sum(1, keepdim=True)).tolist()
    responses = [ref_conv(x, m.weight[k], None, m.stride, m.padding, m.dilation, m.groups) for k in range(m.num_kernels)]
    alpha = ref_local_attention(m, x, responses)  # a2d2c: B x K x H' x W'
    return alpha.permute(0, 2, 3, 1).reshape(-1, m.num_kernels).tolist()


@pytest.mark.parametrize("conv_type", ["dynamic", "condconv", "a2d2c"])
def test_statistics_equal_an_independent_computation_on_a_fixed_input(conv_type):
    torch.manual_seed(0)
    opts = {} if conv_type == "condconv" else {"temperature": 0.5}
    m = create_conv2d(conv_type, 4, 6, 3, num_kernels=3, **opts).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # sharper attention than at init, so the numbers are not all near 1
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64)
    model = torch.nn.Sequential(m)
    with AttentionProbe(model) as probe, torch.no_grad():
        model(x[:2])
        model(x[2:])  # two batches: the sums run over both
    (got,) = probe.stats.result().values()
    entropy, balance, usage, kernels = by_hand(independent_units(conv_type, m, x))
    assert got["entropy"] == pytest.approx(entropy, abs=1e-9)
    assert got["balance"] == pytest.approx(balance, abs=1e-9)
    assert got["usage"] == pytest.approx(usage, abs=1e-9)
    assert got["kernels_90"] == kernels
    assert 0 < got["entropy"] < got["balance"] < 1


def test_training_forwards_are_not_measured_and_the_observer_leaves_with_the_probe():
    m = torch.nn.Sequential(create_conv2d("dynamic", 4, 4, 3))
    with AttentionProbe(m) as probe:
        m.train()(torch.randn(2, 4, 5, 5))
    assert probe.stats.result() == {}
    assert m[0].attention_observer is None
    assert attention_layers(create_conv2d("dynamic", 4, 4, 3, num_kernels=1)) == {}  # K = 1 chooses nothing


def test_a_layer_whose_usage_is_one_kernel_is_collapsed():
    result = {"a": {"balance": 0.05}, "b": {"balance": 0.5}}
    assert collapsed_layers(result, 0.1) == ["a"] and collapsed_layers(result, 0.0) == []


def test_metrics_jsonl_has_each_layers_entropy_and_balance_at_each_evaluation(tmp_path):
    trainer = Trainer(compose_config("conv=dynamic", *QUIET, *TINY, "trainer.epochs=3"), tmp_path)
    layers = list(attention_layers(trainer.model))
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if f"{trainer.eval_split}/top1" in r]
    assert len(evaluations) == 3 and layers
    for record in evaluations:
        assert set(f"attention_entropy/{name}" for name in layers) <= set(record)
        assert set(f"attention_balance/{name}" for name in layers) <= set(record)
        values = [record[f"attention_entropy/{name}"] for name in layers]
        assert record["attention/mean_entropy"] == pytest.approx(sum(values) / len(values))
        assert all(0 <= v <= 1 for v in values)
    # τ ends at epoch 1.5 (fraction 0.5 of 3): the collapse check starts with the second evaluation
    assert ["attention/collapsed_layers" in r for r in evaluations] == [False, True, True]


def test_static_runs_and_stats_false_log_no_attention(tmp_path):
    for i, overrides in enumerate((("conv=static",), ("conv=dynamic", "trainer.attention.stats=false"))):
        trainer = Trainer(compose_config(*overrides, *QUIET, *TINY, "trainer.epochs=1"), tmp_path / str(i))
        assert not any(k.startswith("attention") for k in trainer.fit()["final"])


def test_collapse_after_annealing_is_one_warning_naming_the_layers(tmp_path, caplog):
    trainer = Trainer(compose_config("conv=dynamic", *QUIET, *TINY, "trainer.epochs=4"), tmp_path)
    layers = attention_layers(trainer.model)
    collapsed = sorted(layers)[:2]
    with torch.no_grad():
        for name in collapsed:  # every input picks kernel 0
            fc2 = layers[name].kernel_attention.fc2
            fc2.weight.zero_()
            fc2.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    with caplog.at_level(logging.WARNING):
        trainer.epoch = 0  # τ anneals over 2 epochs: not yet annealed after the first
        assert trainer.evaluate().get("attention/collapsed_layers") is None
        assert "collapsed" not in caplog.text
        trainer.epoch = 1  # the evaluation that ends epoch 2: annealed, τ at its end
        trainer._set_temperature(trainer.anneal.end)
        metrics = trainer.evaluate()
    assert metrics["attention/collapsed_layers"] == 2
    (line,) = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert f"in 2 of {len(layers)} layers" in line and all(name in line for name in collapsed)
    assert metrics[f"attention_balance/{collapsed[0]}"] < 1e-6


def test_a_resume_may_change_what_is_measured():
    from a2d2c.checkpoint.resume_check import config_changes
    saved, now = ({"trainer": {"attention": {"stats": s, "collapse_below": 0.1}}} for s in (True, False))
    assert config_changes(saved, now) == {}
    assert config_changes({"trainer": {}}, now) == {}  # a checkpoint from before trainer.attention existed


def test_a_model_that_takes_a_list_of_images_is_measured_without_pictures():
    class ListModel(torch.nn.Module):  # as a detector: a list in, the backbone sees one padded batch
        def __init__(self):
            super().__init__()
            self.conv = create_conv2d("dynamic", 3, 4, 3)

        def forward(self, images):
            return self.conv(torch.stack(images))

    model = ListModel().eval()
    with AttentionProbe(model, keep=2) as probe, torch.no_grad():
        model([torch.randn(3, 6, 6) for _ in range(3)])
    assert probe.images is None and probe.stats.result()["conv"]["entropy"] > 0


def test_a_wandb_run_gets_attention_pictures_at_each_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config("conv=a2d2c", "trainer.progress_bar=false", *TINY, "trainer.epochs=2", "trainer.attention.images=2")
    Trainer(cfg, tmp_path).fit()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    pictures = sorted((run / "files" / "media" / "images").glob("attention_maps_*.png"))
    steps = {}
    for picture in pictures:  # attention_maps_<step>_<hash>.png
        steps.setdefault(picture.name.split("_")[2], []).append(picture)
    # two evaluations, each with a panel per image (per-position maps) and a heat map per layer whose map is 1x1
    assert len(steps) == 2 and all(len(found) >= 2 for found in steps.values())


def test_a_detector_with_a_wandb_run_is_measured_without_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config("dataset=shapes", f"dataset.root={tmp_path / 'shapes'}", "dataset.num_train=4",
                         "dataset.num_val=2", "dataset.image_size=64", "detector.min_size=64", "detector.max_size=64",
                         "backbone=resnet10", "conv=dynamic", "trainer.batch_size=2", "trainer.eval_batch_size=2",
                         "trainer.epochs=1", "trainer.progress_bar=false")
    final = Trainer(cfg, tmp_path / "run").fit()["final"]
    assert 0 <= final["attention/mean_entropy"] <= 1
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert not list(run.glob("files/media/images/attention_maps_*"))


def test_the_probe_reads_the_attention_the_forward_computed_and_computes_none_itself(monkeypatch):
    m = torch.nn.Sequential(create_conv2d("a2d2c", 4, 4, 3)).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = m[0].attention(x)
    monkeypatch.setattr(m[0], "attention", lambda x: pytest.fail("the probe ran the attention again"))
    with AttentionProbe(m, keep=2) as probe, torch.no_grad():
        m(x)
    assert torch.allclose(probe.examples["0"], expected.reshape(2, 4, -1)) and probe.shapes["0"] == (5, 5)

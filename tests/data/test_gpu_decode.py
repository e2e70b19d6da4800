"""The GPU JPEG pipeline: same decode and eval transform as the CPU path, valid train crops."""
import numpy as np
import pytest
import torch
from PIL import Image

from a2d2c.data.gpu_decode import EncodedImageFolder, GpuImagePipeline, collate_encoded
from a2d2c.data.imagenet import imagenet_transforms
from helpers.paths import REPO


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(3):
            h, w = rng.integers(40, 90, size=2)
            # smooth images: JPEG round trips stay close, so decoders agree closely
            base = rng.integers(0, 255, size=(4, 4, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)
            img.save(root / cls / f"{i}.jpg", quality=95)
    return root


def test_eval_pipeline_matches_the_cpu_transforms(jpeg_folder):
    data = EncodedImageFolder(str(jpeg_folder))
    encoded, labels = collate_encoded([data[i] for i in range(len(data))])
    out = GpuImagePipeline(train=False, image_size=32, resize_size=36)(encoded, torch.device("cpu"))
    cpu = imagenet_transforms(train=False, image_size=32, resize_size=36)
    expected = torch.stack([cpu(Image.open(p).convert("RGB")) for p, _ in data.samples])
    assert out.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    # PIL and libjpeg-turbo decode the same file to within a grey level or two
    assert (out - expected).abs().mean() < 0.05


def test_train_pipeline_crops_flips_and_normalises(jpeg_folder):
    data = EncodedImageFolder(str(jpeg_folder))
    encoded, _ = collate_encoded([data[i] for i in range(len(data))])
    pipe = GpuImagePipeline(train=True, image_size=24)
    torch.manual_seed(0)
    a = pipe(encoded, torch.device("cpu"))
    b = pipe(encoded, torch.device("cpu"))
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random crops differ between calls
    assert -3 < a.min() and a.max() < 3  # normalised


@pytest.mark.gpu
def test_cuda_decode_matches_cpu_decode(jpeg_folder):
    data = EncodedImageFolder(str(jpeg_folder))
    encoded, _ = collate_encoded([data[i] for i in range(len(data))])
    pipe = GpuImagePipeline(train=False, image_size=32, resize_size=36)
    gpu = pipe(encoded, torch.device("cuda")).cpu()
    cpu = pipe(encoded, torch.device("cpu"))
    assert (gpu - cpu).abs().mean() < 0.05


def test_data_benchmark_runs_on_cpu(tmp_path):
    import importlib.util
    script = REPO / "scripts" / "benchmark_data.py"
    spec = importlib.util.spec_from_file_location("benchmark_data", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--root", str(tmp_path / "jpegs"), "--images", "6", "--batch", "4",
                         "--workers", "0", "--image-size", "32", "--device", "cpu",
                         "--out", str(tmp_path)])
    assert result["cpu_dataloader"]["images"] == 6 and result["device_decode"]["images"] == 6
    assert (tmp_path / "data_bench.json").exists()


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_imagenet_training_with_either_decode_path(tmp_path, decode):
    """dataset=imagenet on an ImageFolder of JPEGs, both pipelines, through the real Trainer."""
    from a2d2c.engine.trainer import Trainer
    from helpers.train_utils import QUIET, compose_config
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "imagenet" / split / cls / f"{i}.JPEG", quality=90)
    cfg = compose_config(*QUIET, "dataset=imagenet", f"dataset.root={tmp_path / 'imagenet'}",
                         f"dataset.decode={decode}", "dataset.image_size=16", "dataset.resize_size=20",
                         "dataset.stem=cifar", "dataset.num_classes=2", "dataset.num_workers=0",
                         "backbone=mobilenetv2_x0_35", "conv=dynamic", "trainer.batch_size=4",
                         "trainer.epochs=1", "trainer.device=cpu")
    results = Trainer(cfg, tmp_path / "run").fit()
    assert results["final"]["val/samples"] == 8

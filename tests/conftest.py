import pytest
import torch

# The tests run many tiny ops, where intra-op threads cost more than they give, and they share
# a small machine (2 cores in CI): one thread per test process keeps the suite fast and steady.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # GPU tests are collected everywhere but only run where CUDA is present.
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: ids like [gpu] match it
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

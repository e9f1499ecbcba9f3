"""Fixtures shared by the whole suite: real MNIST (copied from PL_ENERGY_DATA / ../shared/data)."""

from __future__ import annotations

import pytest
import torch

from data_fixtures import mnist_root, shared_data_root  # noqa: F401  (re-exported fixtures)

# the suite's tensors are small: one intra-op thread avoids oversubscribing CI's two cores
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist_tensors(mnist_root):  # noqa: F811
    """The 60,000 MNIST training images as float32 (N, 784) in [0, 1] and int64 labels."""
    from pl_energy.data import MNISTDataModule

    module = MNISTDataModule(data_dir=str(mnist_root))
    module.prepare_data()
    module.setup("fit")
    images = torch.cat([module.train_set.tensors[0], module.val_set.tensors[0]])
    labels = torch.cat([module.train_set.tensors[1], module.val_set.tensors[1]])
    return images, labels


@pytest.fixture(autouse=True)
def one_thread_after_each_test(monkeypatch):
    """The CLI sets torch's threads and exports its choice (``--threads auto``): every test
    starts from the suite's one thread and an environment without the choice."""
    import os

    monkeypatch.delenv("PL_ENERGY_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    yield
    torch.set_num_threads(1)


@pytest.fixture
def float64():
    """float64 as the default dtype for one test (``pytestmark = pytest.mark.usefixtures("float64")``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)

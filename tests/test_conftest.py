"""The test-wide set-up of tests/conftest.py holds: validation on, generators seeded, warnings
are errors. (If one of these silently stopped, statistical tests would pass by chance.)"""

import random
import warnings

import numpy as np
import pyro
import pyro.distributions
import pytest
import torch

from tests.conftest import SEED


def test_distribution_validation_is_on():
    with pytest.raises(ValueError, match="scale"):
        torch.distributions.Normal(0.0, -1.0)
    with pytest.raises(ValueError, match="scale"):
        pyro.distributions.Normal(0.0, -1.0)


@pytest.mark.disable_validation
def test_validation_can_be_turned_off_per_test():
    torch.distributions.Normal(0.0, -1.0)  # accepted: no check


@pytest.mark.parametrize("run", [1, 2])  # the second run draws the same numbers as the first
def test_every_generator_starts_from_the_seed(run):
    assert random.random() == random.Random(SEED).random()
    assert np.random.rand() == np.random.RandomState(SEED).rand()
    expected = torch.rand(3, generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("run", [1, 2])  # the second run would see the first run's parameter
def test_pyro_param_store_starts_empty(run):
    assert len(pyro.get_param_store()) == 0
    pyro.param("leftover", torch.zeros(1))  # cleared before the next test


def test_warnings_are_errors():
    with pytest.raises(UserWarning, match="unnoticed"):
        warnings.warn("unnoticed", UserWarning, stacklevel=1)
    with pytest.raises(DeprecationWarning):
        warnings.warn("old", DeprecationWarning, stacklevel=1)

"""Test-wide set-up, after pyro's ``tests/conftest.py``.

* distribution argument validation is on (torch and pyro), so a test that builds a distribution
  from out-of-support parameters fails instead of silently computing nonsense;
* every test starts from the same random state (torch, numpy, ``random``; pyro's parameter store
  cleared), so a statistical test passes or fails the same way alone and in the suite;
* warnings are errors (``filterwarnings`` in ``pyproject.toml``, with a short allow-list), so a
  deprecation or an "uncalibrated width" warning cannot go unnoticed.

Markers: ``slow`` (skipped by ``make test-fast``), ``gpu`` (needs CUDA),
``disable_validation`` (runs the test with distribution validation off).
"""

import random

import numpy as np
import pyro
import pytest
import torch

SEED = 0


@pytest.fixture(autouse=True)
def _validation_and_seed(request):
    validate = request.node.get_closest_marker("disable_validation") is None
    pyro.enable_validation(validate)  # also sets torch's default validate_args
    torch.distributions.Distribution.set_default_validate_args(validate)
    pyro.clear_param_store()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    yield
    pyro.enable_validation(True)
    torch.distributions.Distribution.set_default_validate_args(True)

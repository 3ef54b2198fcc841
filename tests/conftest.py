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

import os

# One torch thread per test process (and the CLI subprocesses it starts) unless the caller chose:
# the suite's models are small, and extra threads only oversubscribe a shared machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])


import random  # noqa: E402

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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

"""The top-level front door: ``import bnn_nested as bn`` gives the objects a program needs (the
functions themselves, not same-named modules), ``bn.__version__`` is the packaged version, and the
import itself stays light (no torch until an object is used)."""

import re
import subprocess
import sys
import types
from pathlib import Path

import bnn_nested as bn
from bnn_nested.evaluation.prediction import predict
from bnn_nested.evaluation.report import evaluate
from bnn_nested.nest import nestify

ROOT = Path(__file__).resolve().parents[1]


def test_front_door_gives_the_objects_not_modules():
    assert bn.nestify is nestify and bn.evaluate is evaluate and bn.predict is predict
    for name in bn.__all__:
        assert not isinstance(getattr(bn, name), types.ModuleType), name
    assert set(bn.__all__) <= set(dir(bn))


def test_subpackages_give_the_functions_not_their_modules():
    """``from bnn_nested.evaluation import evaluate`` was the module evaluate.py (issue 27)."""
    import bnn_nested.evaluation as ev

    for name in ev.__all__:
        assert not isinstance(getattr(ev, name), types.ModuleType), name
    assert ev.evaluate is evaluate and ev.predict is predict


def test_version_is_the_packaged_one():
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.MULTILINE).group(1)
    assert bn.__version__ == version


def test_import_does_not_load_torch():
    code = "import sys, bnn_nested; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    try:
        bn.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")

"""A model-specific key (variant, kwargs; arch and target are checked by the config itself) given to a model that does not read it is
refused in one line naming the key and the models it applies to (issue 27: ``mlp`` with
``variant`` was accepted silently); models that read it still build, and a user model registered
without declaring options is not checked."""

import pytest
import torch

from bnn_nested.config import build_config
from bnn_nested.models.registry import MODELS, build_model, register_model
from bnn_nested.runs.build import validate_run
from bnn_nested.training.samplers import build_sampler


def _build(model: dict):
    """Validate a new run's config (what `train` does before writing anything), then build."""
    cfg = build_config(
        {"data": {"name": "digits"}, "model": {"hidden": [8], "groups": 4, "kept": 1, **model}}
    )
    validate_run(cfg)
    kw = build_sampler(cfg.ordering).ordering_kwargs()
    with torch.device("meta"):
        return build_model(
            cfg.model, kw, (64,) if model["name"] in ("mlp", "_user_any_options") else (1, 8, 8), 10
        )


@pytest.mark.parametrize(
    "model, key",
    [
        ({"name": "mlp", "variant": "19"}, "variant"),
        ({"name": "mlp", "kwargs": {"depth": 2}}, "kwargs"),
        ({"name": "lenet", "hidden": [4, 8, 16], "variant": "5"}, "variant"),
        ({"name": "resnet", "kwargs": {"width": 2}}, "kwargs"),
    ],
)
def test_a_key_the_model_does_not_read_is_refused(model, key):
    with pytest.raises(ValueError, match=rf"^model\.{key}: not read by model") as err:
        _build(model)
    assert "\n" not in str(err.value)


def test_the_error_names_the_models_that_read_it():
    with pytest.raises(ValueError, match=r"applies to: resnet, vgg\)"):
        _build({"name": "mlp", "variant": "19"})


def test_models_that_read_the_key_build():
    _build({"name": "vgg", "hidden": [8, 8, 8, 8, 8, 8, 8, 8], "variant": "11"})


def test_a_user_model_without_declared_options_is_not_checked():
    @register_model("_user_any_options")
    def _user(cfg, ordering, shape, n):  # reads model.variant itself; delegates the network
        assert cfg.variant == "mine"
        return MODELS["mlp"](cfg.model_copy(update={"variant": None}), ordering, shape, n)

    try:
        _build({"name": "_user_any_options", "variant": "mine"})
    finally:
        MODELS._entries.pop("_user_any_options", None)

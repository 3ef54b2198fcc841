"""A user's network whose output is not one logit per class is refused in one line naming the
shapes when the model is built (it failed inside the loss with cross-entropy's 'spatial targets')."""

import pytest
import torch
from torch import nn

from bnn_nested.cli.main import main


def per_pixel(num_classes: int = 10) -> nn.Module:
    """A segmentation-like network: (B, 1, 8, 8) -> (B, num_classes, 8, 8)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))


def flat(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


@pytest.mark.parametrize("factory", ["per_pixel"])
def test_a_network_with_the_wrong_output_shape_is_refused_in_one_line(tmp_path, capsys, factory):
    rc = main(
        [
            *("train", "--config", "configs/digits_mlp.yaml", "--out", str(tmp_path / "run")),
            *("--quiet", "--set", "model.name=import"),
            *("--set", f"model.target=tests.models.test_output_shape:{factory}"),
            *("--set", "model.groups=4", "--set", "train.epochs=1"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "(2, 10, 8, 8)" in err[0] and "expected (2, 10)" in err[0], err[0]
    assert not (tmp_path / "run").exists()


def test_a_network_with_one_logit_per_class_passes_the_check():
    from bnn_nested.models.external import check_classifier_output

    check_classifier_output(flat(), torch.randn(2, 1, 8, 8), 10)  # no error

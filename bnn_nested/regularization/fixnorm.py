"""FixNorm (Zhou, Sun, Zhong; arXiv 2103.15345), docs/METHODS.md#fixnorm.

Weight decay acts through (i) the effective learning rate of weights followed by normalization and
(ii) the "cross-boundary risk" of the final classifier, which no normalization follows. FixNorm drops
weight decay and controls both directly, re-projecting after every optimizer step:

- each norm-followed weight keeps the norm it had at :meth:`setup` (per output filter or per
  layer): ``W_o <- ||W_o^(0)|| * W_o / ||W_o||``;
- the classifier's weight has a fixed norm ``c = classifier_norm``: each class row ``w_k <- c w_k /
  ||w_k||`` (``"per_class"``) or the whole matrix ``W <- c W / ||W||_F`` (``"matrix"``). It is
  projected at setup too, so it never leaves the constraint set. Its bias is untouched.

The paper's granularity and tuning procedure are not confirmed here: defaults are per filter and
per class with ``c = 1``; tune ``classifier_norm``. Other weights that are neither norm-followed
nor the classifier get coupled weight decay ``other_weight_decay`` (a gradient edit, as in WRS).

Example::

    reg = FixNorm(classifier_norm=2.0, example_input=x[:2]); reg.setup(model)
    loss.backward(); reg.before_step(model, opt); opt.step(); reg.after_step(model, step)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from bnn_nested.regularization.targets import find_classifier, rescale_
from bnn_nested.regularization.wrs import Granularity, NormProjection, _check_choice

ClassifierGranularity = Literal["per_class", "matrix"]


class FixNorm(NormProjection):
    """Fix norm-followed weights at their initial norms and the classifier at a constant.

    Args:
        granularity: ``"filter"`` or ``"layer"`` for the norm-followed weights.
        classifier_norm: the constant norm ``c > 0`` of the classifier weight.
        classifier_granularity: ``"per_class"`` (every row has norm ``c``) or ``"matrix"``
            (Frobenius norm ``c``).
        classifier: module name of the classifier; default: the last ``nn.Linear``.
        other_weight_decay: coupled decay for the remaining un-normalized weights (0 = none).
        include, exclude, example_input: as in :class:`~bnn_nested.regularization.wrs.WeightRescaling`.
    """

    name = "fixnorm"

    def __init__(
        self,
        granularity: Granularity = "filter",
        classifier_norm: float = 1.0,
        classifier_granularity: ClassifierGranularity = "per_class",
        classifier: str | None = None,
        other_weight_decay: float = 5e-4,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        example_input: torch.Tensor | tuple | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(granularity, other_weight_decay, include, exclude, example_input, eps)
        _check_choice(classifier_granularity, ClassifierGranularity, "classifier_granularity")
        if not classifier_norm > 0:
            raise ValueError(f"classifier_norm: must be > 0, got {classifier_norm}")
        self.classifier_norm = float(classifier_norm)
        self.classifier_granularity = classifier_granularity
        self.classifier = classifier

    def _choose_targets(self, model: nn.Module, example_input) -> list[str]:
        if self.classifier is None:
            self.classifier = find_classifier(model)
        elif self.classifier not in self._layers:
            raise ValueError(f"classifier: {self.classifier!r} is not a Linear/Conv layer")
        targets = super()._choose_targets(model, example_input)
        return [n for n in targets if n != self.classifier]

    def _unregularized(self) -> list[str]:
        return [n for n in super()._unregularized() if n != self.classifier]

    def setup(self, model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> None:
        super().setup(model, example_input)
        self._project_classifier()

    @torch.no_grad()
    def _project_classifier(self) -> None:
        w = self._weight(self.classifier)
        gran = "filter" if self.classifier_granularity == "per_class" else "layer"
        rescale_(w, self.classifier_norm, gran, 0, self.eps)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        self._project_targets(use_initial=True)
        self._project_classifier()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "classifier": self.classifier}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.classifier = state["classifier"]

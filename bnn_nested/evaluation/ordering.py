"""Report the learned ordering: keep probabilities per layer (JSON, markdown table, plot).

Lets users check that the ordering *learned* (methods.md §7: the reference's barely moved): each
ordering unit's keep probabilities ``P(b >= k)`` next to its prior's, and the expected number of
groups kept, ``E[groups] = F + E[b] = F + sum_k P(b >= k)``.

Example::

    report = ordering_report(model)
    write_ordering_report(model, "runs/demo")    # keep_probs.json, ordering.md, keep_probs.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnn_nested.distributions import keep_probs_from_logits
from bnn_nested.evaluation.plots import keep_prob_plot
from bnn_nested.io import atomic_write_json, atomic_write_text
from bnn_nested.nn.model import NestedModel


def ordering_report(model: NestedModel) -> dict[str, dict[str, Any]]:
    """Per ordering unit: ``keep_probs`` (K,), ``prior_keep_probs`` (K,), ``expected_groups``
    (``F + sum keep``), ``prior_expected_groups``, ``expected_channels``, ``groups``, ``frozen``,
    ``learned``. Raises ``ValueError`` for a model without ordering units."""
    out: dict[str, dict[str, Any]] = {}
    for name, u in model.ordering_units():
        keep = u.keep_probs().detach().cpu()
        prior = keep_probs_from_logits(u.prior_logits).detach().cpu()
        expected = u.frozen + float(keep.sum())
        out[name] = {
            "keep_probs": [round(float(p), 6) for p in keep],
            "prior_keep_probs": [round(float(p), 6) for p in prior],
            "expected_groups": expected,
            "prior_expected_groups": u.frozen + float(prior.sum()),
            "expected_channels": expected * u.group_size,
            "groups": u.groups,
            "frozen": u.frozen,
            "learned": bool(u.learn),
        }
    if not out:
        raise ValueError("model: has no ordering units to report on")
    return out


def ordering_table(report: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per layer."""
    lines = [
        "| layer | groups G | frozen F | E[groups kept] | prior E[groups] | P(keep) first / middle / last |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report.items():
        k = r["keep_probs"]
        trio = f"{k[0]:.3f} / {k[len(k) // 2]:.3f} / {k[-1]:.3f}"
        lines.append(
            f"| {name} | {r['groups']} | {r['frozen']} | {r['expected_groups']:.2f} | "
            f"{r['prior_expected_groups']:.2f} | {trio} |"
        )
    return "\n".join(lines) + "\n"


def write_ordering_report(model: NestedModel, out_dir: str | Path) -> dict[str, Path]:
    """Write ``keep_probs.json``, ``ordering.md`` and ``keep_probs.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ordering_report(model)
    paths = {
        "json": atomic_write_json(out / "keep_probs.json", report),
        "markdown": atomic_write_text(out / "ordering.md", ordering_table(report)),
        "plot": keep_prob_plot(
            {n: r["keep_probs"] for n, r in report.items()}, out / "keep_probs.png"
        ),
    }
    return {k: Path(v) for k, v in paths.items()}

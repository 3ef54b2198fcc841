"""Report the learned ordering: keep probabilities per layer (JSON, markdown table, plot).

Lets users check that the ordering *learned* (the reference's barely moved:
docs/METHODS.md#differences-from-the-reference-code): each ordering unit's keep probabilities
``P(b >= k)`` next to its prior's, and the expected number of groups kept,
``E[groups] = F + E[b] = F + sum_k P(b >= k)``.

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
from bnn_nested.nest import NestifiedModel


def ordering_report(model: NestifiedModel) -> dict[str, dict[str, Any]]:
    """Per ordering unit: ``keep_probs`` (K,), ``prior_keep_probs`` (K,), ``expected_groups``
    (``F + sum keep``), ``prior_expected_groups``, ``expected_channels``, ``groups``, ``kept``,
    ``learned``. Raises ``ValueError`` for a model without ordering units."""
    out: dict[str, dict[str, Any]] = {}
    group_size = {d.name: d.group_size for d in model.structure}  # channels per group
    for name, u in model.ordering_units():
        keep = u.keep_probs().detach().cpu()
        prior = keep_probs_from_logits(u.prior_logits).detach().cpu()
        expected = u.expected_groups()
        out[name] = {
            "keep_probs": [round(float(p), 6) for p in keep],
            "prior_keep_probs": [round(float(p), 6) for p in prior],
            "expected_groups": expected,
            "prior_expected_groups": u.kept + float(prior.sum()),
            "expected_channels": expected * group_size[name],
            "groups": u.groups,
            "kept": u.kept,
            "learned": bool(u.learn),
        }
    if not out:
        raise ValueError("model: has no ordering units to report on")
    return out


#: Largest change of every keep probability from its initial value below which ``ordering.md``
#: says that the ordering barely moved (the widths then reflect the initialisation, not learning).
BARELY_MOVED = 0.05


def keep_probs_now(model: NestifiedModel) -> dict[str, list[float]]:
    """Per ordering unit, its current keep probabilities (call before training to record the
    initial ones for :func:`write_ordering_report`)."""
    return {
        name: [round(float(p), 6) for p in u.keep_probs().detach().cpu()]
        for name, u in model.ordering_units()
    }


def add_initial(
    report: dict[str, dict[str, Any]], initial: dict[str, list[float]] | None
) -> dict[str, dict[str, Any]]:
    """Add ``initial_keep_probs``, ``initial_expected_groups`` and ``max_change_from_init``
    (largest ``|P_learned(b >= k) - P_init(b >= k)|``) to every layer found in ``initial``."""
    for name, r in report.items():
        init = (initial or {}).get(name)
        if init is None or len(init) != len(r["keep_probs"]):
            continue
        r["initial_keep_probs"] = list(init)
        r["initial_expected_groups"] = r["kept"] + float(sum(init))
        r["max_change_from_init"] = max(abs(a - b) for a, b in zip(r["keep_probs"], init))
    return report


def ordering_table(report: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per layer (learned, initial and prior expected groups, the largest
    change of a keep probability from its initial value), then one line on how far it moved."""
    has_init = all("max_change_from_init" in r for r in report.values())
    lines = [
        "| layer | groups G | kept F | E[groups kept] | at init | prior E[groups] | "
        "max abs change of P(keep) from init | P(keep) first / middle / last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report.items():
        k = r["keep_probs"]
        trio = f"{k[0]:.3f} / {k[len(k) // 2]:.3f} / {k[-1]:.3f}"
        init = f"{r['initial_expected_groups']:.2f}" if "initial_expected_groups" in r else "-"
        change = f"{r['max_change_from_init']:.4f}" if "max_change_from_init" in r else "-"
        lines.append(
            f"| {name} | {r['groups']} | {r['kept']} | {r['expected_groups']:.2f} | {init} | "
            f"{r['prior_expected_groups']:.2f} | {change} | {trio} |"
        )
    lines.append("")
    if has_init:
        moved = max(r["max_change_from_init"] for r in report.values())
        if moved < BARELY_MOVED:
            lines.append(
                f"**The ordering barely moved:** every learned keep probability is within "
                f"{moved:.4f} of its initial value (threshold {BARELY_MOVED}), so the widths "
                "reflect `ordering.init` more than training. A larger `ordering.lr`, more "
                "epochs or `ordering.init: prior` let the data move it (docs/METHODS.md#variational-ordering-units)."
            )
        else:
            lines.append(
                f"The largest change of a keep probability from its initial value is {moved:.4f}."
            )
    else:
        lines.append("Initial keep probabilities were not recorded for this run.")
    lines.append(
        "Prior: the keep probabilities of the ordering prior (`ordering.prior`, "
        "`ordering.prior_pi`); keep_probs.png shows learned (bars), initial and prior (lines)."
    )
    return "\n".join(lines) + "\n"


#: Epochs over which :func:`history_table` measures convergence (the largest change per epoch).
CONVERGENCE_EPOCHS = 5


def add_history(
    report: dict[str, dict[str, Any]], history: list[dict[str, dict[str, float]]] | None
) -> dict[str, dict[str, Any]]:
    """Add ``expected_groups_history`` (one value per epoch, from the trainer's
    ``posterior_history``) to every unit found in it."""
    for name, r in report.items():
        values = [h["expected_groups"][name] for h in history or [] if name in h["expected_groups"]]
        if values:
            r["expected_groups_history"] = [round(v, 4) for v in values]
    return report


def max_change_per_epoch(values: list[float], last: int = CONVERGENCE_EPOCHS) -> float:
    """Largest ``|change|`` between consecutive values over the last ``last`` steps (epochs)."""
    tail = values[-(last + 1) :]
    return max((abs(b - a) for a, b in zip(tail, tail[1:])), default=0.0)


def history_table(history: list[dict[str, dict[str, float]]] | None) -> str:
    """Markdown: per learned unit its expected groups, and per Gaussian layer its mean
    ``log_alpha``, at a few epochs and the largest change per epoch over the last
    :data:`CONVERGENCE_EPOCHS` epochs (a posterior that converged changes little there; one that
    drifts at the optimiser's step size does not)."""
    if not history:
        return ""
    n = len(history)
    marks = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})
    head = " | ".join(f"epoch {i + 1}" for i in marks)
    lines = [
        "",
        f"Per epoch ({n} epochs; largest change per epoch over the last {CONVERGENCE_EPOCHS}):",
        "",
        f"| quantity | {head} | max change / epoch |",
        "|---|" + "---:|" * (len(marks) + 1),
    ]
    for key, label in (("expected_groups", "E[groups]"), ("mean_log_alpha", "mean log_alpha")):
        for name in history[-1].get(key, {}):
            vals = [h[key][name] for h in history if name in h.get(key, {})]
            if len(vals) != n:
                continue
            cells = " | ".join(f"{vals[i]:.3f}" for i in marks)
            lines.append(f"| {label} {name} | {cells} | {max_change_per_epoch(vals):.3f} |")
    return "\n".join(lines) + "\n"


def write_ordering_report(
    model: NestifiedModel,
    out_dir: str | Path,
    initial: dict[str, list[float]] | None = None,
    history: list[dict[str, dict[str, float]]] | None = None,
) -> dict[str, Path]:
    """Write ``keep_probs.json``, ``ordering.md`` and ``keep_probs.png`` into ``out_dir``.

    ``initial``: :func:`keep_probs_now` of the model before training (shown next to the learned
    and prior keep probabilities; ``None``: not recorded). ``history``: the trainer's
    ``posterior_history`` (per-epoch expected groups and mean ``log_alpha``: a table in
    ``ordering.md``, a panel in the plot, ``expected_groups_history`` in the JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = add_history(add_initial(ordering_report(model), initial), history)
    paths = {
        "json": atomic_write_json(out / "keep_probs.json", report),
        "markdown": atomic_write_text(
            out / "ordering.md", ordering_table(report) + history_table(history)
        ),
        "plot": keep_prob_plot(
            {n: r["keep_probs"] for n, r in report.items()},
            out / "keep_probs.png",
            prior={n: r["prior_keep_probs"] for n, r in report.items()},
            initial={
                n: r["initial_keep_probs"] for n, r in report.items() if "initial_keep_probs" in r
            },
            history={
                n: r["expected_groups_history"]
                for n, r in report.items()
                if "expected_groups_history" in r
            },
        ),
    }
    return {k: Path(v) for k, v in paths.items()}

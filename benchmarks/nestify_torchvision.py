"""Convert every torchvision classification architecture with ``nestify`` and check it.

For each name in ``torchvision.models.list_models(module=torchvision.models)`` (random init, its
usual input size: 299 for Inception v3, 224 otherwise; batch 2, eval mode):

- ``convert_s``: wall time of ``nestify(model, x)`` (graph analysis, module swap, conversion check);
- ``dims`` / ``unordered``: ordered channel dimensions and dimensions left whole;
- ``full``: max |nested(x) - original(x)| / max |original(x)| at full width (target <= 1e-4);
- ``slice25`` / ``slice50``: max |sliced(x) - masked(x)| / max |masked(x)| at widths 0.25 / 0.5,
  where *masked* is the full network with the dropped channels zeroed at every consumer and
  *sliced* the physically smaller network of ``export_width`` (target <= 1e-4);
- ``export``: the same comparison for the sliced width-0.25 module after ``torch.export``
  (``--no-export`` skips it);
- ``flops25`` / ``flops50``: FLOPs(r) / FLOPs(1) of the sliced networks (FLOPs = 2 x MACs).

A model *passes* when it converts with at least one ordered dimension and every difference is
<= 1e-4. Zero-initialised weights (e.g. ViT's classification head) are re-drawn from N(0, 0.02^2)
first, so that the output scale is not 0. Each model runs in its own process (``--timeout``
seconds), results are appended to a JSON-lines file, and ``--table`` prints the Markdown table.

``--permute a,b`` instead orders every dimension of each model by importance (``l1``) and prints
the relative change of the full-width output (``perm``; the permutation must not change it).

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/nestify_torchvision.py [--models a,b]
[--out runs/bench/nestify_torchvision.jsonl] [--timeout 900] [--no-export]``;
``... --table runs/bench/nestify_torchvision.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

TOL = 1e-4


def _input_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def _build(name: str) -> torch.nn.Module:
    import torchvision

    kwargs = (
        {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    )
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def run_one(name: str, export: bool) -> dict:
    from bnn_nested.deploy.export import export_width
    from bnn_nested.nest import nestify, sliced_cost

    torch.manual_seed(0)
    model = _build(name)
    s = _input_size(name)
    x = torch.randn(2, 3, s, s)
    row: dict = {"model": name, "input": s}
    with torch.no_grad():
        ref = model(x)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm = nestify(model, x).eval()
    row["convert_s"] = round(time.perf_counter() - t, 2)
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if "nestify" in str(w.message)})
    row["dims"] = len(nm.structure)
    row["unordered"] = len(nm.structure.unordered)
    with torch.no_grad():
        row["full"] = _rel(nm(x), ref)
        flops1 = sliced_cost(nm, 1.0, x)[0]
        for w, key in ((0.25, "25"), (0.5, "50")):
            masked = nm(x, width=w)
            plain = export_width(nm, w, x)
            row[f"slice{key}"] = _rel(plain(x), masked)
            row[f"flops{key}"] = round(sliced_cost(nm, w, x)[0] / flops1, 4)
            if export and w == 0.25:
                program = torch.export.export(plain, (x,))
                row["export"] = _rel(program.module()(x), masked)
    diffs = [row[k] for k in ("full", "slice25", "slice50", "export") if k in row]
    row["pass"] = row["dims"] > 0 and all(d <= TOL for d in diffs)
    return row


def permute_one(name: str) -> dict:
    """Importance ordering (``l1``) of every dimension: max |ordered(x) - original(x)| / max |original(x)|
    at full width (the permutation must not change the function)."""
    from bnn_nested.nest import nestify

    torch.manual_seed(0)
    model = _build(name)
    s = _input_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        ref = model(x)
    nm = nestify(model, x, order="importance", importance="l1").eval()
    with torch.no_grad():
        return {"model": name, "dims": len(nm.structure), "perm": _rel(nm(x), ref)}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| model | input | convert s | dims | unordered | full | slice 0.25 | slice 0.5 | export | "
        "FLOPs 0.25 | FLOPs 0.5 | pass / reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v):
        return "-" if v is None else (f"{v:.1e}" if isinstance(v, float) else str(v))

    for r in sorted(rows, key=lambda r: r["model"]):
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | | | | | | no: {r['error'][:120]} |")
            continue
        verdict = (
            "yes"
            if r["pass"]
            else ("no: no ordered dimension" if not r["dims"] else "no: difference > 1e-4")
        )
        lines.append(
            f"| {r['model']} | {r['input']} | {r['convert_s']} | {r['dims']} | {r['unordered']} | "
            f"{f(r['full'])} | {f(r['slice25'])} | {f(r['slice50'])} | {f(r.get('export'))} | "
            f"{r['flops25']:.3f} | {r['flops50']:.3f} | {verdict} |"
        )
    n_pass = sum(1 for r in rows if r.get("pass"))
    lines.append("")
    lines.append(
        f"{n_pass} of {len(rows)} converted and passed ({100 * n_pass / max(len(rows), 1):.0f}%)."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="", help="comma list (default: all classification models)")
    p.add_argument("--out", default="runs/bench/nestify_torchvision.jsonl")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--permute", help="comma list: check importance ordering is exact at full width")
    p.add_argument("--table", help="print the Markdown table of a results file")
    a = p.parse_args()
    if a.table:
        print(table(Path(a.table)))
        return
    if a.one:
        print(json.dumps(run_one(a.one, not a.no_export)))
        return
    if a.permute:
        for name in a.permute.split(","):
            print(json.dumps(permute_one(name)), flush=True)
        return
    import torchvision

    names = (
        a.models.split(",")
        if a.models
        else torchvision.models.list_models(module=torchvision.models)
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(line)["model"] for line in out.read_text().splitlines() if line.strip()}
    for name in names:
        if name in done:
            continue
        cmd = [sys.executable, __file__, "--one", name] + (["--no-export"] if a.no_export else [])
        t = time.perf_counter()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                err = (res.stderr.strip().splitlines() or ["failed"])[-1]
                row = {"model": name, "error": err}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {a.timeout} s"}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Convert timm classifiers (random init, nothing downloaded) with ``nestify`` and check them.

For each architecture in :data:`MODELS` (``timm.create_model(name, pretrained=False,
num_classes=10)``, with ``img_size=64`` where the model takes it and runs at it; input 64 x 64, or
the model's own input size where it has a fixed one or does not run at 64 (EfficientFormer: 224,
its attention biases are sized for it whatever ``img_size`` says; Inception v3: 299, too deep a
stride for 64); batch 2; eval mode): every near-constant parameter (zeros, ones, a
small LayerScale, GRN's zero gamma / beta: ``bnn_nested.nest.convert._near_constant``) is first
re-drawn as ``p + N(0, s^2)``, ``s = 0.5 max(1, mean |p|)`` (seeded), so that the outputs have a
scale and identity-at-initialisation layers mix their channels; then every batch norm's running
statistics are set to the average over 4 batches of 8 random inputs (train-mode passes,
``momentum=None``), as training would leave them (at their initial mean 0 / variance 1 a re-drawn
deep network's activations grow by orders of magnitude per stage and float32 rounding alone changes
its logits: efficientnetv2_rw_t's 1e-7 perturbation of one stage moved them by 45 %). Then:

- ``convert_s``: wall time of ``nestify(model, x, kept=0)`` (its conversion check included);
- ``dims`` / ``heads`` / ``unordered``: ordered dimensions, of which attention-head dimensions, and
  entries of ``structure.unordered``;
- ``full``: max |nested(x) - original(x)| / max |original(x)| at full width;
- ``worst``: the largest max |sliced(x) - masked(x)| / max |masked(x)| over widths 0.1, 0.25, 0.5,
  0.75, 0.9 and 2 random per-dimension allocations (seeded), *sliced* being ``sliced_network``;
- ``flops25``: FLOPs(0.25) / FLOPs(1) of the sliced networks (FLOPs = 2 x MACs).

A model *passes* when it converts with at least one ordered dimension and ``full`` and ``worst``
are <= 1e-4. Each model runs in its own process (``--timeout`` seconds); results are appended to a
JSON-lines file, ``--table`` prints the Markdown table.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/nestify_timm.py [--models a,b]
[--out runs/bench/nestify_timm.jsonl] [--timeout 600]``; ``... --table runs/bench/nestify_timm.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

TOL = 1e-4
WIDTHS = (0.1, 0.25, 0.5, 0.75, 0.9)
MODELS = """resnet18 resnet26d resnext26ts seresnext26d_32x4d regnetx_002 regnety_002
mobilenetv2_050 mobilenetv3_small_050 mobilenetv3_large_075 efficientnet_b0 efficientnet_lite0
tinynet_e mnasnet_small fbnetc_100 spnasnet_100 ghostnet_050 rexnet_100 dla34 densenet121
hrnet_w18_small vgg11 repvgg_a0 cspresnet50 darknet17 convnext_atto convnextv2_atto
vit_tiny_patch16_224 deit_tiny_patch16_224 deit3_small_patch16_224 cait_xxs24_224
xcit_nano_12_p16_224 pit_ti_224 levit_128s coat_lite_tiny twins_svt_small
swin_tiny_patch4_window7_224 mixer_s16_224 resmlp_12_224 gmlp_ti16_224 poolformer_s12
poolformerv2_s12 efficientformer_l1 edgenext_xx_small mobilevit_xxs mobilevitv2_050
tf_efficientnetv2_b0 efficientnetv2_rw_t lcnet_050 hardcorenas_a mixnet_s semnasnet_050
res2net50_14w_8s resnest14d skresnet18 selecsls42b ese_vovnet19b_dw gernet_s nf_resnet26
inception_v3 xception41 convit_tiny visformer_tiny sequencer2d_s fastvit_t8 repvit_m0_9
efficientvit_b0 tiny_vit_5m_224 hgnetv2_b0 inception_next_atto mambaout_femto ghostnetv2_100
crossvit_tiny_240 maxvit_nano_rw_256 eva02_tiny_patch14_224""".split()


def _runs_at(model: torch.nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        return True
    except RuntimeError:
        return False


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    import timm

    from bnn_nested.nest.convert import _near_constant

    try:
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=64).eval()
        size = 64
        if not _runs_at(model, size):  # img_size taken in **kwargs and ignored (EfficientFormer)
            raise RuntimeError
    except (TypeError, RuntimeError):
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        fixed = getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False)
        size = 64 if not fixed and _runs_at(model, 64) else model.pretrained_cfg["input_size"][-1]
    model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if _near_constant(p):
                s = 0.5 * max(1.0, float(p.abs().mean()))
                p.add_(torch.randn(p.shape, generator=gen) * s)
    calibrate_batch_norm(model, size, gen)
    return model, torch.randn(2, 3, size, size, generator=gen)


@torch.no_grad()
def calibrate_batch_norm(model: torch.nn.Module, size: int, gen: torch.Generator) -> None:
    """Running statistics of every batch norm = their average over 4 batches of random inputs."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    for _ in range(4):
        model(torch.randn(8, 3, size, size, generator=gen))
    model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@torch.no_grad()
def run_one(name: str) -> dict:
    from bnn_nested.nest import nestify, sliced_cost, sliced_network

    torch.manual_seed(0)
    model, x = build(name)
    row: dict = {"model": name, "input": x.shape[-1]}
    ref = model(x)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm = nestify(model, x, kept=0).eval()
    row["convert_s"] = round(time.perf_counter() - t, 1)
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if "nestify" in str(w.message)})
    row["dims"] = len(nm.structure)
    row["heads"] = sum(1 for d in nm.structure if d.kind == "heads" or d.block > 1)
    row["unordered"] = len(nm.structure.unordered)
    row["full"] = _rel(nm(x), ref)
    rng = random.Random(0)
    widths = list(WIDTHS) + [
        {d.name: rng.randint(1, d.groups) for d in nm.structure} for _ in range(2)
    ]
    worst = 0.0
    for w in widths if row["dims"] else []:
        worst = max(worst, _rel(sliced_network(nm, w, x)(x), nm(x, width=w)))
    row["worst"] = worst
    flops1 = sliced_cost(nm, 1.0, x)[0]
    row["flops25"] = round(sliced_cost(nm, 0.25, x)[0] / flops1, 4)
    row["pass"] = row["dims"] > 0 and max(row["full"], worst) <= TOL
    return row


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| model | input | convert s | dims | head dims | unordered | full | worst sliced vs "
        "masked | FLOPs 0.25 | pass / reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["model"]):
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | | | | no: {r['error'][:110]} |")
            continue
        verdict = (
            "yes"
            if r["pass"]
            else ("no: no ordered dimension" if not r["dims"] else "no: difference > 1e-4")
        )
        lines.append(
            f"| {r['model']} | {r['input']} | {r['convert_s']} | {r['dims']} | {r['heads']} | "
            f"{r['unordered']} | {r['full']:.1e} | {r['worst']:.1e} | {r['flops25']:.3f} | "
            f"{verdict} |"
        )
    n = sum(1 for r in rows if r.get("pass"))
    lines += ["", f"{n} of {len(rows)} converted and passed ({100 * n / max(len(rows), 1):.0f}%)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="", help="comma list (default: MODELS)")
    p.add_argument("--out", default="runs/bench/nestify_timm.jsonl")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--table", help="print the Markdown table of a results file")
    a = p.parse_args()
    if a.table:
        print(table(Path(a.table)))
        return
    if a.one:
        print(json.dumps(run_one(a.one)))
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(line)["model"] for line in out.read_text().splitlines() if line.strip()}
    for name in a.models.split(",") if a.models else MODELS:
        if name in done:
            continue
        t = time.perf_counter()
        try:
            res = subprocess.run(
                [sys.executable, __file__, "--one", name],
                capture_output=True,
                text=True,
                timeout=a.timeout,
            )
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                row = {"model": name, "error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {a.timeout} s"}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

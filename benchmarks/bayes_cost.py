"""Cost of Gaussian-weight layers: training step and ``predict(samples=8)`` against plain layers and
against the reference implementation's layer algorithm, on the same architecture and batch.

Training-step variants (one :class:`~bnn_nested.training.trainer.Trainer` step: forward, loss with
the KL, backward, Adam, projection; VOU sampler, hard masks, no norm regulariser):

- ``point``: point weights (plain layers; the unit of the ``x point`` column).
- ``lrt``: Gaussian weights, local reparameterisation, two convolutions per layer (mean, variance).
- ``lrt fused``: the same with mean and variance in one grouped convolution over ``[x, x^2]``.
- ``lrt channels-last``: ``lrt`` with the model and the input in channels-last memory format.
- ``shared``: Gaussian weights, ``weight_noise="shared"``: one weight draw per mini-batch and layer.
- ``reference``: the reference implementation's layer algorithm (``ralphc1212/
  variational_nested_dropout``, ``modules/torch_vnd.py`` ``Conv2dVND`` and ``modules/torch_vdo.py``
  ``LinearVDO``), re-implemented below from their forward and KL (not copied): two convolutions
  (mean, variance), a normal draw, and in every convolution but the first a hard Gumbel-softmax
  nested-dropout mask over ``groups`` channel groups; their KL (``get_reg``) times 1e-5 as in
  their CIFAR script; plain SGD with momentum (their script uses their own NGD optimiser, which
  costs more). It is built on the same plain network our builders nestify (same convolutions,
  batch norm, pools and linear layers); every layer is Bayesian, as in ours.
- ``compile lrt`` / ``compile shared`` (``--compile``): ``torch.compile`` of the model inside the
  same step; steady state timed, compile time reported.

Architectures: LeNet 16-32-256 (28x28, groups 16), VGG-11 (32x32, groups 16), and the reference's
only network, VGG-11-wide on CIFAR-10 (32x32, groups 32; their ``examples/models.py`` ``VGG_VND``;
the reference has no MNIST network). Every variant of one architecture and batch runs in one
interleaved loop (round robin), so load from other processes hits them alike; medians and the
spread (min-max) over rounds.

Prediction: ``predict(model, x, samples=8)`` (one whole weight draw per sample, one sample per
forward pass, the default ``chunk=1``), the same with the 8 samples batched into one forward pass
(``chunk=None``), and one plain-weight forward pass of the same architecture (the unit).

``--gradvar RUN``: variance of the data term's gradient on one fixed batch of a trained run
(``bnn-nested train`` output), ``lrt`` against ``shared``, over ``--draws`` noise draws.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bayes_cost.py --compile       # the RESULTS run
    .venv/bin/python benchmarks/bayes_cost.py --archs lenet --batches 8 --predict-batch 8 --quick
    .venv/bin/python benchmarks/bayes_cost.py --gradvar runs/wn_lrt_s0
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import bnn_nested.nn.nested as nested_mod
from bnn_nested.config import build_config
from bnn_nested.evaluation.prediction import predict
from bnn_nested.models import build_model
from bnn_nested.models.plain import VGG, VGG_CONFIGS, LeNet
from bnn_nested.nn import set_weight_noise
from bnn_nested.nn.bayes import lrt_conv2d_moments
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer

ARCHS: dict[str, tuple[dict, tuple[int, int, int]]] = {
    "lenet": (
        {"name": "lenet", "hidden": [16, 32, 256], "groups": 16, "kept": 2, "norm": "batch"},
        (1, 28, 28),
    ),
    "vgg11": (
        {"name": "vgg", "variant": "11", "groups": 16, "kept": 2, "norm": "batch"},
        (3, 32, 32),
    ),
    "vgg11-wide": (
        {"name": "vgg", "variant": "11-wide", "groups": 32, "kept": 2, "norm": "batch"},
        (3, 32, 32),
    ),
}
#: Weight of the reference's KL in its CIFAR-10 script (``reg_factor``).
REFERENCE_REG_FACTOR = 1e-5
N_TRAIN = 50_000  # the KL's 1 / N scale of our trainer (CIFAR-10-sized; no effect on cost)


# -- the reference's layer algorithm (re-implemented) -------------------------------------------
class RefConv2dVND(nn.Conv2d):
    """The reference's ``Conv2dVND`` forward in training: ``mu = conv(x, W)``,
    ``si = sqrt(1e-8 + conv(x^2, exp(log_alp) W^2))``, ``mu + si * N(0, 1)``, then (``masked``) a
    hard Gumbel-softmax draw of the number of kept channel groups (stick-breaking ``beta``,
    temperature 2) multiplying the output channels."""

    def __init__(self, conv: nn.Conv2d, groups: int, kept: int, masked: bool) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
        )
        self.log_alp = nn.Parameter(torch.full_like(self.weight, -1.0))
        self.masked = masked
        self.n_groups, self.kept = groups, kept
        self.every = conv.out_channels // groups
        self.beta_r = nn.Parameter(torch.full((groups - kept,), 3.0))
        pi = torch.full((groups - kept,), 0.95)
        one = torch.ones(1)
        self.register_buffer("pz", torch.cat([one, pi.cumprod(0)]) * torch.cat([1 - pi, one]))

    def _qz(self) -> torch.Tensor:
        beta = torch.sigmoid(self.beta_r.clamp(-5, 5))
        one = beta.new_ones(1)
        return torch.cat([one, beta.cumprod(0)]) * torch.cat([1 - beta, one])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        mu = F.conv2d(x, self.weight, self.bias, *args)
        var = F.conv2d(x * x, torch.exp(self.log_alp) * self.weight * self.weight, None, *args)
        out = mu + torch.sqrt(1e-8 + var) * torch.normal(torch.zeros_like(mu), torch.ones_like(mu))
        if not self.masked:
            return out
        sample = F.gumbel_softmax(self._qz(), tau=2.0, hard=True)
        keep = 1.0 - (sample.cumsum(0) - sample)[1:]
        keep = torch.cat([keep.new_ones(self.kept), keep]).repeat_interleave(self.every)
        return out * keep.view(1, -1, 1, 1)

    def get_reg(self) -> torch.Tensor:
        k1, k2, k3, k4 = 0.7294, -0.2041, 0.3492, 0.5387  # the reference's fitted constants
        la = self.log_alp
        w_kl = -0.5 * torch.log1p(torch.exp(-la)) + k1 * torch.exp(
            -math.exp(k4) * (k2 + k3 * la) ** 2
        )
        w_kl = w_kl.mean(dim=(1, 2, 3))
        if not self.masked:
            return -w_kl.sum()
        qz = self._qz()
        coef = qz.sum() - qz.cumsum(0)[:-1]
        coef = torch.cat([coef.new_ones(self.kept), coef]).repeat_interleave(self.every)
        kl_z = qz.dot(torch.log(1e-8 + qz / self.pz))
        return kl_z - coef.dot(w_kl)


class RefLinearVDO(nn.Linear):
    """The reference's ``LinearVDO`` forward: ``mu = x W^T``,
    ``si = sqrt(x^2 (exp(log_alp) W^2 + 1e-8)^T)``, ``mu + si * N(0, 1) + b``."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__(lin.in_features, lin.out_features, bias=True)
        self.log_alp = nn.Parameter(torch.full_like(self.weight, -1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.matmul(self.weight.t())
        var = (x * x).matmul((torch.exp(self.log_alp) * self.weight * self.weight + 1e-8).t())
        out = mu + torch.normal(torch.zeros_like(mu), torch.ones_like(mu)) * torch.sqrt(var)
        return out + self.bias

    def get_reg(self) -> torch.Tensor:
        k1, k2, k3 = 0.792, -0.4826, 0.3451
        la = self.log_alp
        kl = -0.5 * torch.log1p(torch.exp(-la)) + k1 * torch.exp(-((k2 + k3 * la) ** 2))
        return -kl.mean(1).sum()


def reference_twin(arch: str) -> nn.Module:
    """The plain network of ``arch`` with every conv / linear layer replaced by the reference's
    Bayesian layer (convolutions after the first carry its nested-dropout mask)."""
    spec, shape = ARCHS[arch]
    if spec["name"] == "lenet":
        net: nn.Module = LeNet(shape, 10, tuple(spec["hidden"]), spec["norm"])
    else:
        net = VGG(VGG_CONFIGS[spec["variant"]], shape, 10, spec["norm"])
    first = True
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Conv2d):
            new: nn.Module = RefConv2dVND(m, spec["groups"], spec["kept"], masked=not first)
            first = False
        elif isinstance(m, nn.Linear):
            new = RefLinearVDO(m)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return net


def reference_step(net: nn.Module, opt: torch.optim.Optimizer) -> Callable:
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        net.train()
        reg = sum(m.get_reg() for m in net.modules() if isinstance(m, (RefConv2dVND, RefLinearVDO)))
        loss = F.cross_entropy(net(x), y) + REFERENCE_REG_FACTOR * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# -- our variants -------------------------------------------------------------------------------
def make_trainer(
    arch: str, weight_posterior: str, weight_noise: str = "lrt", seed: int = 0
) -> Trainer:
    spec, shape = ARCHS[arch]
    cfg = build_config(
        {
            "model": {**spec, "weight_posterior": weight_posterior, "weight_noise": weight_noise},
            "ordering": {"sampler": "vou", "hard": True},
            "regularization": {"kind": "none"},
        }
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, 10)
    return Trainer(model, cfg, n_train=N_TRAIN, quiet=True)


@contextmanager
def fused_lrt():
    """Bayesian convolutions compute the LRT's mean and variance in one grouped convolution."""
    original = nested_mod.lrt_conv2d

    def fused(x, theta, log_alpha, bias, stride, padding, dilation, groups=1):
        m, v = lrt_conv2d_moments(
            x, theta, log_alpha, bias, stride, padding, dilation, groups, fused=True
        )
        return m + torch.sqrt(v + 1e-16) * torch.randn_like(m)

    nested_mod.lrt_conv2d = fused
    try:
        yield
    finally:
        nested_mod.lrt_conv2d = original


def train_cases(arch: str, batch: int, compile_: bool) -> tuple[dict[str, Callable], dict]:
    """name -> zero-argument step; plus notes (compile times)."""
    _, shape = ARCHS[arch]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases: dict[str, Callable] = {}
    notes: dict[str, float] = {}
    point = make_trainer(arch, "point")
    cases["point"] = partial(point.train_step, x, y)
    lrt = make_trainer(arch, "gaussian")
    cases["lrt"] = partial(lrt.train_step, x, y)
    fused = make_trainer(arch, "gaussian")

    def fused_step():
        with fused_lrt():
            fused.train_step(x, y)

    cases["lrt fused"] = fused_step
    cl = make_trainer(arch, "gaussian")
    cl.model.to(memory_format=torch.channels_last)
    cases["lrt channels-last"] = partial(cl.train_step, x_cl, y)
    shared = make_trainer(arch, "gaussian", "shared")
    cases["shared"] = partial(shared.train_step, x, y)
    ref = reference_twin(arch)
    ref_step = reference_step(ref, torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9))
    cases["reference"] = partial(ref_step, x, y)
    if compile_:
        for name, wn in (("compile lrt", "lrt"), ("compile shared", "shared")):
            tr = make_trainer(arch, "gaussian", wn)
            tr.model.forward = torch.compile(tr.model.forward)  # type: ignore[method-assign]
            t0 = time.perf_counter()
            try:
                tr.train_step(x, y)
                tr.train_step(x, y)
            except Exception as err:  # noqa: BLE001 - reported, the other variants still run
                print(f"{name}: torch.compile failed ({type(err).__name__}: {err})"[:300])
                continue
            notes[name] = time.perf_counter() - t0
            cases[name] = partial(tr.train_step, x, y)
    return cases, notes


def interleaved(cases: dict[str, Callable], rounds: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(warmup + rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[k].append(dt)
    return times


def cell(ts: list[float]) -> str:
    return f"{1000 * statistics.median(ts):.0f} ({1000 * min(ts):.0f}-{1000 * max(ts):.0f})"


def train_table(arch: str, batch: int, rounds: int, warmup: int, compile_: bool) -> str:
    cases, notes = train_cases(arch, batch, compile_)
    times = interleaved(cases, rounds, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"#### {arch}, batch {batch}: training step, {rounds} interleaved rounds, "
        f"{torch.get_num_threads()} thread(s)",
        "",
        "| variant | median ms (min-max) | x point | x reference |",
        "|---|---|---|---|",
    ]
    for k, ts in times.items():
        lines.append(
            f"| {k} | {cell(ts)} | {med[k] / med['point']:.2f} | {med[k] / med['reference']:.2f} |"
        )
    for k, s in notes.items():
        lines.append(f"\n{k}: first two steps (compilation) took {s:.1f} s")
    return "\n".join(lines)


# -- prediction ---------------------------------------------------------------------------------
def predict_table(arch: str, batch: int, samples: int, rounds: int) -> str:
    _, shape = ARCHS[arch]
    gauss = make_trainer(arch, "gaussian").model.eval()
    plain = make_trainer(arch, "point").model.eval()
    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(1))
    cases = {
        "plain": lambda: predict(plain, x),
        "per sample": lambda: predict(gauss, x, samples=samples),
        "batched": lambda: predict(gauss, x, samples=samples, chunk=None),
    }
    times = interleaved(cases, rounds, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return (
        f"| {arch} | {batch} | {cell(times['plain'])} | {cell(times['per sample'])} | "
        f"{cell(times['batched'])} | {med['per sample'] / med['plain']:.2f} | "
        f"{med['batched'] / med['plain']:.2f} |"
    )


# -- gradient variance --------------------------------------------------------------------------
def gradient_variance(run_dir: str, draws: int, batch: int) -> str:
    """Per-parameter-group total variance of the data term's gradient, over weight-noise draws on
    one fixed training batch of a trained run (ordering masks off: only the weight noise varies)."""
    from bnn_nested.training.run import load_run

    run = load_run(run_dir)
    model = run.model
    xs, ys = zip(*(run.splits.train[i] for i in range(batch)))
    x, y = torch.stack(xs), torch.tensor(ys)
    groups = {
        "theta": [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1],
        "log_alpha": [p for n, p in model.named_parameters() if n.endswith("log_alpha")],
    }
    rows = {}
    for wn in ("lrt", "shared"):
        set_weight_noise(model, wn)
        torch.manual_seed(0)
        gs: dict[str, list[torch.Tensor]] = {k: [] for k in groups}
        model.train()
        with model.masking(False):
            for _ in range(draws):
                loss = F.cross_entropy(model(x), y)
                flat = torch.autograd.grad(loss, [p for ps in groups.values() for p in ps])
                i = 0
                for k, ps in groups.items():
                    gs[k].append(torch.cat([t.flatten() for t in flat[i : i + len(ps)]]))
                    i += len(ps)
        rows[wn] = {
            k: (torch.stack(v).var(0).sum().item(), torch.stack(v).mean(0).square().sum().item())
            for k, v in gs.items()
        }
    lines = [
        f"Gradient of the mean cross-entropy on one fixed batch of {batch} training examples of "
        f"{run_dir}, {draws} noise draws per estimator (masks off, batch norm in training mode)",
        "",
        "| parameters | estimator | total variance (sum over weights) | squared norm of mean "
        "| variance / lrt |",
        "|---|---|---|---|---|",
    ]
    for k in groups:
        for wn in ("lrt", "shared"):
            var, sq = rows[wn][k]
            lines.append(f"| {k} | {wn} | {var:.3e} | {sq:.3e} | {var / rows['lrt'][k][0]:.2f} |")
    return "\n".join(lines)


def accuracy_table(run_dirs: list[str]) -> str:
    """Test accuracy / NLL / ECE at every width (``bnn-nested evaluate``'s ``report.json``), mean
    ± std over the runs of each ``model.weight_noise``, and the mean learned ``log_alpha``."""
    import json
    from pathlib import Path

    from bnn_nested.training.checkpoint import read_checkpoint

    groups: dict[str, list[dict]] = {}
    for d in run_dirs:
        report = json.loads((Path(d) / "report.json").read_text())
        state, _ = read_checkpoint(Path(d) / "checkpoint.pt", map_location="cpu")
        wn = state["config"]["model"].get("weight_noise", "lrt")
        las = [v.flatten() for k, v in state["model"].items() if k.endswith("log_alpha")]
        row = {"log_alpha": torch.cat(las).mean().item()}
        for w, m in report["widths"].items():
            for k in ("cls/acc", "cls/nll", "cal/ece"):
                row[f"{k}@{w}"] = m[k]
        groups.setdefault(wn, []).append(row)
    keys = list(next(iter(groups.values()))[0])

    def fmt(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f}"

    lines = [
        "| quantity | " + " | ".join(f"{wn} ({len(rs)} runs)" for wn, rs in groups.items()) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for k in keys:
        lines.append(
            f"| {k} | " + " | ".join(fmt([r[k] for r in rs]) for rs in groups.values()) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="lenet,vgg11,vgg11-wide")
    ap.add_argument("--batches", default="128,256", help="training batches of LeNet")
    ap.add_argument("--vgg-batches", default="128", help="training batches of the VGGs")
    ap.add_argument("--predict-batch", type=int, default=256)
    ap.add_argument("--predict-archs", default="lenet,vgg11")
    ap.add_argument("--rounds", type=int, default=5, help="rounds for LeNet (VGG: --vgg-rounds)")
    ap.add_argument("--vgg-rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 round, no warm-up (a smoke run)")
    ap.add_argument("--gradvar", metavar="RUN", help="only the gradient variance of a trained run")
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--gradvar-batch", type=int, default=128)
    ap.add_argument("--accuracy", nargs="+", metavar="RUN", help="only summarise evaluated runs")
    args = ap.parse_args(argv)
    if args.accuracy:
        out = accuracy_table(args.accuracy)
        print(out)
        return out
    if args.gradvar:
        out = gradient_variance(args.gradvar, args.draws, args.gradvar_batch)
        print(out)
        return out
    if args.quick:
        args.rounds = args.vgg_rounds = 1
        args.warmup = 0
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        ap.error(f"--archs: unknown {unknown}; known: {', '.join(ARCHS)}")
    batches = [int(b) for b in args.batches.split(",")]
    vgg_batches = [int(b) for b in args.vgg_batches.split(",")]
    parts = []
    t0 = time.perf_counter()
    if not args.skip_train:
        for arch in archs:
            rounds = args.rounds if arch == "lenet" else args.vgg_rounds
            for b in batches if arch == "lenet" else vgg_batches:
                compile_ = args.compile and arch == "lenet"
                parts.append(train_table(arch, b, rounds, args.warmup, compile_))
                print(parts[-1] + "\n", flush=True)
    if not args.skip_predict:
        rows = [
            f"#### predict(samples={args.samples}), {torch.get_num_threads()} thread(s); "
            "median ms (min-max)",
            "",
            "| arch | batch | plain forward (1 pass) | per-sample draws, 1 sample per pass "
            "(default) | S samples batched in one pass | default / plain | batched / plain |",
            "|---|---|---|---|---|---|---|",
        ]
        for arch in [a for a in args.predict_archs.split(",") if a in archs]:
            rounds = args.rounds if arch == "lenet" else args.vgg_rounds
            rows.append(predict_table(arch, args.predict_batch, args.samples, rounds))
            print(rows[-1], flush=True)
        parts.append("\n".join(rows))
    parts.append(f"total wall time {time.perf_counter() - t0:.0f} s")
    out = "\n\n".join(parts)
    print("\n" + out)
    return out


if __name__ == "__main__":
    main()

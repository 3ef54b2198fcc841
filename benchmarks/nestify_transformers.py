"""Convert transformers classifiers (random init from configs, nothing downloaded) with ``nestify``.

Each model is built from its config with 2 layers and the base model's widths (hidden 768, 12
heads of 64, FFN 3072; ConvNeXt: its tiny widths), batch 2, eval mode, and converted twice:

- ``shipped``: the model as transformers ships it, called on a dict of keyword inputs (a
  tokenizer's batch: ``input_ids`` + ``attention_mask``; ``pixel_values``; ``input_values``) and
  returning a ``ModelOutput``, with ``output="logits"``;
- ``wrapped``: behind ``forward(x) -> model(x).logits`` (one tensor in, one tensor out).

Columns: ``heads`` / ``ffn``: ordered attention-head dimensions (whole heads of separate q/k/v
projections) and other ordered dimensions; ``full``: max |nested - original| / max |original| at
full width; ``worst``: the largest max |sliced - masked| / max |masked| over widths 0.1, 0.25, 0.5,
0.75, 0.9 and 2 random per-dimension allocations (seeded), where *sliced* is ``export_width``'s
module; ``flops25``: FLOPs(0.25) / FLOPs(1) of the sliced network. ``nestify(..., kept=0)`` so that
width 0.25 keeps a quarter of every ordered dimension. A case passes when it has an ordered head
dimension (ConvNeXt: none, it has no attention) and another ordered dimension and every difference
is <= 1e-4.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/nestify_transformers.py
[--out runs/bench/nestify_transformers.jsonl]``; ``... --table runs/bench/nestify_transformers.jsonl``.
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
MODELS = ("bert", "distilbert", "roberta", "gpt2", "vit", "deit", "convnext", "wav2vec2")
WIDTHS = (0.1, 0.25, 0.5, 0.75, 0.9)


def build(name: str):
    """``(model, keyword inputs)`` of a randomly initialised classifier."""
    import transformers as t

    g = torch.Generator().manual_seed(0)
    text = {
        "input_ids": torch.randint(0, 1000, (2, 32), generator=g),
        "attention_mask": torch.ones(2, 32, dtype=torch.long),
    }
    text["attention_mask"][0, -5:] = 0
    common = {"num_labels": 3}
    bert = dict(vocab_size=1000, num_hidden_layers=2, max_position_embeddings=64, **common)
    if name == "bert":
        return t.BertForSequenceClassification(t.BertConfig(**bert)), text
    if name == "roberta":
        cfg = t.RobertaConfig(**{**bert, "max_position_embeddings": 66, "pad_token_id": 1})
        return t.RobertaForSequenceClassification(cfg), text
    if name == "distilbert":
        cfg = t.DistilBertConfig(vocab_size=1000, n_layers=2, max_position_embeddings=64, **common)
        return t.DistilBertForSequenceClassification(cfg), text
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=1000, n_layer=2, n_positions=64, pad_token_id=0, **common)
        return t.GPT2ForSequenceClassification(cfg), text
    image = {"pixel_values": torch.randn(2, 3, 64, 64, generator=g)}
    if name == "vit":
        cfg = t.ViTConfig(image_size=64, patch_size=16, num_hidden_layers=2, **common)
        return t.ViTForImageClassification(cfg), image
    if name == "deit":
        cfg = t.DeiTConfig(image_size=64, patch_size=16, num_hidden_layers=2, **common)
        return t.DeiTForImageClassification(cfg), image
    if name == "convnext":
        cfg = t.ConvNextConfig(depths=[1, 1, 1, 1], **common)
        return t.ConvNextForImageClassification(cfg), image
    if name == "wav2vec2":
        cfg = t.Wav2Vec2Config(num_hidden_layers=2, **common)
        return t.Wav2Vec2ForSequenceClassification(cfg), {
            "input_values": torch.randn(2, 4000, generator=g)
        }
    raise ValueError(f"unknown model {name!r}; models are {MODELS}")


class Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(**{self.key: x}).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@torch.no_grad()
def run_one(name: str, case: str) -> dict:
    from bnn_nested.deploy.export import export_width
    from bnn_nested.nest import nestify, sliced_cost
    from bnn_nested.nest.analysis import call

    torch.manual_seed(0)
    model, inputs = build(name)
    model.eval()
    if case == "wrapped":
        key = next(iter(inputs))
        model, inputs = Logits(model, key), inputs[key]
        kw = {}
    else:
        kw = {"output": "logits"}
    ref = call(model, inputs)
    ref = ref if isinstance(ref, torch.Tensor) else ref.logits
    row: dict = {"model": name, "case": case}
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm = nestify(model, inputs, kept=0, **kw).eval()
    row["convert_s"] = round(time.perf_counter() - t, 1)
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if "nestify" in str(w.message)})
    row["heads"] = sum(1 for d in nm.structure if d.block > 1 or d.kind == "heads")
    row["ffn"] = len(nm.structure) - row["heads"]
    row["unordered"] = len(nm.structure.unordered)
    row["full"] = _rel(call(nm, inputs), ref)
    rng = random.Random(0)
    widths = list(WIDTHS) + [
        {d.name: rng.randint(1, d.groups) for d in nm.structure} for _ in range(2)
    ]
    worst = 0.0
    for w in widths:
        worst = max(worst, _rel(call(export_width(nm, w, inputs), inputs), _masked(nm, w, inputs)))
    row["worst"] = worst
    flops1 = sliced_cost(nm, 1.0, inputs)[0]
    row["flops25"] = round(sliced_cost(nm, 0.25, inputs)[0] / flops1, 4)
    attention = name != "convnext"  # ConvNeXt has no attention: its widths are all channels
    row["pass"] = (
        (row["heads"] > 0 or not attention) and row["ffn"] > 0 and max(row["full"], worst) <= TOL
    )
    return row


def _masked(nm, width, inputs):
    from bnn_nested.nest.convert import call_nested

    return call_nested(nm, inputs, width)


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| model | case | convert s | head dims | other dims | unordered | full | worst sliced "
        "vs masked | FLOPs 0.25 | pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['case']} | | | | | | | | no: {r['error'][:120]} |")
            continue
        lines.append(
            f"| {r['model']} | {r['case']} | {r['convert_s']} | {r['heads']} | {r['ffn']} | "
            f"{r['unordered']} | {r['full']:.1e} | {r['worst']:.1e} | {r['flops25']:.3f} | "
            f"{'yes' if r['pass'] else 'no'} |"
        )
    n = sum(1 for r in rows if r.get("pass"))
    lines += ["", f"{n} of {len(rows)} cases pass."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cases", default="shipped,wrapped")
    p.add_argument("--out", default="runs/bench/nestify_transformers.jsonl")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--table", help="print the Markdown table of a results file")
    a = p.parse_args()
    if a.table:
        print(table(Path(a.table)))
        return
    if a.one:
        print(json.dumps(run_one(*a.one)))
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        for case in a.cases.split(","):
            cmd = [sys.executable, __file__, "--one", name, case]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
                if res.returncode == 0 and lines:
                    row = json.loads(lines[-1])
                else:
                    err = (res.stderr.strip().splitlines() or ["failed"])[-1]
                    row = {"model": name, "case": case, "error": err}
            except subprocess.TimeoutExpired:
                row = {"model": name, "case": case, "error": f"timed out after {a.timeout} s"}
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

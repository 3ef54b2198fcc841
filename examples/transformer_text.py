"""A transformers text classifier made nested: heads and FFN widths ordered, trained, exported.

A BERT from a config (random init, nothing downloaded: ``pip install bnn-nested[hf]``) learns a
synthetic task (does token 5 occur in the sequence?) from a tokenizer-style batch (a dict of
``input_ids`` / ``attention_mask``); its ``ModelOutput``'s logits are named with ``output=``.
``nestify`` orders its attention heads (separate q/k/v projections, whole heads per group) and its
FFN widths; training samples widths through the variational ordering units; the script then prints
accuracy and FLOPs per width and exports the width-0.5 network (masked == sliced is re-checked on
the trained weights before the export is returned).

Usage: ``.venv/bin/python examples/transformer_text.py [--steps 150]``
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bnn_nested.deploy.export import export_width
from bnn_nested.nest import nestify, sliced_cost


def batch(n: int, gen: torch.Generator, vocab: int = 100, length: int = 16):
    ids = torch.randint(6, vocab, (n, length), generator=gen)
    ids[:, 0] = 1  # [CLS]
    y = torch.randint(0, 2, (n,), generator=gen)
    pos = torch.randint(1, length, (n,), generator=gen)
    ids[y == 1, pos[y == 1]] = 5
    mask = torch.ones(n, length, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask}, y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    a = p.parse_args(argv)
    import transformers

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=2,
    )
    example, _ = batch(2, gen)
    nm = nestify(
        transformers.BertForSequenceClassification(cfg), example, groups=4, kept=1, output="logits"
    )
    for d in nm.structure:
        what = f"heads of {d.block}" if d.block > 1 else "channels"
        print(f"ordered {d.name}: {d.size} features, {d.groups} groups ({what})")
    print(f"left whole: {len(nm.structure.unordered)} (structure.unordered gives each reason)")
    opt = torch.optim.Adam(nm.parameters(), lr=1e-3)
    n_train = 32 * a.steps
    nm.train()
    for step in range(a.steps):
        x, y = batch(32, gen)
        loss = F.cross_entropy(nm(**x), y) + nm.kl() / n_train
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}")
    nm.eval()
    test, y = batch(512, torch.Generator().manual_seed(1))
    full = sliced_cost(nm, 1.0, example)[0]
    with torch.no_grad():
        for width in (0.25, 0.5, 1.0):
            acc = (nm(**test, width=width).argmax(1) == y).float().mean().item()
            flops = sliced_cost(nm, width, example)[0] / full
            print(f"width {width}: accuracy {acc:.3f}, FLOPs {flops:.2f} of full")
        small = export_width(nm, 0.5, example)
        diff = (small(**test) - nm(**test, width=0.5)).abs().max().item()
    params = sum(q.numel() for q in small.parameters())
    print(f"exported width 0.5: {params} parameters; max |difference| {diff:.1e}; plain torch")


if __name__ == "__main__":
    main()

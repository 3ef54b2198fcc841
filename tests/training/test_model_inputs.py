"""The trainer and predict take a model's inputs as users have them (issue 26): a dict of keyword
inputs (a tokenizer's batch) or a tuple of positional inputs, not only one tensor."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from bnn_nested.config import build_config
from bnn_nested.evaluation.prediction import predict, predict_loader
from bnn_nested.nest import nestify
from bnn_nested.training.trainer import Trainer


class TokenClassifier(nn.Module):
    """Mean of token embeddings under the attention mask, then an MLP (a BERT-like call)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        h = (self.emb(input_ids) * m).sum(1) / m.sum(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _examples(n: int, seed: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Does token 5 occur in the sequence? (token 0 is padding at the end of some)"""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 20, (n, 8), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    ids[y == 1, 1] = 5
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[::3, 6:] = 0
    ids[mask == 0] = 0
    return [({"input_ids": ids[i], "attention_mask": mask[i]}, y[i]) for i in range(n)]


def _cfg():
    return build_config(
        {
            "seed": 0,
            "ordering": {"sampler": "vou"},
            "train": {"epochs": 15, "lr": 0.01},
            "regularization": {"kind": "none"},
        }
    )


def test_trainer_fits_a_dict_input_model_and_predict_takes_the_dict():
    torch.manual_seed(0)
    train = _examples(64, 0)
    example = {k: torch.stack([x[k] for x, _ in train[:4]]) for k in train[0][0]}
    nm = nestify(TokenClassifier(), example, groups=4, kept=1)
    assert [d.size for d in nm.structure] == [32]
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator())
    before = {k: v.detach().clone() for k, v in nm.state_dict().items()}
    trainer = Trainer(nm, _cfg(), quiet=True)
    history = trainer.fit(loader)  # fit -> setup, train_step, the objective: all on dicts
    assert len(history) == 15 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert history[-1]["data"] < history[0]["data"]
    assert any(not torch.equal(before[k], v) for k, v in nm.state_dict().items())
    test = DataLoader(_examples(64, 1), batch_size=32)
    assert trainer.accuracy(test) > 0.9
    x, _ = next(iter(test))
    probs = predict(nm, x, width=0.5)
    assert probs.shape == (1, 32, 2)
    with torch.no_grad():
        ref = torch.softmax(nm(**x, width=0.5), -1)
    torch.testing.assert_close(probs[0], ref)
    assert predict(nm, x, samples=3, chunk=2).shape == (3, 32, 2)
    probs, targets = predict_loader(nm, test, width=0.25)
    assert probs.shape == (1, 64, 2) and targets.shape == (64,)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(3, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(x) + self.b(z)))


def test_train_step_takes_a_tuple_of_positional_inputs():
    torch.manual_seed(0)
    x, z, y = torch.randn(16, 6), torch.randn(16, 3), torch.randint(0, 3, (16,))
    nm = nestify(TwoInputs(), (x, z), groups=4, kept=1)
    assert len(nm.structure) == 1
    trainer = Trainer(nm, _cfg(), n_train=16, quiet=True)
    first = trainer.train_step((x, z), y)["data"]
    for _ in range(20):
        last = trainer.train_step((x, z), y)["data"]
    assert last < first
    assert predict(nm, (x, z)).shape == (1, 16, 3)

"""Fast-inference wrappers: micro-batching and channels-last are exact; compile with freezing too."""

import pytest
import torch

from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.profile import profile_widths
from bnn_nested.deploy.runtime import (
    RECOMPILE_LIMIT,
    MicroBatched,
    compile_for_inference,
    inference_module,
    tune_micro_batch,
)
from bnn_nested.deploy.serialize import load_exported, save_exported
from tests.deploy.helpers import cnn, mlp

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")


@pytest.mark.parametrize("micro_batch", [1, 7, 16, 32, 37, None])
def test_micro_batched_equals_whole_batch(micro_batch):
    model, x = cnn()
    x = torch.randn(37, *x.shape[1:])  # 37 = not a multiple of the micro-batches below it
    plain = export_width(model, 0.5, x[:2])
    seen = []
    plain.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        out = MicroBatched(plain, micro_batch)(x)
        torch.testing.assert_close(out, model(x, width=0.5), atol=1e-5, rtol=1e-5)
    step = micro_batch or 37
    assert seen == [min(step, 37 - i) for i in range(0, 37, step)]


@pytest.mark.parametrize("rows", [0, 1])
def test_micro_batched_tiny_batches(rows):
    model, x = cnn()
    with torch.no_grad():
        out = MicroBatched(export_width(model, 0.5, x[:2]), 4)(x[:rows])
    assert out.shape == (rows, 3)


def test_channels_last_inputs_reach_the_module():
    model, x = cnn(in_channels=3)  # with 1 channel every layout already counts as channels-last
    assert not x.is_contiguous(memory_format=torch.channels_last)
    plain = export_width(model, 0.75, x[:2], channels_last=True)
    layouts = []
    plain.register_forward_pre_hook(
        lambda m, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        out = MicroBatched(plain, 4, channels_last=True)(x)
        assert layouts and all(layouts)
        torch.testing.assert_close(out, model(x, width=0.75), atol=1e-5, rtol=1e-5)
        layouts.clear()
        MicroBatched(plain, 4)(x)  # without the flag the layout is left alone
    assert not any(layouts)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "32"])
def test_micro_batch_is_validated(bad):
    model, x = cnn()
    with pytest.raises(ValueError, match="micro_batch must be an integer >= 1 or None"):
        MicroBatched(export_width(model, 1.0, x[:2]), bad)
    with pytest.raises(ValueError, match="micro_batch must be an integer >= 1, None or 'auto'"):
        inference_module(model, 1.0, x[:2], micro_batch=bad)


def test_auto_is_only_for_inference_module():
    model, x = cnn()
    with pytest.raises(ValueError, match="micro_batch must be an integer >= 1 or None, got 'auto'"):
        MicroBatched(export_width(model, 1.0, x[:2]), "auto")
    with pytest.raises(ValueError, match="an integer >= 1, None or 'auto', got 'fast'"):
        inference_module(model, 1.0, x[:2], micro_batch="fast")


class _FakeClock:
    """A clock that only moves when a :class:`_Costly` module runs (no wall-clock time involved)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Costly(torch.nn.Module):
    """Costs ``per_call + per_row2 * rows**2`` seconds on ``clock``: a known best slice."""

    def __init__(self, clock: _FakeClock, per_call: float, per_row2: float) -> None:
        super().__init__()
        self.clock, self.per_call, self.per_row2 = clock, per_call, per_row2

    def forward(self, x):
        self.clock.now += self.per_call + self.per_row2 * x.shape[0] ** 2
        return x


def test_tune_micro_batch_picks_the_fastest_size():
    x = torch.zeros(64, 2)
    clock = _FakeClock()

    def tune(per_call, per_row2, sizes):
        return tune_micro_batch(_Costly(clock, per_call, per_row2), x, sizes, 5, clock=clock)

    # fixed cost per call: the whole batch (1 call, 5 ms) beats 2-4 calls (10-20 ms)
    assert tune(5e-3, 0.0, (None, 16, 32)) is None
    # cost quadratic in the slice: 16 rows (4 x 1.3 ms) beat 32 (2 x 5 ms) and 64 (20 ms)
    assert tune(0.0, 5e-6, (None, 16, 32)) == 16
    # a tie (no cost at all) goes to the larger slice; sizes >= the batch are the whole batch
    assert tune(0.0, 0.0, (16, 32)) == 32
    assert tune(0.0, 0.0, (64, 128)) is None


def test_measure_latency_reports_median_and_iqr_of_the_clock():
    from bnn_nested.deploy.timing import measure_latency

    clock = _FakeClock()
    costs = iter([1e-3, 2e-3, 3e-3, 4e-3, 10e-3])  # five timed calls, ms: 1 2 3 4 10

    def fn(x):
        clock.now += next(costs)

    t = measure_latency(fn, torch.zeros(1), warmup=0, repeats=5, clock=clock)
    assert t.median_ms == pytest.approx(3.0)
    assert (t.q25_ms, t.q75_ms, t.iqr_ms) == pytest.approx((2.0, 4.0, 2.0))  # numpy's linear rule


def test_tune_micro_batch_validates():
    x = torch.zeros(8, 2)
    with pytest.raises(ValueError, match="at least one"):
        tune_micro_batch(torch.nn.Identity(), x, ())
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        tune_micro_batch(torch.nn.Identity(), x, repeats=0)
    for bad in ("16", True, 2.5, "auto"):
        with pytest.raises(ValueError, match="micro_batch must be an integer >= 1 or None"):
            tune_micro_batch(torch.nn.Identity(), x, (None, bad))


def test_inference_module_auto_micro_batch_is_exact():
    model, x = cnn(in_channels=3)
    x = torch.cat([x] * 5)  # 80 rows
    with torch.no_grad():
        fast = inference_module(model, 0.5, x, micro_batch="auto")
        assert fast.micro_batch in (None, 16, 32, 64)
        torch.testing.assert_close(fast(x), model(x, width=0.5), atol=1e-5, rtol=1e-5)


class _Bad(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "tuple":
            return x, x
        if self.kind == "samples_first":  # (S, B, C), like Monte-Carlo predictions
            return x.unsqueeze(0).expand(4, *x.shape)
        return x.sum(0)  # reduces over the batch


@pytest.mark.parametrize("kind", ["tuple", "samples_first", "reduce"])
def test_micro_batched_rejects_modules_that_are_not_row_wise(kind):
    with pytest.raises(ValueError, match="must map a .* batch to one"):
        MicroBatched(_Bad(kind), 4)(torch.randn(10, 3))


def test_micro_batched_rejects_0d_input():
    with pytest.raises(ValueError, match="batch dimension"):
        MicroBatched(torch.nn.Identity(), 4)(torch.tensor(1.0))


@pytest.mark.parametrize("make", [cnn, mlp, lambda: cnn(in_channels=3)])
@pytest.mark.parametrize("width", [0.25, 0.6, 1.0])
def test_inference_module_equals_nested_model(make, width):
    model, x = make()
    x = torch.cat([x, x + 0.1, x - 0.2])  # 48 rows: two micro-batches of 32 and 16
    with torch.no_grad():
        fast = inference_module(model, width, x[:2], micro_batch=32)
        torch.testing.assert_close(fast(x), model(x, width=width), atol=1e-5, rtol=1e-5)
    assert isinstance(fast, MicroBatched) and fast.channels_last == (x.dim() == 4)
    assert not model.training  # trained_like leaves it in eval; export restores the mode


def test_inference_module_whole_batch_without_layout_is_the_export():
    model, x = mlp()
    fast = inference_module(model, 0.5, x[:2], micro_batch=None)
    assert not isinstance(fast, MicroBatched)


@pytest.mark.slow
def test_saving_a_micro_batched_module_saves_the_module_inside(tmp_path):
    model, x = cnn(in_channels=3)
    fast = inference_module(model, 0.5, x[:2], micro_batch=4)
    path = save_exported(fast, x[:2], tmp_path / "w.pt2")
    with torch.no_grad():
        torch.testing.assert_close(
            MicroBatched(load_exported(path), 4)(x), model(x, width=0.5), atol=1e-5, rtol=1e-5
        )


def test_profile_exported_mode_times_the_inference_module(monkeypatch):
    import bnn_nested.deploy.profile as profile

    model, x = cnn()
    calls = []

    def spy(m, width, example, micro_batch):
        calls.append((width, micro_batch, example.shape[0], torch.get_num_threads()))
        return inference_module(m, width, example, micro_batch=micro_batch)

    monkeypatch.setattr(profile, "inference_module", spy)
    costs = profile_widths(
        model, x[:1], [0.25, 1.0], batch_size=40, threads=1, repeats=2, mode="exported"
    )
    # tuned ("auto") on the timed batch of 40, under the timed thread count
    assert calls == [(0.25, "auto", 40, 1), (1.0, "auto", 40, 1)]
    assert all(c.mode == "exported" and c.latency_ms > 0 for c in costs)
    assert all(c.micro_batch in (None, 16, 32) for c in costs)  # the size that was timed
    with pytest.raises(ValueError, match="mode must be one of"):
        profile_widths(model, x[:1], [1.0], mode="fast")  # type: ignore[arg-type]


@pytest.mark.slow
def test_compile_with_freezing_matches_eager_for_each_model():
    # two models of one architecture: each compiled module must use its own weights
    (m1, x), (m2, _) = cnn(in_channels=3), cnn(in_channels=3)
    fast = [compile_for_inference(export_width(m, 0.5, x[:2])) for m in (m1, m2)]
    with torch.no_grad():
        for m, f in zip((m1, m2), fast):
            torch.testing.assert_close(f(x), m(x, width=0.5), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(  # micro-batched: a second, static batch size
                MicroBatched(f, 6)(x), m(x, width=0.5), atol=1e-4, rtol=1e-4
            )


@pytest.mark.slow
def test_compile_for_inference_raises_the_recompile_limit(monkeypatch):
    import torch._dynamo.config as dynamo_config

    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)
    compile_for_inference(torch.nn.Linear(2, 2))  # lazy: nothing is compiled before the first call
    assert dynamo_config.recompile_limit == RECOMPILE_LIMIT
    with pytest.raises(ValueError, match="options=.*not mode="):
        compile_for_inference(torch.nn.Linear(2, 2), mode="max-autotune")

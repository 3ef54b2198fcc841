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
)
from tests.deploy.helpers import cnn, mlp

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")


@pytest.mark.parametrize("micro_batch", [1, 7, 16, 32, None])
def test_micro_batched_equals_whole_batch(micro_batch):
    model, x = cnn()
    x = torch.randn(37, *x.shape[1:])  # 37 = not a multiple of any micro-batch above
    plain = export_width(model, 0.5, x[:2])
    seen = []
    plain.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        out = MicroBatched(plain, micro_batch)(x)
        torch.testing.assert_close(out, model(x, width=0.5), atol=1e-5, rtol=1e-5)
    step = micro_batch or 37
    assert seen == [min(step, 37 - i) for i in range(0, 37, step)]


def test_channels_last_inputs_reach_the_module():
    model, x = cnn()
    plain = export_width(model, 0.75, x[:2], channels_last=True)
    layouts = []
    plain.register_forward_pre_hook(
        lambda m, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        out = MicroBatched(plain, 4, channels_last=True)(x)
    assert layouts and all(layouts)
    torch.testing.assert_close(out, model(x, width=0.75), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "32"])
def test_micro_batch_is_validated(bad):
    model, x = cnn()
    with pytest.raises(ValueError, match="micro_batch must be an integer >= 1 or None"):
        MicroBatched(export_width(model, 1.0, x[:2]), bad)


@pytest.mark.parametrize("make", [cnn, mlp])
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


def test_profile_exported_mode_times_the_inference_module(tmp_path):
    model, x = cnn()
    costs = profile_widths(
        model, x[:1], [0.25, 1.0], batch_size=40, threads=1, repeats=2, mode="exported"
    )
    assert all(c.mode == "exported" and c.latency_ms > 0 for c in costs)
    with pytest.raises(ValueError, match="mode must be one of"):
        profile_widths(model, x[:1], [1.0], mode="fast")  # type: ignore[arg-type]


@pytest.mark.slow
def test_compile_with_freezing_matches_eager():
    model, x = cnn()
    plain = export_width(model, 0.5, x[:2])
    fast = compile_for_inference(plain)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x, width=0.5), atol=1e-4, rtol=1e-4)


def test_compile_for_inference_raises_the_recompile_limit(monkeypatch):
    import torch._dynamo.config as dynamo_config

    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)
    compile_for_inference(torch.nn.Linear(2, 2))  # lazy: nothing is compiled before the first call
    assert dynamo_config.recompile_limit == RECOMPILE_LIMIT

"""Bad input raises ValueError naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

import wdl_kernels
from wdl_kernels import MixedLinearCrossEntropy

N, V, H = 6, 11, 8


def inputs(**over):
    args = dict(hidden=torch.randn(N, H), weight=torch.randn(V, H), labels=torch.randint(0, V, (N,)))
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,kwargs,message",
    [
        (dict(hidden=torch.randn(2, N, H)), {}, "hidden must be 2-D"),
        (dict(weight=torch.randn(V, H + 1)), {}, "weight must be [V, 8]"),
        (dict(labels=torch.randint(0, V, (N + 1,))), {}, "labels must be 1-D with N=6"),
        (dict(labels=torch.randn(N)), {}, "labels must be int64"),
        (dict(labels=torch.tensor([0, 1, 2, V, 0, 0])), {}, "labels[3] = 11 is outside [0, V=11)"),
        (dict(labels=torch.tensor([0, -1, 2, 3, 0, 0])), {}, "labels[1] = -1"),
        (dict(hidden=torch.randn(0, H), labels=torch.zeros(0, dtype=torch.long)), {}, "N == 0"),
        (dict(hidden=torch.randn(N, H).double()), {}, "float32, float16 or bfloat16"),
        (dict(hidden=torch.randn(N, H).half()), {}, "different dtypes"),
        (dict(weak_hidden=torch.randn(N, 4)), {}, "pass both weak_hidden and weak_weight"),
        (dict(weak_hidden=torch.randn(N + 1, 4), weak_weight=torch.randn(V, 4)), {}, "weak_hidden has 7 rows"),
        (dict(weak_hidden=torch.randn(N, 4), weak_weight=torch.randn(V + 1, 4)), {}, "share the vocabulary"),
        (dict(weak_hidden=torch.randn(N, 4), weak_weight=torch.randn(V, 5)), {}, "weak_weight must be [V, 4]"),
        ({}, dict(lam=1.5), "lam must be in [0, 1]"),
        ({}, dict(lam=float("nan")), "lam must be finite"),
        ({}, dict(lam="x"), "lam must be a float"),
        ({}, dict(reduction="avg"), "reduction must be one of"),
        ({}, dict(impl="cuda"), "impl must be one of"),
        (dict(hidden=[[1.0]]), {}, "hidden must be a torch.Tensor"),
        ({}, dict(mode="turbo"), "mode must be one of"),
        ({}, dict(temperature=0.0), "temperature must be > 0"),
        ({}, dict(temperature=float("inf")), "temperature must be finite"),
        ({}, dict(softcap=-1.0), "softcap must be > 0"),
        ({}, dict(softcap=0.0), "softcap must be > 0"),
        ({}, dict(z_loss=-1e-4), "z_loss must be >= 0"),
        ({}, dict(label_smoothing=1.5), "label_smoothing must be in [0, 1]"),
        ({}, dict(bias=torch.randn(V + 1)), "bias must be 1-D with V=11"),
        ({}, dict(bias=torch.randn(V).double()), "bias must be float32"),
        ({}, dict(weak_bias=torch.randn(V)), "weak_bias was given without weak_hidden"),
        ({}, dict(num_items=0), "num_items must be a positive number"),
        ({}, dict(num_items=torch.ones(2)), "num_items must be a number or a one-element tensor"),
        ({}, dict(num_items=3, reduction="none"), "not 'none'"),
        ({}, dict(ignore_index=1.5), "ignore_index must be an int"),
        ({}, dict(token_chunk=0, mode="fast"), "token_chunk must be a positive int"),
        ({}, dict(token_chunk=2.5, mode="fast"), "token_chunk must be a positive int"),
        ({}, dict(token_chunk=True, mode="fast"), "token_chunk must be a positive int"),
    ],
)
def test_bad_input_raises_value_error(over, kwargs, message):
    with pytest.raises(ValueError) as err:
        wdl_kernels.mixed_linear_cross_entropy(**inputs(**over), **kwargs)
    assert message in str(err.value)


def test_ignore_index_is_not_out_of_range():
    labels = torch.tensor([0, -100, 2, -100, 0, 0])
    out = wdl_kernels.mixed_linear_cross_entropy(**inputs(labels=labels))
    assert torch.isfinite(out.loss)


def test_custom_ignore_index():
    labels = torch.tensor([0, 7, 2, 7, 0, 0])
    a = wdl_kernels.mixed_linear_cross_entropy(**inputs(labels=labels), ignore_index=7, reduction="none").loss
    assert a[1] == 0 and a[3] == 0 and a[0] > 0


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        wdl_kernels.mixed_linear_cross_entropy(**inputs(), impl="triton")


def test_unaligned_rows_for_tma_are_a_clear_error():
    with pytest.raises(ValueError, match="16-byte aligned rows"):
        wdl_kernels.mixed_linear_cross_entropy(hidden=torch.randn(N, 5), weight=torch.randn(V, 5),
                                               labels=torch.randint(0, V, (N,)), impl="triton")


def test_autocast_mixed_dtypes_are_cast_like_linear():
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wdl_kernels.mixed_linear_cross_entropy(hidden, weight, torch.randint(0, V, (N,)))
    out.loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs,message", [(dict(lam=-0.1), "lam"), (dict(reduction="x"), "reduction"),
                                            (dict(impl="x"), "impl"), (dict(token_chunk=0), "token_chunk")])
def test_module_validates_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedLinearCrossEntropy(**kwargs)


def test_module_equals_functional():
    args = inputs(weak_hidden=torch.randn(N, 4), weak_weight=torch.randn(V, 4))
    mod = MixedLinearCrossEntropy(0.3, reduction="sum", return_stats=True)
    a = mod(args["hidden"], args["weight"], args["labels"], args["weak_hidden"], args["weak_weight"])
    b = wdl_kernels.mixed_linear_cross_entropy(**args, lam=0.3, reduction="sum", return_stats=True)
    assert torch.equal(a.loss, b.loss) and all(torch.equal(x, y) for x, y in zip(a.stats, b.stats))
    assert "lam=0.3" in repr(mod)


def test_validate_false_gives_nan_rows_instead_of_reading_out_of_range():
    labels = torch.tensor([0, 1, 2, V + 5, -3, 0])
    out = wdl_kernels.mixed_linear_cross_entropy(**inputs(labels=labels), reduction="none", validate=False,
                                                 return_stats=True)
    assert torch.isnan(out.loss[3]) and torch.isnan(out.loss[4]) and torch.isfinite(out.loss[[0, 1, 2, 5]]).all()
    assert out.stats.accuracy[3] == 0 and out.stats.accuracy[4] == 0


def test_num_items_tensor_equals_number():
    args = inputs()
    a = wdl_kernels.mixed_linear_cross_entropy(**args, num_items=torch.tensor(7)).loss
    b = wdl_kernels.mixed_linear_cross_entropy(**args, num_items=7).loss
    c = wdl_kernels.mixed_linear_cross_entropy(**args, reduction="sum").loss / 7
    assert torch.equal(a, b) and torch.allclose(a, c)


def test_register_backend_rejects_builtin_names_and_non_backends():
    from wdl_kernels.torch_backend import TorchBackend

    with pytest.raises(ValueError, match="built-in impl name"):
        wdl_kernels.register_backend("torch", TorchBackend())
    with pytest.raises(ValueError, match="must be a TorchBackend or TritonBackend"):
        wdl_kernels.register_backend("mine", object())

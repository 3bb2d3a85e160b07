"""Bad inputs get a TypeError or ValueError that says what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import powersave
from powersave import InputError, Network
from powersave.graph import Conv, Dense, Flatten, Graph, Input


def image_net() -> Network:
    rng = np.random.default_rng(0)
    return Network(
        Graph(
            (
                Input("x", (1, 4, 4), scale=1.0),
                Conv("c", rng.normal(size=(2, 1, 3, 3)), np.zeros(2), scale=1.0),
                Flatten("f"),
                Dense("out", rng.normal(size=(3, 8)), np.zeros(3)),
            )
        )
    )


def test_numpy_and_torch_inputs_give_the_same_answer() -> None:
    net = image_net()
    x = np.random.default_rng(1).random((5, 1, 4, 4)).astype(np.float32)
    a = net.run(x)
    b = net.run(torch.from_numpy(x))
    c = net.run(x.astype(np.float64))
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.logits, c.logits)
    assert a.predictions.dtype == np.int64 and a.predictions.shape == (5,)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (np.zeros((2, 1, 4, 4), dtype=bool), TypeError, "real numbers .* got dtype bool"),
        (np.array([["a"]]), TypeError, "real numbers"),
        (np.zeros((2, 1, 4, 4), dtype=np.complex64), TypeError, "complex64"),
        (np.array([[1, 2], [3]], dtype=object), TypeError, "object array"),
        ("not an array", TypeError, "real numbers"),
        (np.zeros((0, 1, 4, 4)), InputError, "empty batch"),
        (np.zeros((1, 4, 4)), InputError, r"need a batch axis.*x\[None\]"),
        (np.zeros((2, 16)), InputError, r"expected|must have shape \(N, 1, 4, 4\)"),
        (np.zeros((2, 1, 5, 5)), InputError, "25 features per sample instead of 16"),
        (np.zeros((2, 4, 4, 1)), InputError, "same number of features, different layout"),
        (np.full((2, 1, 4, 4), np.nan), InputError, "NaN or infinite values .32 of them"),
        (np.full((2, 1, 4, 4), -np.inf), InputError, "NaN or infinite"),
        (-np.ones((2, 1, 4, 4)), InputError, "negative values .* non-negative inputs"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(
    x: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        image_net().run(x)


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        image_net().run(np.zeros((0, 1, 4, 4)))


def test_unknown_mode_names_the_modes_there_are() -> None:
    with pytest.raises(ValueError, match=r"unknown mode 'turbo'.*\['full'\].*Calibrate"):
        image_net().run(np.zeros((1, 1, 4, 4)), mode="turbo")


def test_chunks_add_up_to_the_whole_batch() -> None:
    net = image_net()
    x = np.random.default_rng(2).random((7, 1, 4, 4)).astype(np.float32)
    whole = net.run(x, record_spikes=True)
    chunked = net.run(x, chunk_size=3, record_spikes=True)
    np.testing.assert_array_equal(whole.logits, chunked.logits)
    assert whole.stats == chunked.stats
    assert whole.times is not None and chunked.times is not None
    for a, b in zip(whole.times, chunked.times, strict=True):
        np.testing.assert_array_equal(a, b)


def test_engines_agree_through_network_run() -> None:
    net = image_net()
    x = np.random.default_rng(3).random((9, 1, 4, 4)).astype(np.float32)
    a = net.run(x, engine="numpy")
    b = net.run(x, engine="compiled")
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    assert a.stats.synaptic_ops == b.stats.synaptic_ops
    assert b.stats.engine == "event-compiled"
    with pytest.raises(ValueError, match="engine must be"):
        net.run(x, engine="gpu")


def test_half_precision_tensors_and_float64_overflow() -> None:
    net = image_net()
    x = np.random.default_rng(4).random((3, 1, 4, 4)).astype(np.float32)
    half = net.run(torch.from_numpy(x).to(torch.bfloat16))
    assert half.logits.shape == (3, 3)
    with pytest.raises(InputError, match="beyond float32's range"):
        net.run(np.full((1, 1, 4, 4), 1e300))


def test_inputs_far_outside_the_calibrated_range_warn() -> None:
    net = image_net()
    x = np.random.default_rng(5).random((4, 1, 4, 4)).astype(np.float32)
    with pytest.warns(powersave.InputRangeWarning, match="exceed the input scale A=1"):
        run = net.run(x * 255)
    assert run.stats.saturated[0] > 0

"""Sessions: the fast path gives Network.run's answers and counts, and refuses what it refuses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nets import tiny_mlp

from powersave import InputError, InputRangeWarning, Plan
from powersave.network import Network


def network(signed: bool = False, seed: int = 0) -> tuple[Network, np.ndarray]:
    g, x = tiny_mlp(seed, signed=signed, n=50)
    plans = {
        "cut": Plan(cutoffs=(0.8, 0.6), name="cut"),
        "early": Plan(cutoffs=(0.9, 0.7), early_decision=True, name="early"),
    }
    return Network(g, plans=plans), x


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("mode", ["full", "cut", "early"])
def test_a_session_gives_run_s_answers_and_counts(mode: str, signed: bool) -> None:
    net, x = network(signed)
    session = net.session(mode)
    assert session.stats is None
    # one at a time, a few at a time, and a batch big enough for the planner's path
    parts = [x[i : i + 1] for i in range(10)] + [x[10:15], x[15:50]]
    predictions = np.concatenate([session.predict(p) for p in parts])
    run = net.run(x, mode, baselines=False, engine="numpy")
    np.testing.assert_array_equal(predictions, run.predictions)
    np.testing.assert_allclose(session.logits(x[:3]), run.logits[:3], rtol=1e-5, atol=1e-5)
    stats = session.stats
    assert stats is not None
    assert stats.n_samples == 53  # the logits call counts too
    session.reset()
    assert session.stats is None
    for p in parts:
        session.predict(p)
    stats = session.stats
    assert stats is not None and stats.n_samples == 50
    assert stats.layer_synaptic_ops == run.stats.layer_synaptic_ops
    assert stats.spikes == run.stats.spikes
    assert stats.saturated == run.stats.saturated
    assert stats.readout_ops_saved == run.stats.readout_ops_saved
    assert stats.layer_dense_macs == run.stats.layer_dense_macs
    assert len(stats.kernels) == len(stats.layers)  # the planner's choices, from x[15:50]


def test_a_session_s_answers_are_the_caller_s_to_keep() -> None:
    """Small batches reuse one logits buffer inside the session: what a call returned stays
    as it was after the next calls."""
    net, x = network()
    session = net.session("early")
    first, first_class = session.logits(x[:1]), session.predict(x[:1])
    kept, kept_class = first.copy(), first_class.copy()
    for i in range(1, 6):
        session.logits(x[i : i + 1])
        session.predict(x[i : i + 3])
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(first_class, kept_class)
    assert not np.shares_memory(session.logits(x[:1]), session.logits(x[:1]))


def test_a_session_takes_any_array_like_and_torch_free_inputs() -> None:
    net, x = network()
    session = net.session("cut")
    expected = session.predict(x[:4])
    np.testing.assert_array_equal(session.predict(x[:4].astype(np.float64)), expected)
    np.testing.assert_array_equal(session.predict(x[:4].tolist()), expected)
    np.testing.assert_array_equal(session.predict(np.asfortranarray(x[:4])), expected)


@pytest.mark.parametrize("n", [1, 3, 40])
def test_a_session_refuses_bad_inputs_and_counts_nothing_for_them(n: int) -> None:
    net, x = network()
    session = net.session("early")
    session.predict(x[:2])
    bad = x[:n].copy()
    bad[n - 1, 0, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        session.predict(bad)
    bad[n - 1, 0, 2, 3] = -0.5
    with pytest.raises(InputError, match="negative"):
        session.predict(bad)
    with pytest.raises(InputError, match="batch axis"):
        session.predict(x[0])
    with pytest.raises(InputError, match="shape"):
        session.predict(x[:2, :, :5])
    stats = session.stats
    assert stats is not None and stats.n_samples == 2


def test_a_session_warns_of_saturated_inputs_like_run() -> None:
    net, x = network()
    session = net.session()
    for n in (2, 40):  # the kernel's path and the planner's
        with pytest.warns(InputRangeWarning, match="clipped"):
            session.predict(x[:n] * 255)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            session.predict(x[:n])


def test_a_session_without_the_compiled_engine_runs_numpy() -> None:
    net, x = network()
    session = net.session("early", engine="numpy")
    assert session.engine == "numpy"
    np.testing.assert_array_equal(
        session.predict(x[:7]), net.run(x[:7], "early", engine="numpy").predictions
    )
    assert session.stats is not None and session.stats.n_samples == 7
    with pytest.raises(ValueError, match="engine must be"):
        net.session(engine="gpu")
    with pytest.raises(ValueError, match="unknown mode"):
        net.session("turbo")

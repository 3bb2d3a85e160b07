"""Fuzzing the input checks: whatever goes in, an answer or a clear error comes out."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from powersave import InputError, InputRangeWarning, Network
from powersave.graph import Dense, Graph, Input

NET = Network(
    Graph(
        (
            Input("x", (6,), scale=1.0),
            Dense("h", np.arange(24, dtype=np.float32).reshape(4, 6) / 24 - 0.5, np.zeros(4), 1.0),
            Dense("out", np.eye(3, 4, dtype=np.float32), np.zeros(3)),
        )
    )
)

dtypes = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    hnp.arrays(
        dtypes,
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
        elements=None,
    )
)
def test_any_array_gets_an_answer_or_a_clear_error(x: np.ndarray) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run = NET.run(x)
        except (TypeError, InputError) as error:
            assert str(error)  # says something
            return
    # Accepted: it must have been a well-formed, finite, non-negative batch of 6 features.
    assert x.ndim == 2 and x.shape[1] == 6 and x.shape[0] > 0
    assert np.isfinite(run.logits).all()
    assert run.predictions.shape == (x.shape[0],)
    # The only warning an accepted batch may bring: values above the input scale (1), clipped.
    for w in caught:
        assert issubclass(w.category, InputRangeWarning), w
        assert (np.asarray(x, np.float64) > 1.0).any()


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists, max_leaves=8))
def test_python_objects_get_a_clear_error(obj: object) -> None:
    try:
        NET.run(obj)
    except (TypeError, InputError):
        return
    # Accepted only if it really is a batch of rows of 6 finite, non-negative numbers.
    array = np.asarray(obj, dtype=np.float64)
    assert array.ndim == 2 and array.shape[1] == 6 and np.isfinite(array).all()

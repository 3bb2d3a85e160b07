"""Small networks the tests share (imported as ``from nets import ...``: pytest puts this
folder on the path)."""

from __future__ import annotations

import numpy as np

from powersave.graph import Dense, Flatten, Graph, Input


def tiny_mlp(seed: int = 0, *, signed: bool = False, n: int = 40) -> tuple[Graph, np.ndarray]:
    """A 6×6 → 20 → 4 MLP with random weights (scale 1) and ``n`` random samples in
    ``[0, 1)`` (``[-1, 1)`` when ``signed``; the input is then ON/OFF split)."""
    rng = np.random.default_rng(seed)
    g = Graph(
        (
            Input("x", (1, 6, 6), 1.0, signed=signed),
            Flatten("f"),
            Dense(
                "h",
                rng.normal(size=(20, 72 if signed else 36)) / 6,
                rng.normal(size=20) * 0.1,
                scale=1.0,
            ),
            Dense("out", rng.normal(size=(4, 20)), np.zeros(4)),
        )
    )
    x = rng.random((n, 1, 6, 6)).astype(np.float32)
    return g, x * 2 - 1 if signed else x

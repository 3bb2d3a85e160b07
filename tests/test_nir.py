"""NIR export and import: round trips that keep every spike, the mapping, and bad files.

Round trips are exact: the re-imported network's spike times and logits are bit-identical to the
original's (weights are written as they are; scales travel as JSON floats, which round-trip
exactly; bias currents ``b/A`` are float64 and give the float32 bias back exactly).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from powersave import Network, Plan, save  # noqa: E402
from powersave.coding import encode, split_on_off  # noqa: E402
from powersave.engine import dense, ops  # noqa: E402
from powersave.errors import ConversionError, NetworkFileError  # noqa: E402
from powersave.export import export_nir, from_nir, import_nir, to_nir  # noqa: E402
from powersave.export import nir as nir_export  # noqa: E402
from powersave.graph import AvgPool, Conv, Dense, Flatten, Graph, Input, MaxPool  # noqa: E402

# -- fixtures --------------------------------------------------------------------------------


def calibrated(graph: Graph, x: np.ndarray) -> Graph:
    """Scales set to the largest activation of each population on ``x`` (full power exact)."""
    activations = dense.forward(graph, x).activations
    return graph.with_scales(
        {
            p.source: float(a.max()) if a.max() > 0 else 1.0
            for p, a in zip(graph.populations, activations, strict=True)
        }
    )


def mlp(seed: int = 0) -> tuple[Network, np.ndarray]:
    """Signed flat input (ON/OFF split), two hidden layers."""
    rng = np.random.default_rng(seed)
    graph = Graph(
        (
            Input("x", (6,), scale=1.0, signed=True),
            Dense("fc1", rng.normal(size=(16, 12)), rng.normal(size=16) * 0.1, scale=1.0),
            Dense("fc2", rng.normal(size=(10, 16)), rng.normal(size=10) * 0.1, scale=1.0),
            Dense("out", rng.normal(size=(4, 10)), rng.normal(size=4)),
        )
    )
    x = rng.normal(size=(32, 6)).astype(np.float32)
    return Network(calibrated(graph, x), {}, {"source": "test", "samples": np.int64(32)}), x


def cnn(seed: int = 1) -> tuple[Network, np.ndarray]:
    """Signed image: padded strided conv, max pool, avg pool, flatten, dense."""
    rng = np.random.default_rng(seed)
    graph = Graph(
        (
            Input("image", (1, 9, 9), scale=1.0, signed=True),
            Conv("conv1", rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4) * 0.1, 1, 1, 1.0),
            MaxPool("pool1", kernel=2, padding=1),
            Conv("conv2", rng.normal(size=(3, 4, 2, 2)), rng.normal(size=3) * 0.1, 1, 0, 1.0),
            AvgPool("pool2", kernel=(2, 2), stride=1, scale=1.0),
            Flatten("flat"),
            Dense("fc", rng.normal(size=(8, 27)), rng.normal(size=8) * 0.1, scale=1.0),
            Dense("out", rng.normal(size=(5, 8)), rng.normal(size=5)),
        )
    )
    x = rng.normal(size=(24, 1, 9, 9)).astype(np.float32)
    return Network(calibrated(graph, x), {}, {}), x


def conv_readout(seed: int = 2) -> tuple[Network, np.ndarray]:
    """Unsigned image, a conv readout followed by Flatten."""
    rng = np.random.default_rng(seed)
    graph = Graph(
        (
            Input("pixels", (2, 5, 5), scale=1.0),
            AvgPool("avg", kernel=2, padding=1, scale=1.0),
            Conv("head", rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 2, 0),
            Flatten("flat"),
        )
    )
    x = rng.uniform(size=(16, 2, 5, 5)).astype(np.float32)
    return Network(calibrated(graph, x), {}, {}), x


NETWORKS = [mlp, cnn, conv_readout]


def with_plan(network: Network) -> Network:
    n = network.graph.n_windows
    cutoffs = tuple(np.linspace(0.95, 0.6, n))
    return network.with_plans(
        {
            "eco": Plan(cutoffs, early_decision=isinstance(network.graph.readout, Dense), name="e"),
            "cut": Plan((1.0,) * (n - 1) + (0.5,), name="cut"),
        }
    )


def assert_same_network(a: Network, b: Network) -> None:
    assert a.graph.shapes == b.graph.shapes
    for x, y in zip(a.graph.nodes, b.graph.nodes, strict=True):
        assert type(x) is type(y)
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype and u.tobytes() == v.tobytes()  # bit-identical
            else:
                assert u == v and type(u) is type(v)
    assert dict(a.plans) == dict(b.plans)
    assert {k: p.name for k, p in a.plans.items()} == {k: p.name for k, p in b.plans.items()}


def assert_same_runs(a: Network, b: Network, x: np.ndarray, mode: str) -> None:
    ra = a.run(x, mode, record_spikes=True)
    rb = b.run(x, mode, record_spikes=True)
    assert ra.times is not None and rb.times is not None
    # Spikes happened: in every population at full power, somewhere in a power-saving mode.
    if mode == "full":
        assert all(np.isfinite(t).any() for t in ra.times)
    assert any(np.isfinite(t).any() for t in ra.times)
    assert len(ra.times) == len(rb.times)
    for ta, tb in zip(ra.times, rb.times, strict=True):
        assert ta.dtype == tb.dtype and ta.tobytes() == tb.tobytes()
    assert ra.logits.tobytes() == rb.logits.tobytes()
    assert np.array_equal(ra.predictions, rb.predictions)
    assert ra.stats.synaptic_ops == rb.stats.synaptic_ops


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", NETWORKS)
def test_file_round_trip_keeps_every_spike(tmp_path: Path, make) -> None:
    network, x = make()
    network = with_plan(network)
    path = tmp_path / "net.nir"
    export_nir(network, path)
    graph = nir.read(path)  # an ordinary NIR file
    assert isinstance(graph, nir.NIRGraph)
    back = import_nir(path)
    assert_same_network(network, back)
    # Metadata travels as JSON: numpy scalars come back as Python numbers.
    assert back.metadata == {
        k: v.item() if isinstance(v, np.generic) else v for k, v in network.metadata.items()
    }
    for mode in ("full", "eco", "cut"):
        assert_same_runs(network, back, x, mode)


def test_in_memory_round_trip_and_str_path(tmp_path: Path) -> None:
    network, x = mlp()
    assert_same_network(network, from_nir(to_nir(network)))
    export_nir(network, str(tmp_path / "net.nir"))
    assert_same_runs(network, import_nir(str(tmp_path / "net.nir")), x, "full")


def test_converted_torch_cnn_with_calibrated_modes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import powersave

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 1, 8, 8)).astype(np.float32)  # signed: ON/OFF split
    network = powersave.convert(model, x[:60])
    assert network.graph.input.signed
    labels = network.run(x[60:90], baselines=False).predictions
    network = network.calibrate(x[60:90], labels, progress=False)
    assert set(network.plans) >= {"balanced", "saver", "ultra"}
    export_nir(network, tmp_path / "cnn.nir")
    back = import_nir(tmp_path / "cnn.nir")
    assert_same_network(network, back)
    assert back.metadata == network.metadata
    for mode in network.modes:
        assert_same_runs(network, back, x[90:], mode)


def test_export_replaces_a_file_atomically(tmp_path: Path, monkeypatch) -> None:
    network, _ = mlp()
    path = tmp_path / "net.nir"
    path.write_bytes(b"old")
    export_nir(network, path)
    assert nir.read(path).metadata["format"] == "powersave-ttfs"
    before = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_nir(network, tmp_path / "missing" / "net.nir")

    def broken(fd: int) -> None:
        raise OSError("disk full")

    # Failing while the new file is written: the old one stays, no temporary file is left.
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        export_nir(with_plan(network), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.nir"]


# -- the mapping -----------------------------------------------------------------------------


def test_mapping_of_every_node_kind() -> None:
    network, _ = cnn()
    graph = network.graph
    out = to_nir(network)
    kinds = [(name, type(node).__name__) for name, node in out.nodes.items()]
    assert kinds == [
        ("image", "Input"),
        ("conv1.ramp", "I"),
        ("conv1", "Conv2d"),
        ("conv1.neurons", "IF"),
        ("pool1", "SumPool2d"),
        ("pool1.neurons", "IF"),
        ("conv2.ramp", "I"),
        ("conv2", "Conv2d"),
        ("conv2.neurons", "IF"),
        ("pool2.ramp", "I"),
        ("pool2", "AvgPool2d"),
        ("pool2.neurons", "IF"),
        ("flat", "Flatten"),
        ("fc.ramp", "I"),
        ("fc", "Affine"),
        ("fc.neurons", "IF"),
        ("out.ramp", "I"),
        ("out", "Affine"),
        ("out.neurons", "I"),
        ("out.logits", "Output"),
    ]
    names = [name for name, _ in kinds]
    assert out.edges == list(itertools.pairwise(names))
    assert out.nodes["image"].input_type["input"].tolist() == [2, 9, 9]  # ON/OFF channels
    assert out.nodes["image"].metadata["signed"] is True
    scales = [p.scale for p in graph.populations]
    conv1, fc, readout = graph.node("conv1"), graph.node("fc"), graph.node("out")
    # Bias currents b / A_ℓ, thresholds (and drives) s = A_{ℓ+1} / A_ℓ, r = 1.
    assert np.array_equal(out.nodes["conv1"].bias, conv1.bias.astype(np.float64) / scales[0])
    assert np.array_equal(out.nodes["conv1"].weight, conv1.weight)
    assert out.nodes["conv1"].weight.flags.writeable  # a copy: editing it leaves the network
    assert out.nodes["conv1"].stride.tolist() == [1, 1]
    assert out.nodes["conv1"].padding.tolist() == [1, 1]
    neurons = out.nodes["conv1.neurons"]
    assert neurons.v_threshold.shape == graph.shapes[1]
    assert np.all(neurons.v_threshold == scales[1] / scales[0]) and np.all(neurons.r == 1)
    assert neurons.metadata == {
        "powersave": "neurons",
        "window": 1,
        "scale": scales[1],
        "drive": scales[1] / scales[0],
    }
    assert np.array_equal(out.nodes["fc"].bias, fc.bias.astype(np.float64) / scales[3])
    assert np.all(out.nodes["fc.neurons"].v_threshold == scales[4] / scales[3])
    # First spike wins: the pool neuron fires on its first input and can never fire again.
    pool = out.nodes["pool1.neurons"]
    assert np.all(pool.v_threshold == 0.5) and np.all(pool.v_reset == -4.0)
    # The readout integrates with r = A_L: its potential over its window is the logit.
    assert np.all(out.nodes["out.neurons"].r == scales[-1])
    assert np.array_equal(out.nodes["out"].bias, readout.bias.astype(np.float64) / scales[-1])
    assert out.nodes["flat"].start_dim == 0


def test_fire_once_reset_bounds_every_later_rise() -> None:
    network, _ = mlp()
    graph, out = network.graph, to_nir(network)
    fc1 = graph.node("fc1")
    s, scale = graph.populations[1].scale / graph.populations[0].scale, graph.input.scale
    # The largest current a neuron of fc1 can ever receive: every input's ramp (at most 1, as
    # each input fires once) through |w|, the bias current, and the TTFS drive.
    weights = np.abs(fc1.weight.astype(np.float64)).sum(axis=1)
    most = weights.max() + np.abs(fc1.bias.astype(np.float64)).max() / scale + s
    reset = out.nodes["fc1.neurons"].v_reset
    assert reset.shape == (16,) and np.all(reset == reset[0])
    # Rising at that rate for the whole run (n_windows) from the reset stays below threshold.
    assert np.all(reset + graph.n_windows * most < out.nodes["fc1.neurons"].v_threshold)
    np.testing.assert_allclose(reset, -graph.n_windows * most, rtol=1e-12)


def _simulate_nir(graph, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """TTFS spike times and logits from the NIR parameters plus the documented convention.

    Only the window convention and the input encoding come from the metadata (NIR cannot say
    them); every weight, bias current, threshold, drive and readout factor is a NIR parameter.
    """
    nodes = list(graph.nodes.values())
    first = nodes[0]
    scale = float(first.metadata["scale"])
    times = encode(split_on_off(x.astype(np.float64), bool(first.metadata["signed"])), scale, 0)
    recorded, window, n = [times], 0, x.shape[0]
    ramp = current = None
    for node in nodes[1:]:
        role = node.metadata.get("powersave")
        if isinstance(node, nir.Flatten):
            times = times.reshape(n, -1)
        elif role == "maxpool":
            pool = MaxPool("p", tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
            times = ops.minpool2d(times, pool)  # the IF fires with the first input spike
        elif isinstance(node, nir.I) and role == "ramp":
            # ∫ over the window of the step H(t - t_i), times r: (window + 1 - t_i) for a spike.
            ramp = node.r * np.where(np.isfinite(times), window + 1 - times, 0.0)
        elif isinstance(node, nir.Affine):
            current = ramp @ node.weight.T.astype(np.float64) + node.bias
        elif isinstance(node, nir.Conv2d):
            conv = Conv("c", node.weight.astype(np.float64), np.zeros(len(node.bias)),
                        tuple(node.stride), tuple(node.padding))  # fmt: skip
            current = ops.conv2d(ramp, conv) + node.bias[None, :, None, None]
        elif isinstance(node, nir.AvgPool2d):
            avg = AvgPool("a", tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
            current = ops.avgpool2d(ramp, avg)
        elif isinstance(node, nir.IF) and role == "neurons":
            v = node.r * current  # potential at the end of the input window
            s = node.v_threshold  # the drive equals the threshold
            window += 1
            t = window + np.maximum(s - v, 0.0) / s  # crossing time under the drive
            times = np.where(t < window + 1, t, np.inf)
            recorded.append(times)
        elif isinstance(node, nir.I) and role == "readout":
            logits = (node.r * current).reshape(n, -1)
    return recorded, logits


@pytest.mark.parametrize("make", NETWORKS)
def test_nir_parameters_realise_the_temporal_code(make) -> None:
    network, x = make()
    expected = network.run(x, record_spikes=True)
    times, logits = _simulate_nir(to_nir(network), x)
    assert all(np.isfinite(t).any() for t in expected.times)
    for got, want in zip(times, expected.times, strict=True):
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-5)
    np.testing.assert_allclose(logits, expected.logits, rtol=1e-5, atol=1e-5)


# -- bad files and foreign graphs ------------------------------------------------------------


def test_non_nir_files_are_refused(tmp_path: Path) -> None:
    network, _ = mlp()
    with pytest.raises(NetworkFileError, match="does not exist"):
        import_nir(tmp_path / "nothing.nir")
    with pytest.raises(NetworkFileError, match="is a folder"):
        import_nir(tmp_path)
    cases = {
        "text.nir": b"hello, I am text",
        "empty.nir": b"",
        "pickle.nir": pickle.dumps({"a": 1}),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NetworkFileError, match="not a NIR file: NIR files are HDF5"):
            import_nir(tmp_path / name)
    save(network, tmp_path / "net.safetensors")
    with pytest.raises(NetworkFileError, match=r"powersave\.load"):
        import_nir(tmp_path / "net.safetensors")


def test_truncated_and_corrupt_hdf5_files_are_refused(tmp_path: Path) -> None:
    network, _ = mlp()
    path = tmp_path / "net.nir"
    export_nir(network, path)
    data = path.read_bytes()
    (tmp_path / "cut.nir").write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFileError, match="HDF5 file but not a readable NIR graph"):
        import_nir(tmp_path / "cut.nir")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("data", data=np.arange(3))
    with pytest.raises(NetworkFileError, match="not a readable NIR graph"):
        import_nir(tmp_path / "other.h5")


def test_foreign_nir_graph_is_refused(tmp_path: Path) -> None:
    lif = nir.NIRGraph.from_list(
        nir.Affine(weight=np.ones((2, 3), np.float32), bias=np.zeros(2)),
        nir.LIF(
            tau=np.ones(2),
            r=np.ones(2),
            v_leak=np.zeros(2),
            v_threshold=np.ones(2),
            v_reset=np.zeros(2),
        ),
    )
    nir.write(tmp_path / "lif.nir", lif)
    with pytest.raises(NetworkFileError, match=r"not a powersave time-to-first-spike.*'LIF'"):
        import_nir(tmp_path / "lif.nir")
    with pytest.raises(ConversionError, match="imports only graphs written by export_nir"):
        from_nir(lif)
    with pytest.raises(TypeError, match=r"nir\.NIRGraph"):
        from_nir(lif.nodes["affine"])


def test_metadata_problems_are_named() -> None:
    network, _ = mlp()
    graph = to_nir(network)
    graph.metadata["format_version"] = "99"
    with pytest.raises(ConversionError, match="format version '99'"):
        from_nir(graph)
    graph = to_nir(network)
    graph.metadata["network"] = "{not json"
    with pytest.raises(ConversionError, match="not valid JSON"):
        from_nir(graph)
    graph = to_nir(network)
    graph.metadata["network"] = graph.metadata["network"].replace('"dense"', '"gelu"', 1)
    with pytest.raises(ConversionError, match="unknown node kind 'gelu'"):
        from_nir(graph)


def test_edited_graph_is_refused(tmp_path: Path) -> None:
    network, _ = cnn()
    # A changed weight, bias, threshold, or node metadata: the graph no longer matches what it
    # describes.
    for name, field in [("fc", "weight"), ("conv2", "bias")]:
        graph = to_nir(network)
        array = getattr(graph.nodes[name], field).copy()
        array.flat[0] = -array.flat[0]  # keeps every bound the fire-once resets depend on
        setattr(graph.nodes[name], field, array)
        with pytest.raises(
            ConversionError, match=re.escape(f"biases of NIR node '{name}' are not those")
        ):
            from_nir(graph)
    for name, field, change in [
        ("conv1.neurons", "v_threshold", lambda v: v + 0.1),
        ("pool1.neurons", "v_reset", lambda v: v * 0),
        ("out.neurons", "r", lambda r: r + 1),
    ]:
        graph = to_nir(network)
        node = graph.nodes[name]
        setattr(node, field, change(getattr(node, field)))
        with pytest.raises(
            ConversionError, match=re.escape(f"NIR node '{name}': '{field}' differs")
        ):
            from_nir(graph)
    graph = to_nir(network)
    graph.nodes["fc.neurons"].metadata["window"] = 7
    with pytest.raises(ConversionError, match=r"'fc\.neurons': 'metadata' differs"):
        from_nir(graph)
    graph = to_nir(network)
    del graph.nodes["pool1.neurons"]
    with pytest.raises(ConversionError, match=r"missing \['pool1.neurons'\]"):
        from_nir(graph)
    graph = to_nir(network)
    graph.nodes["fc"] = nir.Linear(weight=graph.nodes["fc"].weight)
    with pytest.raises(ConversionError, match="describes NIR node 'fc' as a Affine"):
        from_nir(graph)
    # And through a file: an edited file is a bad network file.
    graph = to_nir(network)
    graph.nodes["fc"].weight = graph.nodes["fc"].weight + 1
    nir.write(tmp_path / "edited.nir", graph)
    with pytest.raises(NetworkFileError, match="edited after export"):
        import_nir(tmp_path / "edited.nir")


def test_unserialisable_metadata_is_refused() -> None:
    network, _ = mlp()
    bad = Network(network.graph, {}, {"when": object()})
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        to_nir(bad)
    with pytest.raises(TypeError, match="powersave Network"):
        to_nir(network.graph)  # type: ignore[arg-type]


def test_missing_nir_package_says_how_to_install(monkeypatch) -> None:
    network, _ = mlp()
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match=r"pip install 'powersave\[nir\]'"):
        nir_export.to_nir(network)

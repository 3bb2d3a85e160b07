"""NIR export and import: a powersave network as a Neuromorphic Intermediate Representation graph.

The mapping and its limits are documented in ``docs/nir.md``; in short, with τ = 1 (one window per
unit of NIR time), population ℓ of scale ``A_ℓ`` and ``s_ℓ = A_{ℓ+1}/A_ℓ``:

=====================  ========================================================================
powersave              NIR nodes (``name`` is the powersave node's name)
=====================  ========================================================================
Input                  ``Input`` of the population's shape (ON/OFF channels when signed)
before a synaptic      ``I`` ``"{name}.ramp"``, r = 1: a spike at ``t_i`` becomes the step
node                   ``H(t - t_i)``, so the synapse's current is a ramp PSP's slope
Dense / Conv / AvgPool ``Affine(W, b/A_ℓ)`` / ``Conv2d(W, b/A_ℓ)`` / ``AvgPool2d`` ``"{name}"``
hidden neurons         ``IF`` ``"{name}.neurons"``: r = 1, threshold ``s_ℓ``, fire-once reset
readout neurons        ``I`` ``"{name}.neurons"``, r = ``A_ℓ``: ``v(ℓ+1) - v(ℓ)`` is the logit
MaxPool                ``SumPool2d`` ``"{name}"`` + ``IF`` ``"{name}.neurons"`` (threshold 1/2,
                       reset ``-kh*kw``): fires with the first spike of its pool, then never
Flatten                ``Flatten`` (start_dim 0: NIR shapes have no batch axis)
end                    ``Output`` ``"{readout}.logits"``
=====================  ========================================================================

What NIR cannot say — the windows (currents of a layer flow only during its input window, then
the synaptic currents stop and a constant drive ``s_ℓ`` charges the neuron, which may fire only
in its own window), the input encoding ``t = 1 - min(x, A_0)/A_0`` and the ON/OFF split — is
written to the graph's and the nodes' ``metadata``, together with the scales, the power plans and
the network's own metadata. :func:`from_nir` needs that metadata, and checks that every NIR node
is exactly what :func:`to_nir` makes of the network it describes, so an edited or foreign graph
is refused rather than misread.

The ``nir`` package is imported only when one of these functions is called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from powersave._atomic import write_bytes_atomic
from powersave._version import __version__
from powersave.errors import ConversionError, GraphError, NetworkFileError
from powersave.graph.graph import Graph
from powersave.graph.io import json_default
from powersave.graph.nodes import (
    NODE_TYPES,
    AvgPool,
    Conv,
    Dense,
    Flatten,
    Input,
    MaxPool,
    Node,
    Shape,
)
from powersave.network import Network
from powersave.plan import Plan

if TYPE_CHECKING:
    import nir

FORMAT = "powersave-ttfs"
FORMAT_VERSION = "1"
#: The first bytes of an HDF5 file, which is what NIR files are.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

PathLike = str | os.PathLike[str]


def _nir() -> Any:
    try:
        import nir
    except ImportError as exc:
        raise ImportError(
            "NIR export and import need the 'nir' package: pip install 'powersave[nir]' "
            "(or pip install nir)"
        ) from exc
    return nir


# -- export --------------------------------------------------------------------------------------


def _fire_once_reset(node: Dense | Conv | AvgPool, scale: float, drive: float, n: int) -> float:
    """A reset potential from which a neuron cannot reach its threshold before ``t = n``.

    After a spike the potential can rise at most by the largest current the neuron can receive
    (every ramp trace is at most 1 since each neuron fires once, plus the bias current, plus the
    TTFS drive) for at most ``n`` windows; resetting that far below 0 makes it fire at most once,
    under the TTFS model and under NIR's own IF dynamics alike.
    """
    if isinstance(node, AvgPool):
        fan_in, bias = 1.0, 0.0  # weights 1/(kh*kw) over kh*kw inputs
    else:
        weight = np.abs(node.weight.astype(np.float64)).reshape(node.weight.shape[0], -1)
        fan_in = float(weight.sum(axis=1).max())
        bias = float(np.abs(node.bias.astype(np.float64)).max()) / scale
    return -n * (fan_in + bias + drive)


def _synapse(
    nir: Any, node: Dense | Conv | AvgPool, in_shape: Shape, scale: float, meta: dict[str, Any]
) -> Any:
    """The NIR node of a synaptic layer; biases become currents ``b / A_ℓ`` (float64).

    Weights are copied: the NIR graph is the caller's to change, the network's arrays are not.
    """
    if isinstance(node, Dense):
        return nir.Affine(
            weight=node.weight.copy(), bias=node.bias.astype(np.float64) / scale, metadata=meta
        )
    if isinstance(node, Conv):
        return nir.Conv2d(
            input_shape=(int(in_shape[1]), int(in_shape[2])),
            weight=node.weight.copy(),
            stride=np.array(node.stride),
            padding=np.array(node.padding),
            dilation=np.array((1, 1)),
            groups=1,
            bias=node.bias.astype(np.float64) / scale,
            metadata=meta,
        )
    return nir.AvgPool2d(
        kernel_size=np.array(node.kernel),
        stride=np.array(node.stride),
        padding=np.array(node.padding),
        metadata=meta,
    )


def _digest(node: Node) -> str:
    """sha256 over a node's arrays (name, shape, float32 little-endian bytes); "" if it has none."""
    h = hashlib.sha256()
    arrays = 0
    for f in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, f.name)
        if isinstance(value, np.ndarray):
            h.update(json.dumps([f.name, list(value.shape)]).encode())
            h.update(np.ascontiguousarray(value, dtype="<f4").tobytes())
            arrays += 1
    return h.hexdigest() if arrays else ""


def _describe(node: Node) -> dict[str, Any]:
    """``{"kind", "fields", "sha256"}``: non-array fields as JSON, a digest of the arrays.

    The arrays themselves live in the NIR nodes; the digest tells an edited one.
    """
    fields = {}
    for f in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, f.name)
        if f.init and not isinstance(value, np.ndarray):
            fields[f.name] = list(value) if isinstance(value, tuple) else value
    return {"kind": node.kind, "fields": fields, "sha256": _digest(node)}


def to_nir(network: Network) -> nir.NIRGraph:
    """The NIR graph of ``network`` (see the module docstring and ``docs/nir.md``).

    Every NIR node carries ``metadata["powersave"]`` (its role) and ``metadata["window"]``; the
    graph's metadata holds ``format = "powersave-ttfs"``, ``format_version`` and, under
    ``"network"``, a JSON description of the powersave nodes, the power plans and the network's
    metadata. Weights are the graph's float32 arrays; derived values (bias currents, thresholds,
    resets) are float64.

    Raises:
        ImportError: the ``nir`` package is not installed.
        ValueError: the network's metadata is not JSON-serialisable.
    """
    nir = _nir()
    if not isinstance(network, Network):
        raise TypeError(f"to_nir needs a powersave Network, got {type(network).__name__}")
    graph = network.graph
    n_windows = graph.n_windows
    inp = graph.input
    nodes: dict[str, Any] = {
        inp.name: nir.Input(
            input_type={"input": np.array(graph.shapes[0])},
            metadata={
                "powersave": "input",
                "window": 0,
                "scale": inp.scale,
                "signed": inp.signed,
                "input_shape": np.array(inp.shape),
            },
        )
    }
    window, scale = 0, inp.scale
    for i, node in enumerate(graph.nodes[1:], start=1):
        in_shape, out_shape = graph.shapes[i - 1], graph.shapes[i]
        if isinstance(node, Flatten):
            nodes[node.name] = nir.Flatten(
                input_type={"input": np.array(in_shape)},
                start_dim=0,
                end_dim=-1,
                metadata={"powersave": "flatten"},
            )
        elif isinstance(node, MaxPool):
            nodes[node.name] = nir.SumPool2d(
                kernel_size=np.array(node.kernel),
                stride=np.array(node.stride),
                padding=np.array(node.padding),
                metadata={"powersave": "maxpool", "window": window},
            )
            members = float(node.kernel[0] * node.kernel[1])
            nodes[f"{node.name}.neurons"] = nir.IF(
                r=np.ones(out_shape),
                v_threshold=np.full(out_shape, 0.5),
                v_reset=np.full(out_shape, -members),
                metadata={"powersave": "first-spike", "window": window},
            )
        else:
            assert isinstance(node, Dense | Conv | AvgPool)
            nodes[f"{node.name}.ramp"] = nir.I(
                r=np.ones(in_shape), metadata={"powersave": "ramp", "window": window}
            )
            meta = {"powersave": "synapses", "window": window, "input_scale": scale}
            nodes[node.name] = _synapse(nir, node, in_shape, scale, meta)
            if i == graph.readout_index:
                nodes[f"{node.name}.neurons"] = nir.I(
                    r=np.full(out_shape, scale),
                    metadata={"powersave": "readout", "window": window, "logit_at": window + 1},
                )
            else:
                assert node.scale is not None  # a hidden layer
                drive = node.scale / scale
                reset = _fire_once_reset(node, scale, drive, n_windows)
                window, scale = window + 1, node.scale
                nodes[f"{node.name}.neurons"] = nir.IF(
                    r=np.ones(out_shape),
                    v_threshold=np.full(out_shape, drive),
                    v_reset=np.full(out_shape, reset),
                    metadata={
                        "powersave": "neurons",
                        "window": window,
                        "scale": scale,
                        "drive": drive,
                    },
                )
    nodes[f"{graph.readout.name}.logits"] = nir.Output(
        output_type={"output": np.array(graph.shapes[-1])}, metadata={"powersave": "logits"}
    )
    names = list(nodes)
    try:
        description = json.dumps(
            {
                "nodes": [_describe(node) for node in graph.nodes],
                "plans": {mode: plan.to_dict() for mode, plan in network.plans.items()},
                "metadata": dict(network.metadata),
            },
            allow_nan=False,
            default=json_default,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the network's metadata cannot be written as JSON: {exc}") from exc
    return nir.NIRGraph(
        nodes=nodes,
        edges=list(itertools.pairwise(names)),
        metadata={
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "powersave_version": __version__,
            "time_unit": "one window (tau = 1)",
            "network": description,
        },
    )


def export_nir(network: Network, path: PathLike) -> None:
    """Write ``network`` as a NIR file (HDF5, readable with ``nir.read``), atomically.

    On any error no file is left and an existing file at ``path`` is untouched. Read it back
    with :func:`import_nir`.
    """
    graph = to_nir(network)
    buffer = io.BytesIO()
    _nir().write(buffer, graph)
    write_bytes_atomic(path, buffer.getvalue())


# -- import --------------------------------------------------------------------------------------


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _same(a: Any, b: Any) -> bool:
    """Equal values, whether they came from NIR's constructors or back from HDF5."""
    a, b = _text(a), _text(b)
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and set(a) == set(b)
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        x, y = np.asarray(a), np.asarray(b)
    except (TypeError, ValueError):
        return False
    if x.dtype == object or y.dtype == object:
        return False
    return x.shape == y.shape and bool(np.array_equal(x, y))


def _check_matches(found: Any, expected: Any) -> None:
    """Refuse ``found`` unless it is node for node what :func:`to_nir` makes of the network."""
    names, wanted = set(found.nodes), set(expected.nodes)
    if names != wanted:
        raise ConversionError(
            f"the NIR graph does not have the nodes its powersave metadata describes: "
            f"missing {sorted(wanted - names)}, unexpected {sorted(names - wanted)}"
        )
    for name, node in expected.nodes.items():
        other = found.nodes[name]
        if type(other) is not type(node):
            raise ConversionError(
                f"NIR node {name!r} is a {type(other).__name__}, the powersave network it "
                f"describes needs a {type(node).__name__}"
            )
        mine, theirs = node.to_dict(), other.to_dict()
        for key in sorted(set(mine) | set(theirs)):
            if key == "type":
                continue
            if key not in mine or key not in theirs or not _same(mine[key], theirs[key]):
                raise ConversionError(
                    f"NIR node {name!r}: {key!r} differs from what the TTFS convention gives for "
                    f"the network in the graph's metadata; was the graph edited after export?"
                )
    edges = sorted((_text(a), _text(b)) for a, b in found.edges)
    if edges != sorted(expected.edges):
        raise ConversionError(
            f"the NIR graph's edges {edges} are not the chain its powersave metadata describes"
        )


def _array(nodes: dict[str, Any], name: str, kind: Any, field: str) -> np.ndarray:
    node = nodes.get(name)
    if not isinstance(node, kind):
        found = "missing" if node is None else f"a {type(node).__name__}"
        raise ConversionError(
            f"the powersave metadata describes NIR node {name!r} as a {kind.__name__}; it is "
            f"{found}"
        )
    return np.asarray(getattr(node, field))


def _rebuild(entries: Any, nir_nodes: dict[str, Any]) -> Graph:
    """The powersave graph: structure from the metadata, weights and biases from the NIR nodes."""
    nir = _nir()
    if not isinstance(entries, list):
        raise ConversionError("the powersave metadata has no list of nodes")
    nodes: list[Node] = []
    scale = 1.0  # A_ℓ of the population the next synaptic node receives
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("fields"), dict)):
            raise ConversionError(f"malformed node entry in the powersave metadata: {entry!r}")
        kind, fields = entry.get("kind"), dict(entry["fields"])
        cls = NODE_TYPES.get(kind)  # type: ignore[arg-type]
        if cls is None:
            raise ConversionError(
                f"unknown node kind {kind!r} in the powersave metadata; known: {sorted(NODE_TYPES)}"
            )
        name = fields.get("name")
        if cls in (Dense, Conv):
            nir_kind = nir.Affine if cls is Dense else nir.Conv2d
            weight = _array(nir_nodes, str(name), nir_kind, "weight")
            bias = _array(nir_nodes, str(name), nir_kind, "bias").astype(np.float64) * scale
            fields.update(weight=weight.astype(np.float32), bias=bias.astype(np.float32))
        try:
            node = cls(**fields)
        except (GraphError, TypeError, ValueError) as exc:
            raise ConversionError(f"node {name!r} in the powersave metadata: {exc}") from exc
        if _digest(node) != entry.get("sha256"):
            raise ConversionError(
                f"the weights or biases of NIR node {name!r} are not those exported (their "
                f"sha256 differs); was the graph edited after export?"
            )
        if isinstance(node, Input) or getattr(node, "scale", None) is not None:
            scale = node.scale  # type: ignore[union-attr]
        nodes.append(node)
    try:
        return Graph(tuple(nodes))
    except GraphError as exc:
        raise ConversionError(f"the powersave metadata describes an invalid graph: {exc}") from exc


def _plans(entries: Any, graph: Graph) -> dict[str, Plan]:
    if not isinstance(entries, dict):
        raise ConversionError("the powersave metadata's plans are not a mapping of mode names")
    plans = {}
    for mode, entry in entries.items():
        try:
            plan = Plan.from_dict(entry)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConversionError(f"plan {mode!r} in the powersave metadata: {exc}") from exc
        if plan.cutoffs and len(plan.cutoffs) != graph.n_windows:
            raise ConversionError(
                f"plan {mode!r} has {len(plan.cutoffs)} cut-offs for {graph.n_windows} "
                f"spiking populations"
            )
        plans[str(mode)] = plan
    return plans


def from_nir(graph: nir.NIRGraph) -> Network:
    """The powersave network a NIR graph written by :func:`to_nir` describes, exactly.

    Raises:
        ConversionError: the graph is not a powersave TTFS export (no or another ``format`` in
            its metadata, e.g. a LIF network from another tool), is of another format version,
            or its nodes differ from what its metadata describes (edited after export).
    """
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"from_nir needs a nir.NIRGraph, got {type(graph).__name__}")
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    found = _text(meta.get("format"))
    if found != FORMAT:
        kinds = sorted({type(node).__name__ for node in graph.nodes.values()})
        raise ConversionError(
            f"this NIR graph is not a powersave time-to-first-spike network: its metadata "
            f"'format' is {found!r}, expected {FORMAT!r} (its nodes are {kinds}). powersave "
            f"imports only graphs written by export_nir: the TTFS window convention cannot be "
            f"expressed by NIR's nodes alone, so another tool's graph cannot be read as one"
        )
    version = _text(meta.get("format_version"))
    if version != FORMAT_VERSION:
        raise ConversionError(
            f"this NIR graph has powersave format version {version!r}; this powersave reads "
            f"version {FORMAT_VERSION!r} only: export it again with this release"
        )
    try:
        description = json.loads(_text(meta.get("network")))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConversionError(f"the graph's powersave metadata is not valid JSON: {exc}") from exc
    if not isinstance(description, dict) or not isinstance(description.get("metadata"), dict):
        raise ConversionError("the graph's powersave metadata is not a JSON object of the format")
    network_graph = _rebuild(description.get("nodes"), graph.nodes)
    network = Network(
        network_graph,
        _plans(description.get("plans"), network_graph),
        description["metadata"],
    )
    _check_matches(graph, to_nir(network))
    return network


def import_nir(path: PathLike) -> Network:
    """Read a network written by :func:`export_nir`: same spike times, logits and plans.

    Raises:
        NetworkFileError: the file is missing, not HDF5, not a readable NIR graph, or a NIR graph
            that is not a powersave TTFS export (see :func:`from_nir`).
    """
    nir = _nir()
    path = Path(path)
    if not path.exists():
        raise NetworkFileError(f"NIR file {path} does not exist")
    if path.is_dir():
        raise NetworkFileError(f"{path} is a folder, not a NIR file")
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise NetworkFileError(f"cannot read NIR file {path}: {exc}") from exc
    import h5py  # a dependency of nir

    # HDF5 may start after a user block; h5py knows where to look.
    if not head.startswith(_HDF5_SIGNATURE) and not h5py.is_hdf5(path):
        hint = ""
        if head[8:9] == b"{":  # a little-endian header length, then JSON: safetensors
            hint = " (a safetensors file? open powersave networks with powersave.load)"
        raise NetworkFileError(
            f"{path} is not a NIR file: NIR files are HDF5, and this one does not start with "
            f"the HDF5 signature{hint}"
        )
    try:
        graph = nir.read(path)
    except Exception as exc:  # h5py and nir raise OSError, KeyError, AssertionError, ...
        raise NetworkFileError(
            f"{path} is an HDF5 file but not a readable NIR graph: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return from_nir(graph)
    except ConversionError as exc:
        raise NetworkFileError(f"NIR file {path}: {exc}") from exc


__all__ = ["FORMAT", "FORMAT_VERSION", "export_nir", "from_nir", "import_nir", "to_nir"]

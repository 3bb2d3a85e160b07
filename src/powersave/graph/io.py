"""Network files: one safetensors file holding a graph, its power plans and free metadata.

Layout (suggested extension ``.safetensors``; any name works):

- tensors: every array field of every node, named ``"{node_name}.{field}"`` (``fc1.weight``);
- header metadata (str → str):

  ``format``          ``"powersave-network"``
  ``format_version``  ``"1"``
  ``graph``           JSON ``{"nodes": [{"kind", "fields", "arrays"}, ...]}`` in graph order:
                      ``kind`` is the node class's ``kind``, ``fields`` its non-array fields
                      (tuples as lists), ``arrays`` the names of its array fields;
  ``plans``           JSON ``{mode: Plan.to_dict()}``;
  ``metadata``        JSON of the caller's metadata;
  ``sha256``          hex digest over the other header entries and every tensor (names sorted;
                      name, dtype, shape, raw little-endian bytes), so that corruption anywhere
                      is detected rather than read as a different network.

Nodes are described and rebuilt generically through :data:`~powersave.graph.nodes.NODE_TYPES`:
a new node kind needs no change here. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from powersave._atomic import write_bytes_atomic
from powersave.errors import GraphError, NetworkFileError
from powersave.graph.graph import Graph
from powersave.graph.nodes import NODE_TYPES, Node
from powersave.plan import Plan

FORMAT = "powersave-network"
FORMAT_VERSION = "1"
_HEADER_KEYS = ("format", "format_version", "graph", "plans", "metadata", "sha256")
# safetensors refuses headers above 100 MB; a larger length prefix means "not safetensors".
_MAX_HEADER = 100_000_000

PathLike = str | os.PathLike[str]


# -- describing nodes ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A node's non-array field as JSON: tuples become lists, numpy scalars Python numbers."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a field of type {type(value).__name__} in a network file")


def _describe(node: Node) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON entry of ``node`` and its arrays by field name."""
    fields: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(node):  # type: ignore[arg-type]
        if not f.init:
            continue
        value = getattr(node, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            fields[f.name] = _jsonable(value)
    return {"kind": node.kind, "fields": fields, "arrays": sorted(arrays)}, arrays


def json_default(value: Any) -> Any:
    """``json.dumps`` hook: numpy scalars and arrays as plain numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def _serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with a deterministic layout (the library orders the header at random).

    Tensors are sorted by item size (largest first, so each stays aligned) then name; the header
    is padded with spaces to a multiple of 8 bytes, as the library does. Read back by the library.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n)):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        kind = {"f": "F", "i": "I", "u": "U"}.get(array.dtype.kind)
        if kind is None:
            raise TypeError(f"tensor {name!r} has dtype {array.dtype}, not a number type")
        raw = array.tobytes()
        header[name] = {
            "dtype": f"{kind}{8 * array.dtype.itemsize}",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _digest(header: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over every header entry but ``sha256`` itself and every tensor, in sorted order."""
    h = hashlib.sha256()

    def part(data: bytes) -> None:  # length-prefixed, so that no two inputs hash alike
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    for key in sorted(k for k in header if k != "sha256"):
        part(key.encode())
        part(header[key].encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        part(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        part(array.tobytes())
    return h.hexdigest()


# -- writing -------------------------------------------------------------------------------------


def write_network(
    path: PathLike,
    graph: Graph,
    plans: Mapping[str, Plan] = {},
    metadata: Mapping[str, Any] = {},
) -> None:
    """Save ``graph`` with its power ``plans`` (by mode name) and JSON ``metadata`` to ``path``.

    The write is atomic: on any error no file is left and an existing file is untouched.
    Metadata must be JSON-serialisable (numpy scalars and arrays become numbers and lists; tuples
    read back as lists). Reload with :func:`read_network`.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"write_network needs a powersave Graph, got {type(graph).__name__}")
    for mode, plan in plans.items():
        if not isinstance(mode, str) or not isinstance(plan, Plan):
            raise TypeError(f"plans map mode names to Plan objects, got {mode!r}: {plan!r}")
        if plan.cutoffs and len(plan.cutoffs) != graph.n_windows:
            raise ValueError(
                f"plan {mode!r} has {len(plan.cutoffs)} cut-offs but the graph has "
                f"{graph.n_windows} spiking populations"
            )
    try:
        metadata_json = json.dumps(
            dict(metadata), sort_keys=True, allow_nan=False, default=json_default
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata cannot be saved as JSON: {exc}") from exc

    entries, tensors = [], {}
    for node in graph.nodes:
        entry, arrays = _describe(node)
        entries.append(entry)
        tensors.update({f"{node.name}.{field}": array for field, array in arrays.items()})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graph": json.dumps({"nodes": entries}),
        "plans": json.dumps({mode: plan.to_dict() for mode, plan in plans.items()}),
        "metadata": metadata_json,
    }
    header["sha256"] = _digest(header, tensors)
    write_bytes_atomic(path, _serialize(tensors, header))


# -- reading -------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise NetworkFileError(f"network file {path} does not exist")
    if path.is_dir():
        raise NetworkFileError(f"{path} is a folder, not a network file")
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise NetworkFileError(f"no permission to read network file {path}") from exc
    except OSError as exc:
        raise NetworkFileError(f"cannot read network file {path}: {exc}") from exc


def _kind_of_foreign_file(data: bytes) -> str:
    if data[:1] == b"\x80":
        return " (it looks like a pickle, e.g. from torch.save; powersave never loads pickles)"
    if data[:4] == b"PK\x03\x04":
        return " (it looks like a zip archive, e.g. a torch.save checkpoint or an .npz)"
    if data[:6] == b"\x93NUMPY":
        return " (it looks like a .npy array)"
    return ""


def _split(path: Path, data: bytes) -> dict[str, Any]:
    """Check the safetensors framing (length prefix, JSON header, data size); return the header."""
    if not data:
        raise NetworkFileError(f"network file {path} is empty")
    foreign = (
        f"{path} is not a safetensors file, so not a powersave network{_kind_of_foreign_file(data)}"
    )
    if len(data) < 8:
        raise NetworkFileError(f"{path} is too short ({len(data)} bytes): truncated? " + foreign)
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > _MAX_HEADER or (len(data) > 8 and data[8:9] != b"{"):
        raise NetworkFileError(foreign)
    if 8 + n > len(data):
        raise NetworkFileError(
            f"network file {path} is truncated: its header needs {8 + n} bytes, "
            f"the file has {len(data)}"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [
            int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"
        ]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise NetworkFileError(f"network file {path} has a corrupted header: {exc}") from exc
    expected, found = max(ends, default=0), len(data) - 8 - n
    if found < expected:
        raise NetworkFileError(
            f"network file {path} is truncated: its tensors need {expected} bytes, "
            f"{found} are present"
        )
    if found > expected:
        raise NetworkFileError(
            f"network file {path} is corrupted: {found - expected} bytes follow its last tensor"
        )
    return header


def _check_format(path: Path, meta: Any) -> dict[str, str]:
    if not isinstance(meta, dict) or "format" not in meta:
        raise NetworkFileError(
            f"{path} is a safetensors file but not a powersave network: its header has no "
            f"'format' entry (expected {FORMAT!r}); save networks with powersave.save"
        )
    if meta["format"] != FORMAT:
        raise NetworkFileError(
            f"{path} is a safetensors file but not a powersave network: its format is "
            f"{meta['format']!r}, expected {FORMAT!r}"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise NetworkFileError(
            f"network file {path} has format version {version!r}; this powersave reads version "
            f"{FORMAT_VERSION!r} only: use the powersave release that wrote it, or convert again"
        )
    missing = [k for k in _HEADER_KEYS if k not in meta]
    if missing or not all(isinstance(v, str) for v in meta.values()):
        raise NetworkFileError(
            f"network file {path} is corrupted: its header lacks {missing} or holds non-text values"
        )
    return meta


def _build_node(path: Path, entry: Any, tensors: Mapping[str, np.ndarray], used: set[str]) -> Node:
    bad = f"network file {path} has an invalid graph"
    if not (
        isinstance(entry, dict)
        and set(entry) == {"kind", "fields", "arrays"}
        and isinstance(entry["fields"], dict)
        and isinstance(entry["arrays"], list)
        and all(isinstance(a, str) for a in entry["arrays"])
    ):
        raise NetworkFileError(f"{bad}: malformed node entry {entry!r}")
    kind, fields, arrays = entry["kind"], entry["fields"], entry["arrays"]
    cls = NODE_TYPES.get(kind)
    if cls is None:
        raise NetworkFileError(
            f"{bad}: unknown node kind {kind!r}; this powersave knows {sorted(NODE_TYPES)}"
        )
    name = fields.get("name")
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((set(fields) | set(arrays)) - allowed)
    if unknown or set(fields) & set(arrays) or not isinstance(name, str):
        raise NetworkFileError(f"{bad}: {kind} node {name!r} has unexpected fields {unknown}")
    kwargs = dict(fields)
    for field in arrays:
        key = f"{name}.{field}"
        if key not in tensors:
            raise NetworkFileError(f"{bad}: tensor {key!r} is missing")
        kwargs[field] = tensors[key]
        used.add(key)
    try:
        node = cls(**kwargs)
    except GraphError as exc:
        raise NetworkFileError(f"{bad}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise NetworkFileError(f"{bad}: {kind} node {name!r}: {exc}") from exc
    if _describe(node)[0] != entry:
        raise NetworkFileError(f"{bad}: {kind} node {name!r} does not read back as written")
    return node


def _parse_json(path: Path, meta: Mapping[str, str], key: str) -> Any:
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise NetworkFileError(
            f"network file {path}: its {key!r} entry is not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise NetworkFileError(f"network file {path}: its {key!r} entry is not a JSON object")
    return value


def _build_plans(path: Path, meta: Mapping[str, str], graph: Graph) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    for mode, entry in _parse_json(path, meta, "plans").items():
        try:
            plan = Plan.from_dict(entry)
        except (TypeError, ValueError, AttributeError) as exc:
            raise NetworkFileError(f"network file {path}: plan {mode!r} is invalid: {exc}") from exc
        if plan.to_dict() != entry:
            raise NetworkFileError(f"network file {path}: plan {mode!r} does not read back")
        if plan.cutoffs and len(plan.cutoffs) != graph.n_windows:
            raise NetworkFileError(
                f"network file {path}: plan {mode!r} has {len(plan.cutoffs)} cut-offs "
                f"for {graph.n_windows} spiking populations"
            )
        plans[mode] = plan
    return plans


def _decode(path: Path, data: bytes) -> tuple[Graph, dict[str, Plan], dict[str, Any]]:
    """:func:`read_network` on the file's bytes; ``path`` only names the file in errors."""
    header = _split(path, data)
    meta = _check_format(path, header.get("__metadata__"))
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # the Rust SafetensorError derives from Exception only
        raise NetworkFileError(f"network file {path} has a corrupted header: {exc}") from exc
    if _digest(meta, tensors) != meta["sha256"]:
        raise NetworkFileError(
            f"network file {path} is corrupted: its checksum does not match its contents"
        )

    graph_json = _parse_json(path, meta, "graph")
    if set(graph_json) != {"nodes"} or not isinstance(graph_json["nodes"], list):
        raise NetworkFileError(f"network file {path} has an invalid graph: no list of nodes")
    used: set[str] = set()
    nodes = tuple(_build_node(path, e, tensors, used) for e in graph_json["nodes"])
    extra = sorted(set(tensors) - used)
    if extra:
        raise NetworkFileError(f"network file {path} holds tensors no node uses: {extra}")
    try:
        graph = Graph(nodes)
    except GraphError as exc:
        raise NetworkFileError(f"network file {path} has an invalid graph: {exc}") from exc
    return graph, _build_plans(path, meta, graph), _parse_json(path, meta, "metadata")


def read_network(path: PathLike) -> tuple[Graph, dict[str, Plan], dict[str, Any]]:
    """Load a network written by :func:`write_network`.

    Returns:
        ``(graph, plans, metadata)``: plans by mode name, metadata as JSON values.

    Raises:
        NetworkFileError: the file is missing, unreadable, not a powersave network, of another
            format version, truncated, corrupted (checksum mismatch) or holds an invalid graph.
    """
    path = Path(path)
    return _decode(path, _read_bytes(path))

"""Network files: round trips, every way a file can be bad, atomic writes, fuzzing."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from powersave import _atomic
from powersave.errors import NetworkFileError
from powersave.graph import io
from powersave.graph.graph import Graph
from powersave.graph.io import read_network, write_network
from powersave.graph.nodes import NODE_TYPES, AvgPool, Conv, Dense, Flatten, Input, MaxPool
from powersave.plan import Plan

# -- fixtures --------------------------------------------------------------------------------


def conv_graph(seed: int = 0) -> Graph:
    """Every node kind: signed image input, strided padded conv, max and avg pool, flatten."""
    rng = np.random.default_rng(seed)
    return Graph(
        (
            Input("image", (1, 8, 8), scale=1.0, signed=True),
            Conv("conv1", rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 2, (1, 0), 2.5),
            MaxPool("pool1", kernel=2),
            AvgPool("pool2", kernel=(2, 1), stride=1, scale=0.75),
            Flatten("flat"),
            Dense("hidden", rng.normal(size=(5, 3)), rng.normal(size=5), scale=1.5),
            Dense("readout", rng.normal(size=(4, 5)), rng.normal(size=4)),
        )
    )


def dense_graph(seed: int = 1) -> Graph:
    """Unsigned flat input, one hidden layer."""
    rng = np.random.default_rng(seed)
    return Graph(
        (
            Input("x", (6,), scale=0.5),
            Dense("fc1", rng.normal(size=(7, 6)).astype(np.float32), np.zeros(7), scale=3.0),
            Dense("fc2", rng.normal(size=(3, 7)), rng.normal(size=3)),
        )
    )


PLANS = {
    "full": Plan(name="full"),
    "balanced": Plan((1.0, 0.5, 0.25, 0.5), early_decision=True, name="balanced"),
    "confident": Plan((0.9, 0.8, 0.7, 1.0), early_decision=True, margin=0.3, name="confident"),
}
METADATA = {"calibration": {"samples": 1000, "seed": 0}, "torch": None, "note": "ünïcode"}


@functools.lru_cache(maxsize=1)
def valid_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.safetensors"
        write_network(path, conv_graph(), PLANS, METADATA)
        return path.read_bytes()


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert a.shapes == b.shapes
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert type(x) is type(y)
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype and u.shape == v.shape
                assert u.tobytes() == v.tobytes()  # bit-identical
            else:
                assert u == v and type(u) is type(v)


def assert_same_plans(a: dict[str, Plan], b: dict[str, Plan]) -> None:
    assert a == b
    assert {k: p.name for k, p in a.items()} == {k: p.name for k, p in b.items()}


def craft(path: Path, tensors: dict[str, np.ndarray], **entries: str) -> Path:
    """A safetensors file with a valid checksum over chosen header entries."""
    header = {"format": io.FORMAT, "format_version": io.FORMAT_VERSION}
    header.update({"graph": '{"nodes": []}', "plans": "{}", "metadata": "{}"})
    header.update(entries)
    header["sha256"] = io._digest(header, tensors)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=header))
    return path


def graph_entries(graph: Graph) -> tuple[list[dict], dict[str, np.ndarray]]:
    entries, tensors = [], {}
    for node in graph.nodes:
        entry, arrays = io._describe(node)
        entries.append(entry)
        tensors.update({f"{node.name}.{k}": v for k, v in arrays.items()})
    return entries, tensors


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [conv_graph, dense_graph])
def test_round_trip(tmp_path: Path, make) -> None:
    graph = make()
    path = tmp_path / "net.safetensors"
    plans = {"eco": Plan((0.5, 0.25), name="eco")} if make is dense_graph else PLANS
    write_network(path, graph, plans, METADATA)
    graph2, plans2, metadata2 = read_network(path)
    assert_same_graph(graph, graph2)
    assert_same_plans(plans, plans2)
    assert metadata2 == METADATA


def test_round_trip_covers_every_node_kind() -> None:
    kinds = {n.kind for n in conv_graph().nodes} | {n.kind for n in dense_graph().nodes}
    assert kinds == set(NODE_TYPES)
    assert {n.input.signed for n in (conv_graph(), dense_graph())} == {True, False}


def test_defaults_and_str_path(tmp_path: Path) -> None:
    path = str(tmp_path / "net.powersave")
    write_network(path, dense_graph())
    graph, plans, metadata = read_network(path)
    assert_same_graph(graph, dense_graph())
    assert plans == {} and metadata == {}


def test_written_bytes_are_deterministic(tmp_path: Path) -> None:
    write_network(tmp_path / "a", conv_graph(), PLANS, METADATA)
    assert valid_bytes() == (tmp_path / "a").read_bytes()
    write_network(tmp_path / "b", conv_graph(seed=5), PLANS, METADATA)
    assert valid_bytes() != (tmp_path / "b").read_bytes()


def test_serializer_agrees_with_the_library() -> None:
    # Mixed dtypes: the library reads our layout back exactly.
    tensors = {
        "b": np.arange(3, dtype=np.float32),
        "a": np.ones((2, 2), np.float64),
        "c": np.arange(5, dtype=np.uint8),
        "d": np.arange(6, dtype=np.int16).reshape(3, 2),
        "e": np.zeros((0, 4), np.float32),
    }
    loaded = safetensors.numpy.load(io._serialize(tensors, {"z": "1", "a": "ü"}))
    assert sorted(loaded) == sorted(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    # float32 only, one metadata entry (no ordering freedom): the very bytes the library writes.
    tensors = {"w": np.ones((3, 2), np.float32), "b": np.arange(3, dtype=np.float32)}
    for meta in ({"k": "ü"}, {"k": "x" * 13}):
        assert io._serialize(tensors, meta) == safetensors.numpy.save(tensors, metadata=meta)
    with pytest.raises(TypeError, match="not a number type"):
        io._serialize({"s": np.array([True])}, {})


def test_plan_order_is_kept(tmp_path: Path) -> None:
    plans = dict(reversed(PLANS.items()))
    write_network(tmp_path / "net", conv_graph(), plans)
    assert (
        list(read_network(tmp_path / "net")[1]) == list(plans) == ["confident", "balanced", "full"]
    )


def test_tensor_names_and_header(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    write_network(path, dense_graph())
    tensors = safetensors.numpy.load_file(str(path))
    assert sorted(tensors) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    with safetensors.safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()
    assert meta["format"] == "powersave-network" and meta["format_version"] == "1"
    assert [n["kind"] for n in json.loads(meta["graph"])["nodes"]] == ["input", "dense", "dense"]


def test_numpy_metadata_becomes_json(tmp_path: Path) -> None:
    path = tmp_path / "net"
    write_network(path, dense_graph(), {}, {"acc": np.float32(0.5), "counts": np.arange(3)})
    assert read_network(path)[2] == {"acc": 0.5, "counts": [0, 1, 2]}


# -- refusing to write -----------------------------------------------------------------------


def test_write_refuses_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "net"
    with pytest.raises(ValueError, match="3 cut-offs but the graph has 2"):
        write_network(path, dense_graph(), {"x": Plan((0.5, 0.5, 0.5))})
    with pytest.raises(TypeError, match="Plan objects"):
        write_network(path, dense_graph(), {"x": {"cutoffs": []}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="metadata cannot be saved as JSON"):
        write_network(path, dense_graph(), {}, {"f": object()})
    with pytest.raises(ValueError, match="metadata cannot be saved as JSON"):
        write_network(path, dense_graph(), {}, {"nan": float("nan")})
    with pytest.raises(TypeError, match="needs a powersave Graph"):
        write_network(path, "graph")  # type: ignore[arg-type]
    assert not path.exists()


def test_write_into_missing_folder_or_onto_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_network(tmp_path / "nope" / "net", dense_graph())
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        write_network(tmp_path, dense_graph())


# -- atomic writes ---------------------------------------------------------------------------


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(_atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        write_network(tmp_path / "net", dense_graph())
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "net"
    write_network(path, dense_graph())
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        write_network(path, conv_graph())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net"]


def test_atomic_writer_exception_inside_block(tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    _atomic.write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), _atomic.atomic_writer(path, text=True) as handle:
        handle.write("half of the new")
        raise RuntimeError
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_atomic_writer_keeps_mode_of_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    _atomic.write_bytes_atomic(path, b"1")
    os.chmod(path, 0o640)
    _atomic.write_bytes_atomic(path, b"2")
    assert path.read_bytes() == b"2"
    assert path.stat().st_mode & 0o777 == 0o640


def test_atomic_writer_new_file_follows_umask(tmp_path: Path) -> None:
    path = tmp_path / "new.bin"
    _atomic.write_bytes_atomic(path, b"x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_atomic._read_umask()


# -- bad files -------------------------------------------------------------------------------


def bad(path: Path, match: str) -> None:
    with pytest.raises(NetworkFileError, match=match) as info:
        read_network(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    bad(tmp_path / "nope.safetensors", "does not exist")


def test_folder(tmp_path: Path) -> None:
    bad(tmp_path, "is a folder")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_no_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "net"
    path.write_bytes(valid_bytes())
    os.chmod(path, 0)
    bad(path, "no permission to read")


def test_no_read_permission_mocked(tmp_path: Path, monkeypatch) -> None:
    # Tests may run as root, who reads everything: simulate the refusal instead.
    path = tmp_path / "net"
    path.write_bytes(valid_bytes())

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    bad(path, "no permission to read")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "net"
    path.write_bytes(b"")
    bad(path, "is empty")


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        (5, "too short"),
        (8, "truncated: its header needs"),
        (200, "truncated: its header needs"),
        (-1, "truncated: its tensors need"),
        (-100, "truncated: its tensors need"),
    ],
)
def test_truncated_file(tmp_path: Path, keep: int, match: str) -> None:
    path = tmp_path / "net"
    path.write_bytes(valid_bytes()[:keep])
    bad(path, match)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "net"
    path.write_bytes(valid_bytes() + b"\0")
    bad(path, "bytes follow its last tensor")


def test_corrupted_header(tmp_path: Path) -> None:
    data = valid_bytes()
    path = tmp_path / "net"
    path.write_bytes(data[:8] + b"{" + b"#" * 40 + data[49:])
    bad(path, "corrupted header")


def test_corrupted_header_shape(tmp_path: Path) -> None:
    data = valid_bytes()
    start = data.index(b'"shape":[5]')
    path = tmp_path / "net"
    path.write_bytes(data[:start] + b'"shape":[6]' + data[start + 11 :])
    bad(path, "corrupted header")


def test_corrupted_tensor_bytes(tmp_path: Path) -> None:
    data = bytearray(valid_bytes())
    data[-3] ^= 0x10
    path = tmp_path / "net"
    path.write_bytes(bytes(data))
    bad(path, "checksum does not match")


def test_corrupted_graph_json_is_caught_by_checksum(tmp_path: Path) -> None:
    data = valid_bytes()
    old = b'\\"scale\\": 1.5'
    assert data.count(old) == 1
    path = tmp_path / "net"
    path.write_bytes(data.replace(old, b'\\"scale\\": 1.6'))
    bad(path, "checksum does not match")


class _Payload:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(FileNotFoundError):  # the payload works when unpickled ...
        pickle.loads(pickle.dumps(_Payload(tmp_path / "no" / "such")))
    bad(path, "not a safetensors file.*pickle")  # ... but read_network never unpickles
    assert not marker.exists()


def test_zip_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:  # the layout of torch.save
        archive.writestr("archive/data.pkl", pickle.dumps(_Payload(marker)))
    bad(path, "not a safetensors file.*zip")
    assert not marker.exists()


def test_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    bad(path, "not a safetensors file.*npy")


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\n",
        json.dumps({"format": "powersave-network"}).encode(),
        np.random.default_rng(3).bytes(1000),
        b"\x05\x00\x00\x00\x00\x00\x00\x00hello",
    ],
)
def test_not_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "net"
    path.write_bytes(content)
    bad(path, "not a safetensors file")


def test_plain_safetensors_is_not_a_network(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(path))
    bad(path, "not a powersave network: its header has no 'format'")
    safetensors.numpy.save_file({"w": np.zeros(3)}, str(path), metadata={"format": "pt"})
    bad(path, "not a powersave network: its format is 'pt'")


def test_other_format_version(tmp_path: Path) -> None:
    path = craft(tmp_path / "net", {}, format_version="2")
    bad(path, "format version '2'; this powersave reads version '1'")


def test_missing_header_entry(tmp_path: Path) -> None:
    path = tmp_path / "net"
    safetensors.numpy.save_file(
        {"w": np.zeros(1)}, str(path), metadata={"format": io.FORMAT, "format_version": "1"}
    )
    bad(path, "header lacks")


def test_invalid_graph_is_wrapped(tmp_path: Path) -> None:
    entries, tensors = graph_entries(dense_graph())
    entries[1]["fields"]["scale"] = None  # a hidden layer without a scale
    path = craft(tmp_path / "net", tensors, graph=json.dumps({"nodes": entries}))
    bad(path, "invalid graph: hidden layer 'fc1' needs a scale")


def test_invalid_node_is_wrapped(tmp_path: Path) -> None:
    entries, tensors = graph_entries(dense_graph())
    tensors["fc1.bias"] = np.zeros(2, np.float32)
    path = craft(tmp_path / "net", tensors, graph=json.dumps({"nodes": entries}))
    bad(path, "invalid graph: Dense 'fc1': bias has 2 entries")


def test_unknown_node_kind(tmp_path: Path) -> None:
    entries, tensors = graph_entries(dense_graph())
    entries[1]["kind"] = "lstm"
    path = craft(tmp_path / "net", tensors, graph=json.dumps({"nodes": entries}))
    bad(path, "unknown node kind 'lstm'; this powersave knows")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda e, t: e[1]["fields"].update(dilation=2), r"unexpected fields \['dilation'\]"),
        (lambda e, t: e[0]["fields"].update(signed="no"), "does not read back"),
        (lambda e, t: t.pop("fc2.bias"), "tensor 'fc2.bias' is missing"),
        (lambda e, t: t.update(stray=np.zeros(1)), r"tensors no node uses: \['stray'\]"),
        (lambda e, t: e[2]["fields"].pop("name"), "unexpected fields"),
        (lambda e, t: e[1].pop("arrays"), "malformed node entry"),
        (lambda e, t: e.append(e[0]), "invalid graph: node names must be unique"),
    ],
)
def test_malformed_graph_entries(tmp_path: Path, edit, match: str) -> None:
    entries, tensors = graph_entries(dense_graph())
    edit(entries, tensors)
    path = craft(tmp_path / "net", tensors, graph=json.dumps({"nodes": entries}))
    bad(path, match)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("not json", "'graph' entry is not JSON"),
        ("[1, 2]", "'graph' entry is not a JSON object"),
        ('{"nodes": 3}', "no list of nodes"),
    ],
)
def test_graph_json_not_a_graph(tmp_path: Path, entry: str, match: str) -> None:
    bad(craft(tmp_path / "net", {}, graph=entry), match)


def test_invalid_plans(tmp_path: Path) -> None:
    entries, tensors = graph_entries(dense_graph())
    graph = json.dumps({"nodes": entries})
    plans = json.dumps({"eco": {"cutoffs": [2.0]}})
    bad(craft(tmp_path / "a", tensors, graph=graph, plans=plans), "plan 'eco' is invalid")
    plans = json.dumps({"eco": Plan((0.5, 0.5, 0.5)).to_dict()})
    bad(craft(tmp_path / "b", tensors, graph=graph, plans=plans), "3 cut-offs for 2")
    bad(craft(tmp_path / "c", tensors, graph=graph, metadata="[]"), "not a JSON object")


# -- fuzzing ---------------------------------------------------------------------------------


def check_damaged(decode) -> None:
    """Reading damaged bytes either raises NetworkFileError or gives back the very same network."""
    try:
        graph, plans, metadata = decode()
    except NetworkFileError:
        return
    assert_same_graph(graph, conv_graph())
    assert_same_plans(plans, PLANS)
    assert metadata == METADATA


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    truncate=st.none() | st.integers(0, 10**6),
)
def test_fuzz_damaged_files(flips: list[tuple[int, int]], truncate: int | None) -> None:
    data = bytearray(valid_bytes())
    for position, mask in flips:
        data[position % len(data)] ^= mask
    if truncate is not None:
        data = data[: truncate % len(data)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.safetensors"
        path.write_bytes(data)
        check_damaged(lambda: read_network(path))


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_every_single_byte_flip_is_caught(mask: int) -> None:
    # 0x01 nudges digits, 0x20 turns padding spaces into NULs and changes the case of hex
    # digits, 0x80 makes invalid UTF-8.
    # In memory (read_network minus the file read): thousands of files would be slow to write.
    data = valid_bytes()
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= mask
        check_damaged(lambda d=bytes(damaged): io._decode(Path("net"), d))

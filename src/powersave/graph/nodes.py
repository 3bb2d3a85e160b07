"""Nodes of the powersave graph: frozen dataclasses of numpy arrays, checked when built.

A node describes one step of the spiking network and nothing else: no simulation code lives
here (engines, energy and export read these nodes). Shapes are per sample, without the batch
axis: ``(features,)`` for flat populations and ``(channels, height, width)`` for images.

Every *spiking population* has a scale ``A`` (> 0): a neuron of that population with activation
``a`` fires at ``ℓ + 1 - min(a, A)/A`` inside its window ``[ℓ, ℓ + 1)``. The input population's
scale lives on :class:`Input`; each hidden synaptic node (:class:`Dense`, :class:`Conv`,
:class:`AvgPool`) carries the scale of the population it produces. The readout (the last synaptic
node) produces potentials, not spikes, and has no scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from powersave.errors import GraphError

Shape = tuple[int, ...]


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise GraphError(f"{kind} node needs a non-empty name without '.' or '/', got {name!r}")


def _as_float32(kind: str, name: str, what: str, value: object, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise GraphError(f"{kind} {name!r}: {what} must be real numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise GraphError(
            f"{kind} {name!r}: {what} must have {ndim} dimensions, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise GraphError(f"{kind} {name!r}: {what} contains NaN or infinite values")
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)
    return array


def _check_scale(kind: str, name: str, scale: float | None, required: bool) -> float | None:
    if scale is None:
        if required:
            raise GraphError(f"{kind} {name!r}: a hidden layer needs a scale A > 0, got None")
        return None
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise GraphError(f"{kind} {name!r}: scale A must be finite and > 0, got {scale}")
    return scale


def _pair(kind: str, name: str, what: str, value: object) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return (int(value), int(value))
    try:
        items = tuple(int(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        raise GraphError(f"{kind} {name!r}: {what} must be an int or a pair of ints") from None
    if len(items) != 2:
        raise GraphError(f"{kind} {name!r}: {what} must be a pair, got {value!r}")
    return (items[0], items[1])


def conv_output_hw(
    hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window (floor mode)."""
    return (
        (hw[0] + 2 * padding[0] - kernel[0]) // stride[0] + 1,
        (hw[1] + 2 * padding[1] - kernel[1]) // stride[1] + 1,
    )


@dataclass(frozen=True)
class Input:
    """The input population.

    Attributes:
        name: node name.
        shape: shape of one input sample as the user passes it, e.g. ``(784,)`` or ``(1, 28, 28)``.
        scale: ``A_0``, the input intensity that fires at the window start; more saturates.
        signed: if True the input is split into ON and OFF channels, ``x = relu(x) - relu(-x)``,
            and the population has twice the channels (flat inputs: twice the features), ON first.
    """

    name: str
    shape: Shape
    scale: float
    signed: bool = False
    kind: ClassVar[str] = "input"

    def __post_init__(self) -> None:
        _check_name("Input", self.name)
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (1, 3) or any(s <= 0 for s in shape):
            raise GraphError(
                f"Input {self.name!r}: shape must be (features,) or (channels, height, width) "
                f"with positive sizes, got {self.shape}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "scale", _check_scale("Input", self.name, self.scale, True))
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def population_shape(self) -> Shape:
        """Shape of the spiking input population (channels doubled when signed)."""
        if not self.signed:
            return self.shape
        return (2 * self.shape[0], *self.shape[1:])

    def output_shape(self, input_shape: Shape | None = None) -> Shape:
        return self.population_shape


@dataclass(frozen=True)
class Dense:
    """A fully connected synaptic layer: ``z = weight @ a + bias``.

    Attributes:
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)``.
        scale: ``A`` of the population this layer produces; None for the readout.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    scale: float | None = None
    kind: ClassVar[str] = "dense"

    def __post_init__(self) -> None:
        _check_name("Dense", self.name)
        weight = _as_float32("Dense", self.name, "weight", self.weight, 2)
        bias = _as_float32("Dense", self.name, "bias", self.bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise GraphError(
                f"Dense {self.name!r}: bias has {bias.shape[0]} entries but weight has "
                f"{weight.shape[0]} output features"
            )
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "scale", _check_scale("Dense", self.name, self.scale, False))

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1 or input_shape[0] != self.weight.shape[1]:
            raise GraphError(
                f"Dense {self.name!r} expects {self.weight.shape[1]} input features, "
                f"gets a population of shape {input_shape}"
            )
        return (self.weight.shape[0],)


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution (cross-correlation, as PyTorch): ``z = conv(a, weight) + bias``.

    Attributes:
        weight: ``(out_channels, in_channels, kernel_h, kernel_w)``.
        bias: ``(out_channels,)``.
        stride, padding: pairs of ints; padding is with zeros (silent neurons).
        scale: ``A`` of the population this layer produces; None for the readout.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    scale: float | None = None
    kind: ClassVar[str] = "conv"

    def __post_init__(self) -> None:
        _check_name("Conv", self.name)
        weight = _as_float32("Conv", self.name, "weight", self.weight, 4)
        bias = _as_float32("Conv", self.name, "bias", self.bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise GraphError(
                f"Conv {self.name!r}: bias has {bias.shape[0]} entries but weight has "
                f"{weight.shape[0]} output channels"
            )
        stride = _pair("Conv", self.name, "stride", self.stride)
        padding = _pair("Conv", self.name, "padding", self.padding)
        if min(stride) < 1 or min(padding) < 0:
            raise GraphError(
                f"Conv {self.name!r}: stride must be >= 1 and padding >= 0, "
                f"got stride {stride}, padding {padding}"
            )
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)
        object.__setattr__(self, "scale", _check_scale("Conv", self.name, self.scale, False))

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3 or input_shape[0] != self.weight.shape[1]:
            raise GraphError(
                f"Conv {self.name!r} expects (channels={self.weight.shape[1]}, height, width) "
                f"inputs, gets a population of shape {input_shape}"
            )
        h, w = conv_output_hw(input_shape[1:], self.kernel, self.stride, self.padding)  # type: ignore[arg-type]
        if h < 1 or w < 1:
            raise GraphError(
                f"Conv {self.name!r}: kernel {self.kernel} does not fit input {input_shape}"
            )
        return (int(self.weight.shape[0]), h, w)


@dataclass(frozen=True)
class _Pool:
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    kind: ClassVar[str] = "pool"

    def __post_init__(self) -> None:
        label = type(self).__name__
        _check_name(label, self.name)
        kernel = _pair(label, self.name, "kernel", self.kernel)
        stride = kernel if self.stride is None else _pair(label, self.name, "stride", self.stride)
        padding = _pair(label, self.name, "padding", self.padding)
        if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
            raise GraphError(f"{label} {self.name!r}: kernel and stride must be >= 1, padding >= 0")
        if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
            raise GraphError(f"{label} {self.name!r}: padding must be at most half the kernel")
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)

    def output_shape(self, input_shape: Shape) -> Shape:
        label = type(self).__name__
        if len(input_shape) != 3:
            raise GraphError(
                f"{label} {self.name!r} needs (channels, height, width) inputs, gets {input_shape}"
            )
        h, w = conv_output_hw(input_shape[1:], self.kernel, self.stride, self.padding)  # type: ignore[arg-type]
        if h < 1 or w < 1:
            raise GraphError(f"{label} {self.name!r}: kernel does not fit input {input_shape}")
        return (input_shape[0], h, w)


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling: the first spike in the pool wins. No window of its own, no operations."""

    kind: ClassVar[str] = "maxpool"


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling, a spiking layer of fixed weights ``1/(kh*kw)`` (padding counts as zeros).

    Attributes:
        scale: ``A`` of the pooled population it produces.
    """

    scale: float | None = field(default=None)
    kind: ClassVar[str] = "avgpool"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scale", _check_scale("AvgPool", self.name, self.scale, False))


@dataclass(frozen=True)
class Flatten:
    """Reshape an image population ``(C, H, W)`` into ``(C*H*W,)`` in C order. Free."""

    name: str
    kind: ClassVar[str] = "flatten"

    def __post_init__(self) -> None:
        _check_name("Flatten", self.name)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (int(np.prod(input_shape)),)


Node = Input | Dense | Conv | MaxPool | AvgPool | Flatten
Synaptic = Dense | Conv | AvgPool
SYNAPTIC_TYPES = (Dense, Conv, AvgPool)

#: One registry of node kinds, used by saving and loading alike.
NODE_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Input, Dense, Conv, MaxPool, AvgPool, Flatten)
}

"""Read a PyTorch model as a plain chain of operations, refusing what a spike code cannot carry.

The result is a list of :class:`Op`: one per step that matters for the graph (Linear, Conv2d,
BatchNorm, ReLU, pooling, Flatten), in execution order, with the module's qualified name for
graph node names and error messages. Dropout and Identity are dropped here (no-ops at
inference). Whether the ops are in an order the time code can carry is decided later
(:mod:`powersave.frontend.convert`); this module refuses what is wrong wherever it stands.

An ``nn.Sequential`` (nested ones flattened) is read child by child; any other module is traced
with ``torch.fx``, whose graph must be a chain: each step consumes the previous step's output
and nothing else.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from powersave.errors import ConversionError

OpKind = Literal["linear", "conv", "batchnorm", "relu", "maxpool", "avgpool", "flatten"]


@dataclass(frozen=True)
class Op:
    """One step of the chain.

    Attributes:
        kind: what the step does.
        name: qualified name in the model, e.g. ``"features.3"`` (fx function calls: the fx
            node's name, prefixed with the enclosing module's path).
        label: how errors name it, e.g. ``"features.3 (Conv2d)"``.
        module: the module (a pooling module is built for ``F.max_pool2d`` calls); None for
            ReLU and Flatten.
    """

    kind: OpKind
    name: str
    label: str
    module: nn.Module | None = None


# -- modules ---------------------------------------------------------------------------------

_SKIPPED: tuple[type[nn.Module], ...] = (nn.Identity, nn.modules.dropout._DropoutNd)

_NOT_RELU = "is not a ReLU: a negative output cannot be coded by a spike delay"
_SATURATES = (
    "saturates and is not a ReLU: the time code carries only ReLU activations "
    "(silence for a <= 0, an earlier spike for a larger a)"
)
_NEG_SLOPE = (
    "has a negative slope, which cannot be coded by a spike delay (a neuron with a <= 0 is silent)"
)
_SOFTMAX = (
    "normalises across neurons, which a spike code cannot do neuron by neuron; remove it: "
    "the readout's potentials are the logits and give the same predicted class"
)
_SAMPLE_NORM = (
    "normalises each sample with its own statistics, which cannot be folded into a layer's "
    "weights; use BatchNorm (folded at conversion) or none"
)

#: Why a known module type is refused (the message follows "<name> (<Type>): <Type> ").
_REFUSED_MODULES: dict[type[nn.Module], str] = {
    nn.GELU: _NOT_RELU,
    nn.SiLU: _NOT_RELU,
    nn.Mish: _NOT_RELU,
    nn.Hardswish: _NOT_RELU,
    nn.ELU: _NOT_RELU,
    nn.SELU: _NOT_RELU,
    nn.CELU: _NOT_RELU,
    nn.Softplus: "is a smooth ReLU, not a ReLU: its small positive outputs for a < 0 "
    "cannot be coded by a spike delay",
    nn.LeakyReLU: _NEG_SLOPE,
    nn.PReLU: _NEG_SLOPE,
    nn.RReLU: _NEG_SLOPE,
    nn.ReLU6: "clips at 6, which is not a plain ReLU: the time code saturates at each layer's "
    "calibrated scale instead; use nn.ReLU",
    nn.Hardtanh: "clips at both ends and is not a ReLU; use nn.ReLU",
    nn.Sigmoid: _SATURATES,
    nn.Hardsigmoid: _SATURATES,
    nn.Tanh: _SATURATES,
    nn.Softsign: _SATURATES,
    nn.LogSigmoid: _SATURATES,
    nn.Tanhshrink: _NOT_RELU,
    nn.Softmax: _SOFTMAX,
    nn.LogSoftmax: _SOFTMAX,
    nn.Softmin: _SOFTMAX,
    nn.Softmax2d: _SOFTMAX,
    nn.LayerNorm: _SAMPLE_NORM,
    nn.GroupNorm: _SAMPLE_NORM,
    nn.InstanceNorm1d: _SAMPLE_NORM,
    nn.InstanceNorm2d: _SAMPLE_NORM,
    nn.LocalResponseNorm: _SAMPLE_NORM,
    nn.Conv1d: "is not supported: only 2-D convolutions (nn.Conv2d) are",
    nn.Conv3d: "is not supported: only 2-D convolutions (nn.Conv2d) are",
    nn.ConvTranspose1d: "(a transposed convolution) is not supported",
    nn.ConvTranspose2d: "(a transposed convolution) is not supported",
    nn.AdaptiveAvgPool2d: "is not supported: use nn.AvgPool2d with a fixed kernel",
    nn.AdaptiveMaxPool2d: "is not supported: use nn.MaxPool2d with a fixed kernel",
    nn.MaxPool1d: "is not supported: only 2-D pooling (nn.MaxPool2d) is",
    nn.AvgPool1d: "is not supported: only 2-D pooling (nn.AvgPool2d) is",
    nn.Bilinear: "multiplies two inputs, which is not a chain of Linear layers",
    nn.MultiheadAttention: "is not supported: attention multiplies activations together",
}

_SUPPORTED = (
    "supported layers are Linear, Conv2d, ReLU, BatchNorm1d/2d, AvgPool2d, MaxPool2d, "
    "Flatten, Dropout and Identity"
)


def as_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def _refuse(label: str, why: str) -> ConversionError:
    return ConversionError(f"{label}: {why}")


def _check_conv(label: str, conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise _refuse(label, f"grouped convolutions (groups={conv.groups}) are not supported")
    if as_pair(conv.dilation) != (1, 1):
        raise _refuse(label, f"dilated convolutions (dilation={conv.dilation}) are not supported")
    if conv.padding_mode != "zeros":
        raise _refuse(
            label,
            f"padding_mode={conv.padding_mode!r} is not supported: padding must be zeros "
            "(neurons that never fire)",
        )
    if conv.padding == "same" and any(k % 2 == 0 for k in as_pair(conv.kernel_size)):
        raise _refuse(
            label,
            f"padding='same' with an even kernel {conv.kernel_size} pads unevenly, which is "
            "not supported: use an odd kernel or explicit padding",
        )


def _check_maxpool(label: str, pool: nn.MaxPool2d) -> None:
    if as_pair(pool.dilation) != (1, 1):
        raise _refuse(label, f"dilation={pool.dilation} is not supported, only 1")
    if pool.ceil_mode:
        raise _refuse(label, "ceil_mode=True is not supported: use ceil_mode=False")
    if pool.return_indices:
        raise _refuse(label, "return_indices=True is not supported")


def _check_avgpool(label: str, pool: nn.AvgPool2d) -> None:
    if pool.ceil_mode:
        raise _refuse(label, "ceil_mode=True is not supported: use ceil_mode=False")
    if pool.divisor_override is not None:
        raise _refuse(
            label, f"divisor_override={pool.divisor_override} is not supported: leave it None"
        )
    if not pool.count_include_pad and as_pair(pool.padding) != (0, 0):
        raise _refuse(
            label,
            "count_include_pad=False with padding changes the divisor at the borders, which is "
            "not supported: use count_include_pad=True (padding counts as silent neurons)",
        )


def _check_batchnorm(label: str, bn: nn.modules.batchnorm._BatchNorm) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise _refuse(
            label,
            "has no running statistics (track_running_stats=False), so it normalises with "
            "each batch's statistics at inference, which cannot be folded into a layer",
        )


def _flatten_dims_ok(module: nn.Flatten) -> bool:
    return module.start_dim == 1 and module.end_dim == -1


def module_op(name: str, module: nn.Module) -> Op | None:
    """The op of one leaf module, None for a no-op (Dropout, Identity); refuse anything else."""
    kind_name = type(module).__name__
    label = f"{name} ({kind_name})"
    if isinstance(module, _SKIPPED):
        return None
    if isinstance(module, nn.Linear):
        return Op("linear", name, label, module)
    if isinstance(module, nn.Conv2d):
        _check_conv(label, module)
        return Op("conv", name, label, module)
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        _check_batchnorm(label, module)
        return Op("batchnorm", name, label, module)
    if isinstance(module, nn.ReLU):
        return Op("relu", name, label)
    if isinstance(module, nn.MaxPool2d):
        _check_maxpool(label, module)
        return Op("maxpool", name, label, module)
    if isinstance(module, nn.AvgPool2d):
        _check_avgpool(label, module)
        return Op("avgpool", name, label, module)
    if isinstance(module, nn.Flatten):
        if not _flatten_dims_ok(module):
            raise _refuse(
                label,
                f"only Flatten(start_dim=1, end_dim=-1) is supported, got start_dim="
                f"{module.start_dim}, end_dim={module.end_dim}",
            )
        return Op("flatten", name, label)
    for refused, why in _REFUSED_MODULES.items():
        if isinstance(module, refused):
            raise _refuse(label, f"{kind_name} {why}")
    raise _refuse(label, f"{kind_name} is not supported ({_SUPPORTED})")


# -- walking a model ---------------------------------------------------------------------------


def _is_leaf(module: nn.Module) -> bool:
    """Modules read as one op: known types, and anything from torch.nn that is not a container."""
    if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        return False
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, *_SKIPPED)):
        return True
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.MaxPool2d | nn.AvgPool2d):
        return True
    return type(module).__module__.startswith("torch.nn")


def chain_ops(model: nn.Module) -> list[Op]:
    """The model's ops in execution order; raises :class:`ConversionError` on anything refused."""
    return list(_walk(model, ""))


def _walk(module: nn.Module, name: str) -> Iterator[Op]:
    # A Sequential subclass with its own forward is traced like any other module.
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for child_name, child in module.named_children():
            yield from _walk(child, f"{name}.{child_name}" if name else child_name)
    elif _is_leaf(module):
        # A bare layer given as the whole model has no qualified name: use its type instead.
        op = module_op(name or type(module).__name__.lower(), module)
        if op is not None:
            yield op
    else:
        yield from _FxChain(module, name).ops()


class _LeafTracer(fx.Tracer):
    """Keeps supported layers whole even when subclassed outside torch.nn (a user's Linear)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m)


# fx targets, by what they do.
_RELU_FUNCS: set[Any] = {F.relu, torch.relu, torch.relu_, F.relu_}
_FLATTEN_FUNCS: set[Any] = {torch.flatten}
_RESHAPE_FUNCS: set[Any] = {torch.reshape}
_MAXPOOL_FUNCS: set[Any] = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL_FUNCS: set[Any] = {F.avg_pool2d}
_DROPOUT_FUNCS: set[Any] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}
_ADD_FUNCS: set[Any] = {operator.add, operator.iadd, torch.add}
_CONCAT_FUNCS: set[Any] = {torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack}
_SOFTMAX_FUNCS: set[Any] = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.softmin}

_FUNC_REASONS: dict[Any, str] = {
    F.gelu: f"GELU {_NOT_RELU}",
    F.silu: f"SiLU {_NOT_RELU}",
    F.elu: f"ELU {_NOT_RELU}",
    F.selu: f"SELU {_NOT_RELU}",
    F.leaky_relu: f"LeakyReLU {_NEG_SLOPE}",
    F.relu6: "ReLU6 clips at 6, which is not a plain ReLU; use F.relu",
    torch.sigmoid: f"Sigmoid {_SATURATES}",
    F.sigmoid: f"Sigmoid {_SATURATES}",
    torch.tanh: f"Tanh {_SATURATES}",
    F.tanh: f"Tanh {_SATURATES}",
}
_METHOD_REASONS: dict[str, str] = {
    "sigmoid": f"Sigmoid {_SATURATES}",
    "tanh": f"Tanh {_SATURATES}",
    "softmax": f"softmax {_SOFTMAX}",
    "log_softmax": f"log_softmax {_SOFTMAX}",
    "add": "residual additions are not supported yet: the graph is a chain of layers",
    "add_": "residual additions are not supported yet: the graph is a chain of layers",
}
_NO_OP_METHODS = {"contiguous", "clone", "detach"}


def _target_name(node: fx.Node) -> str:
    """How users write the target: ``torch.cat``, ``torch.nn.functional.gelu``, ``Tensor.view``."""
    target = node.target
    if isinstance(target, str):
        return f"Tensor.{target}" if node.op == "call_method" else target
    name = getattr(target, "__name__", None)
    if name:
        for prefix, namespace in (
            ("torch.nn.functional", F),
            ("torch", torch),
            ("operator", operator),
        ):
            if getattr(namespace, name, None) is target:
                return f"{prefix}.{name}"
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or name or repr(target)
    return f"{module}.{qualname}" if module else qualname


def _module_path(node: fx.Node) -> str:
    """Qualified name of the innermost module whose forward made ``node`` ('' at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


class _FxChain:
    """Walk an fx graph that must be a chain; produce ops (refusing what is not)."""

    def __init__(self, module: nn.Module, prefix: str) -> None:
        self.module = module
        self.prefix = prefix
        label = f"{prefix} ({type(module).__name__})" if prefix else type(module).__name__
        try:
            self.graph_module = fx.GraphModule(module, _LeafTracer().trace(module))
        except Exception as error:  # fx raises many kinds (TraceError, TypeError, ...)
            raise ConversionError(
                f"{label}: its forward cannot be traced with torch.fx ({error}); write the "
                "model as an nn.Sequential of supported layers"
            ) from error
        # Unused values (a flatten computed and never used) would look like branches.
        self.graph_module.graph.eliminate_dead_code()
        self.label = label
        self.shape_queries: set[fx.Node] = set()

    def _qualify(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _node_label(self, node: fx.Node) -> tuple[str, str]:
        if node.op == "call_module":
            name = self._qualify(str(node.target))
            return name, f"{name} ({type(self.module.get_submodule(str(node.target))).__name__})"
        path = _module_path(node)
        name = self._qualify(f"{path}.{node.name}" if path else node.name)
        return name, f"{name} ({_target_name(node)})"

    def ops(self) -> Iterator[Op]:
        nodes = list(self.graph_module.graph.nodes)
        # Known refusals first, wherever they stand: "residual additions are not supported"
        # says more than "this layer's input is used twice".
        for node in nodes:
            if node.op in ("call_function", "call_method"):
                self._refuse_known(node, self._node_label(node)[1])
        current: fx.Node | None = None
        for node in nodes:
            if node.op == "placeholder":
                if current is not None and node.users:
                    raise ConversionError(
                        f"{self.label}: forward takes more than one input ({node.name!r}); "
                        "only models of one tensor are supported"
                    )
                if current is None:
                    current = node
                continue
            name, label = self._node_label(node)
            if node.op == "get_attr":
                raise _refuse(
                    label,
                    f"forward reads {node.target!r} directly (a functional layer or a "
                    "constant); use nn.Linear / nn.Conv2d modules so their weights can be read",
                )
            if node.op == "output":
                if node.args[0] is not current:
                    raise ConversionError(
                        f"{self.label}: forward must return the output of its last layer as "
                        f"one tensor, it returns {node.args[0]!r}"
                    )
                continue
            if self._is_shape_query(node):
                self.shape_queries.add(node)
                continue
            # Each step must read the previous step's output and nothing else; a value read
            # twice is read the second time when it is no longer the latest, so this also
            # catches branches.
            inputs = [n for n in node.all_input_nodes if n not in self.shape_queries]
            if inputs != [current]:
                raise _refuse(label, self._branch_reason(node, inputs, current))
            op = self._op(node, name, label)
            if op is not None:
                yield op
            current = node

    def _is_shape_query(self, node: fx.Node) -> bool:
        if node.op == "call_method" and node.target in ("size", "dim"):
            return True
        if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
            return True
        return (
            node.op == "call_function"
            and node.target is operator.getitem
            and node.args[0] in self.shape_queries
        )

    def _branch_reason(self, node: fx.Node, inputs: list[fx.Node], current: fx.Node | None) -> str:
        if len(inputs) > 1:
            return (
                f"combines the outputs of {[n.name for n in inputs]}: residual connections and "
                "merges are not supported yet (the graph is a chain)"
            )
        if not inputs:
            return "does not read the previous step's output (a constant?); it is not supported"
        return (
            f"reads {inputs[0].name!r}, not the previous step "
            f"{getattr(current, 'name', None)!r}: branches are not supported (a chain only)"
        )

    def _refuse_known(self, node: fx.Node, label: str) -> None:
        target = node.target
        if node.op == "call_function":
            if target in _ADD_FUNCS:
                if sum(isinstance(a, fx.Node) for a in node.args) >= 2:
                    raise _refuse(
                        label, "residual additions are not supported yet (the graph is a chain)"
                    )
                raise _refuse(
                    label,
                    "adding a constant is not supported: fold it into the preceding layer's bias",
                )
            if target in _CONCAT_FUNCS:
                raise _refuse(label, "concatenation is not supported (the graph is a chain)")
            if target in _SOFTMAX_FUNCS:
                raise _refuse(label, f"softmax {_SOFTMAX}")
            if target in _FUNC_REASONS:
                raise _refuse(label, _FUNC_REASONS[target])
        elif node.op == "call_method" and target in _METHOD_REASONS:
            raise _refuse(label, _METHOD_REASONS[str(target)])

    def _op(self, node: fx.Node, name: str, label: str) -> Op | None:
        target = node.target
        if node.op == "call_module":
            return module_op(name, self.module.get_submodule(str(target)))
        if node.op == "call_function":
            return self._function_op(node, name, label)
        if node.op == "call_method":
            if target in ("relu", "relu_"):
                return Op("relu", name, label)
            if target == "flatten":
                return self._flatten(node, name, label, node.args[1:], node.kwargs)
            if target in ("view", "reshape"):
                return self._reshape(node, name, label, node.args[1:])
            if target in _NO_OP_METHODS:
                return None
        raise _refuse(label, f"{_target_name(node)} is not supported ({_SUPPORTED})")

    def _function_op(self, node: fx.Node, name: str, label: str) -> Op | None:
        target = node.target
        if target in _RELU_FUNCS:
            return Op("relu", name, label)
        if target in _FLATTEN_FUNCS:
            return self._flatten(node, name, label, node.args[1:], node.kwargs)
        if target in _RESHAPE_FUNCS:
            shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")
            return self._reshape(node, name, label, shape)  # type: ignore[arg-type]
        if target in _DROPOUT_FUNCS:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            if training is not False:
                raise _refuse(
                    label,
                    "dropout with training=True drops activations at inference too; pass "
                    "training=self.training",
                )
            return None
        if target in _MAXPOOL_FUNCS:
            pool = _build_pool(nn.MaxPool2d, _MAXPOOL_ARGS, node, label)
            _check_maxpool(label, pool)  # type: ignore[arg-type]
            return Op("maxpool", name, label, pool)
        if target in _AVGPOOL_FUNCS:
            pool = _build_pool(nn.AvgPool2d, _AVGPOOL_ARGS, node, label)
            _check_avgpool(label, pool)  # type: ignore[arg-type]
            return Op("avgpool", name, label, pool)
        raise _refuse(label, f"{_target_name(node)} is not supported ({_SUPPORTED})")

    def _flatten(
        self, node: fx.Node, name: str, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Op:
        start = kwargs.get("start_dim", args[0] if args else 0)
        end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        if start != 1 or end != -1:
            raise _refuse(
                label,
                f"only flatten(x, 1) (start_dim=1, end_dim=-1) keeps the batch axis and is "
                f"supported, got start_dim={start}, end_dim={end}",
            )
        return Op("flatten", name, label)

    def _reshape(self, node: fx.Node, name: str, label: str, shape: Any) -> Op:
        # view/reshape may take sizes as varargs or as one tuple.
        sizes = tuple(shape)
        if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
            sizes = tuple(sizes[0])
        batch_ok = len(sizes) == 2 and (sizes[0] in self.shape_queries or sizes[0] == -1)
        if not batch_ok or not (sizes[1] == -1 or isinstance(sizes[1], int)):
            raise _refuse(
                label,
                "only a reshape that flattens each sample is supported, such as "
                "x.view(x.size(0), -1); use torch.flatten(x, 1)",
            )
        return Op("flatten", name, label)


_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = (
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


def _build_pool(
    cls: Callable[..., nn.Module], names: tuple[str, ...], node: fx.Node, label: str
) -> nn.Module:
    """The pooling module equivalent to a functional call (positional args mapped by name)."""
    kwargs = dict(zip(names, node.args[1:], strict=False))
    kwargs.update(node.kwargs)
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        raise _refuse(label, "pooling parameters must be constants")
    return cls(**kwargs)

"""Conversion from PyTorch: the graph's dense pass equals the model, scales, and every refusal.

Equivalence tolerance: float32 on both sides with different summation orders (and BatchNorm
folded in float64 then rounded), so logits must agree to ``rtol=1e-4`` and
``atol=1e-4 * max|logits|``; predictions must agree on every sample whose top-two logits are
further apart than that tolerance (closer ones are ties within rounding).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from powersave.engine.dense import forward
from powersave.errors import ConversionError
from powersave.frontend import convert_to_graph
from powersave.graph import AvgPool, Conv, Dense, Flatten, Graph, Input, MaxPool

RTOL = 1e-4

PROPERTY = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x))
    return out.reshape(len(x), -1).numpy()


def assert_equivalent(model: nn.Module, graph: Graph, x: np.ndarray) -> None:
    """Graph logits equal the model's to float32 tolerance; same predictions off near-ties."""
    expected = torch_logits(model, x)
    got = forward(graph, x).logits
    assert got.shape == expected.shape
    atol = RTOL * max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=atol)
    if expected.shape[1] > 1:
        top2 = np.sort(expected, axis=1)[:, -2:]
        tie = top2[:, 1] - top2[:, 0] <= 2 * atol
        assert np.all((got.argmax(1) == expected.argmax(1)) | tie)


def assert_scales_are_max(graph: Graph, x: np.ndarray) -> None:
    """percentile=None: no activation above its scale, and the scale is the largest one."""
    run = forward(graph, x)
    for population, a in zip(graph.populations, run.activations, strict=True):
        peak = float(a.max())
        assert np.all(a <= population.scale)
        assert population.scale == pytest.approx(peak if peak > 0 else 1.0, rel=1e-6)


def randomize_batchnorm(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=gen))
            bn.bias.copy_(torch.randn(n, generator=gen) * 0.5)


def inputs(seed: int, shape: tuple[int, ...], signed: bool, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if signed:
        return rng.standard_normal((n, *shape)).astype(np.float32)
    return rng.random((n, *shape), dtype=np.float32)


def build(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with its initialisation seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
        # Layers made before this call (while hypothesis drew them) are re-initialised here.
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            randomize_batchnorm(module, gen)
    return model.eval()


# -- equivalence on random networks ------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_random_mlps_equal_the_model(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    features = data.draw(st.integers(1, 12), label="features")
    signed = data.draw(st.booleans(), label="signed")
    hidden = data.draw(st.lists(st.integers(1, 16), max_size=3), label="hidden")
    extras = data.draw(
        st.lists(st.sampled_from(["bn", "dropout", "identity", "none"]), min_size=3, max_size=3)
    )
    classes = data.draw(st.integers(1, 5), label="classes")

    def make() -> nn.Module:
        layers: list[nn.Module] = []
        n = features
        for width, extra in zip(hidden, extras, strict=False):
            layers.append(nn.Linear(n, width))
            if extra == "bn":
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if extra == "dropout":
                layers.append(nn.Dropout(0.5))
            if extra == "identity":
                layers.append(nn.Identity())
            n = width
        layers.append(nn.Linear(n, classes))
        return nn.Sequential(*layers)

    model = build(seed, make)
    x = inputs(seed, (features,), signed)
    graph = convert_to_graph(model, x)
    assert graph.input.signed == signed
    assert graph.input.shape == (features,)
    assert_equivalent(model, graph, x)
    assert_scales_are_max(graph, x)
    # Fresh data (not the calibration set) too: the compiled weights, not the scales, decide.
    assert_equivalent(model, graph, inputs(seed + 1, (features,), signed))


def _pool(kind: str, kernel: int, stride: int, padding: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(kernel, stride, padding)
    return nn.AvgPool2d(kernel, stride, padding)


@PROPERTY
@given(data=st.data())
def test_random_cnns_equal_the_model(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    channels = data.draw(st.integers(1, 3), label="channels")
    h0, w0 = data.draw(st.integers(4, 11), label="h"), data.draw(st.integers(4, 11), label="w")
    signed = data.draw(st.booleans(), label="signed")
    layers: list[nn.Module] = []
    c, h, w = channels, h0, w0
    if data.draw(st.booleans(), label="avgpool on the input"):
        layers.append(nn.AvgPool2d(2, 1))  # also on a signed input: ON and OFF pooled apart
        h, w = h - 1, w - 1
    for _ in range(data.draw(st.integers(1, 2), label="convs")):
        out = data.draw(st.integers(1, 5), label="out channels")
        k = data.draw(st.integers(1, min(3, h, w)), label="kernel")
        stride = data.draw(st.integers(1, 2), label="stride")
        pad = data.draw(st.integers(0, k // 2), label="padding")
        layers.append(nn.Conv2d(c, out, k, stride, pad, bias=data.draw(st.booleans())))
        h, w, c = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1, out
        if data.draw(st.booleans(), label="bn"):
            layers.append(nn.BatchNorm2d(c))
        order = data.draw(st.sampled_from(["relu", "max-relu", "relu-max", "relu-avg"]))
        pool = None
        if order != "relu" and min(h, w) >= 2:
            ps = data.draw(st.integers(1, 2), label="pool stride")
            pp = data.draw(st.integers(0, 1), label="pool padding")
            pool = _pool("avg" if order == "relu-avg" else "max", 2, ps, pp)
            h, w = (h + 2 * pp - 2) // ps + 1, (w + 2 * pp - 2) // ps + 1
        if pool is not None and order == "max-relu":
            layers.append(pool)  # MaxPool between the Conv and its ReLU: reordered
        layers.append(nn.ReLU())
        if pool is not None and order != "max-relu":
            layers.append(pool)
        if data.draw(st.booleans(), label="dropout"):
            layers.append(nn.Dropout2d(0.3))
    readout = data.draw(st.sampled_from(["linear", "hidden-linear", "conv"]), label="readout")
    classes = data.draw(st.integers(1, 4), label="classes")
    if readout == "conv":
        layers += [nn.Conv2d(c, classes, 1), nn.Flatten()]
    else:
        layers.append(nn.Flatten())
        n = c * h * w
        if readout == "hidden-linear":
            layers += [nn.Linear(n, 8), nn.BatchNorm1d(8), nn.ReLU()]
            n = 8
        layers.append(nn.Linear(n, classes))
    model = build(seed, lambda: nn.Sequential(*layers))
    x = inputs(seed, (channels, h0, w0), signed, n=16)
    graph = convert_to_graph(model, x)
    assert graph.input.signed == signed
    assert graph.input.shape == (channels, h0, w0)
    assert_equivalent(model, graph, x)
    assert_scales_are_max(graph, x)


# -- particular structures ---------------------------------------------------------------------


def test_graph_layout_and_names() -> None:
    model = build(
        0,
        lambda: nn.Sequential(
            OrderedDict(
                features=nn.Sequential(
                    nn.Conv2d(1, 4, 3, padding=1),
                    nn.BatchNorm2d(4),
                    nn.MaxPool2d(2),  # before the ReLU: moves after it
                    nn.ReLU(),
                    nn.Dropout(0.2),
                    nn.Conv2d(4, 6, 3, padding="same"),
                    nn.ReLU(),
                    nn.AvgPool2d(2),
                ),
                flatten=nn.Flatten(),
                head=nn.Sequential(nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Identity()),
                out=nn.Linear(5, 3),
            )
        ),
    )
    x = inputs(0, (1, 8, 8), signed=False)
    graph = convert_to_graph(model, x)
    kinds = [(type(n).__name__, n.name) for n in graph.nodes]
    assert kinds == [
        ("Input", "input"),
        ("Conv", "features_0"),
        ("MaxPool", "features_2"),
        ("Conv", "features_5"),
        ("AvgPool", "features_7"),
        ("Flatten", "flatten"),
        ("Dense", "head_0"),
        ("Dense", "out"),
    ]
    assert [p.source for p in graph.populations] == [
        "input",
        "features_0",
        "features_5",
        "features_7",
        "head_0",
    ]
    assert graph.readout.name == "out" and graph.readout.scale is None
    conv = graph.node("features_5")
    assert isinstance(conv, Conv) and conv.padding == (1, 1)
    assert_equivalent(model, graph, x)
    assert_scales_are_max(graph, x)


def test_signed_image_into_linear_doubles_weights_on_then_off() -> None:
    model = build(
        1, lambda: nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.ReLU(), nn.Linear(4, 2))
    )
    x = inputs(1, (2, 3, 3), signed=True)
    graph = convert_to_graph(model, x)
    assert graph.input.signed and graph.input.population_shape == (4, 3, 3)
    first = graph.nodes[2]
    assert isinstance(first, Dense)
    w = model[1].weight.detach().numpy()
    np.testing.assert_array_equal(first.weight, np.concatenate([w, -w], axis=1))
    assert graph.input.scale == pytest.approx(float(np.abs(x).max()))
    assert_equivalent(model, graph, x)


def test_signed_conv_input_and_explicit_signed_on_positive_data() -> None:
    model = build(
        2,
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)),
    )
    x = inputs(2, (2, 6, 6), signed=False)
    graph = convert_to_graph(model, x, signed=True)  # the OFF half never fires, still exact
    conv = graph.nodes[1]
    assert isinstance(conv, Conv) and conv.weight.shape == (3, 4, 3, 3)
    assert_equivalent(model, graph, x)
    assert_equivalent(model, graph, inputs(3, (2, 6, 6), signed=True))
    assert not convert_to_graph(model, x).input.signed  # auto: no negative values


def test_single_linear_model_and_conv_readout() -> None:
    linear = build(3, lambda: nn.Linear(5, 3))
    x = inputs(3, (5,), signed=True)
    graph = convert_to_graph(linear, x)
    assert [type(n) for n in graph.nodes] == [Input, Dense]
    assert_equivalent(linear, graph, x)

    conv = build(4, lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 4)))
    x = inputs(4, (1, 6, 6), signed=False)
    graph = convert_to_graph(conv, x)
    assert graph.n_classes == 3
    assert_equivalent(conv, graph, x)


def test_batchnorm_without_affine_linear_without_bias_and_on_the_readout() -> None:
    model = build(
        5,
        lambda: nn.Sequential(
            nn.Linear(6, 7, bias=False),
            nn.BatchNorm1d(7, affine=False),
            nn.ReLU(),
            nn.Linear(7, 3),
            nn.BatchNorm1d(3),  # folded into the readout
        ),
    )
    x = inputs(5, (6,), signed=False)
    graph = convert_to_graph(model, x)
    assert [type(n) for n in graph.nodes] == [Input, Dense, Dense]
    assert_equivalent(model, graph, x)


def test_max_pool_on_an_unsigned_input() -> None:
    model = build(14, lambda: nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), nn.Flatten()))
    x = inputs(14, (2, 8, 8), signed=False)
    graph = convert_to_graph(model, x)
    assert [type(n) for n in graph.nodes] == [Input, MaxPool, Conv, Flatten]
    assert_equivalent(model, graph, x)


def test_model_is_not_modified() -> None:
    model = build(
        6,
        lambda: nn.Sequential(
            nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)
        ),
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = inputs(6, (4,), signed=False)
    graph = convert_to_graph(model, x)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The conversion used eval mode (running statistics, no dropout).
    assert_equivalent(model.eval(), graph, x)


def test_accepts_torch_tensors_integers_and_float64_models() -> None:
    model = build(7, lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))).double()
    x = torch.tensor([[0, 1, 2], [3, 1, 0]], dtype=torch.int64)
    graph = convert_to_graph(model, x)
    assert graph.input.shape == (3,) and graph.input.scale == 3.0
    assert_equivalent(model.float(), graph, x.numpy().astype(np.float32))
    assert convert_to_graph(model, x.float().requires_grad_()).input.scale == 3.0


# -- scales ------------------------------------------------------------------------------------


def test_percentile_scales() -> None:
    model = build(8, lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)))
    x = inputs(8, (6,), signed=True, n=200)
    full = convert_to_graph(model, x)
    clipped = convert_to_graph(model, x, percentile=90)
    run = forward(full, x)
    for p_full, p_clip, a in zip(
        full.populations, clipped.populations, run.activations, strict=True
    ):
        positive = a[a > 0]
        assert p_clip.scale == pytest.approx(float(np.percentile(positive, 90)), rel=1e-6)
        assert p_clip.scale < p_full.scale
    assert convert_to_graph(model, x, percentile=100).populations[1].scale == pytest.approx(
        full.populations[1].scale
    )
    # Scales do not change the dense pass: the logits are still the model's.
    assert_equivalent(model, clipped, x)


def test_population_that_never_fires_gets_scale_one() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    x = inputs(9, (3,), signed=False)
    for percentile in (None, 50.0):
        graph = convert_to_graph(model, x, percentile=percentile)
        assert graph.populations[1].scale == 1.0
    zeros = np.zeros((4, 3), np.float32)
    assert convert_to_graph(model, zeros).input.scale == 1.0


# -- fx-traced modules -------------------------------------------------------------------------


class ClassicNet(nn.Module):
    """The shape of PyTorch's MNIST example, with functional ReLU, pooling and flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 2)  # pooled before its ReLU
        x = torch.relu(x)
        x = torch.flatten(self.dropout(x), 1)
        x = self.fc1(x).relu()
        x = F.dropout(x, 0.5, training=self.training)
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(F.relu(self.body(x)), 2)
        return y.view(y.size(0), -1)


def test_fx_traced_modules_convert() -> None:
    model = build(10, ClassicNet)
    x = inputs(10, (1, 12, 12), signed=False)
    graph = convert_to_graph(model, x)
    names = [n.name for n in graph.nodes]
    assert names == ["input", "conv1", "conv2", "max_pool2d", "flatten", "fc1", "fc2"]
    assert isinstance(graph.nodes[3], MaxPool)
    assert_equivalent(model, graph, x)

    # A custom module inside a Sequential is traced too; its names are qualified.
    nested = build(11, lambda: nn.Sequential(Block(), nn.Linear(3 * 4 * 4, 2)))
    x = inputs(11, (1, 8, 8), signed=False)
    graph = convert_to_graph(nested, x)
    assert [n.name for n in graph.nodes] == ["input", "0_body_0", "0_avg_pool2d", "0_view", "1"]
    assert isinstance(graph.nodes[2], AvgPool) and isinstance(graph.nodes[3], Flatten)
    assert_equivalent(nested, graph, x)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.fc1(x))
        return self.fc2(x + y)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x, F.relu(x)], dim=1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) * self.a(x)


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        return self.b(x) - 0 * h.sum()


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


def _fx(
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[], nn.Module]:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(activation(self.fc1(x)))

    return Net


FX_REFUSALS = [
    (Residual, r"^add \(operator\.add\): residual additions are not supported yet"),
    (Concat, r"^cat \(torch\.cat\): concatenation is not supported"),
    (TwoHeads, r"^a \(Linear\): reads 'x', not the previous step 'b': branches are not"),
    (Branch, r"reads 'x', not the previous step"),
    (Functional, r"^weight \(.*\): forward reads 'weight' directly"),
    (DataDependent, r"^DataDependent: its forward cannot be traced with torch\.fx"),
    (TwoOutputs, r"^TwoOutputs: forward must return the output of its last layer as one tensor"),
    (_fx(F.gelu), r"^gelu \(torch\.nn\.functional\.gelu\): GELU is not a ReLU"),
    (_fx(lambda x: x.sigmoid()), r"^sigmoid \(Tensor\.sigmoid\): Sigmoid saturates"),
    (
        _fx(F.leaky_relu),
        r"^leaky_relu \(torch\.nn\.functional\.leaky_relu\): LeakyReLU has a negative slope",
    ),
    (_fx(lambda x: x + 1), r"^add \(operator\.add\): adding a constant is not supported"),
    (_fx(lambda x: F.dropout(x, 0.5)), r"dropout with training=True drops activations"),
    (_fx(lambda x: torch.flatten(x, 0)), r"only flatten\(x, 1\)"),
    (_fx(lambda x: x.view(2, -1)), r"only a reshape that flattens each sample"),
    (_fx(lambda x: x * 2), r"^mul \(operator\.mul\): .*mul is not supported"),
]


@pytest.mark.parametrize(("make", "message"), FX_REFUSALS)
def test_fx_refusals_name_the_step_and_say_why(make: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert_to_graph(make(), inputs(0, (4,), signed=False))


def test_softmax_in_a_traced_module_is_refused() -> None:
    with pytest.raises(ConversionError, match=r"log_softmax .*: softmax normalises"):
        convert_to_graph(_fx(lambda x: F.log_softmax(x, 1))(), inputs(0, (4,), signed=False))


# -- refusals of Sequential models -------------------------------------------------------------


def seq(*layers: nn.Module) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers)


FLAT = [nn.Linear(4, 4)]
IMAGE = (2, 6, 6)

REFUSALS: list[tuple[Callable[[], nn.Module], tuple[int, ...], bool, str]] = [
    (
        seq(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(GELU\): GELU is not a ReLU: a negative output cannot be coded by a spike delay",
    ),
    (
        lambda: nn.Sequential(
            OrderedDict(
                layers=nn.Sequential(
                    nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)
                )
            )
        ),
        (4,),
        False,
        r"^layers\.3 \(GELU\): GELU is not a ReLU",
    ),
    (
        seq(nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(LeakyReLU\): LeakyReLU has a negative slope, which cannot be coded by a spike delay",
    ),
    (
        seq(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(Sigmoid\): Sigmoid saturates and is not a ReLU",
    ),
    (
        seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(Tanh\): Tanh saturates and is not a ReLU",
    ),
    (
        seq(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(ReLU6\): ReLU6 clips at 6, which is not a plain ReLU",
    ),
    (
        seq(nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(ELU\): ELU is not a ReLU",
    ),
    (
        seq(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(PReLU\): PReLU has a negative slope",
    ),
    (
        seq(nn.Linear(4, 2), nn.Softmax(dim=1)),
        (4,),
        False,
        r"^1 \(Softmax\): Softmax normalises across neurons.*remove it",
    ),
    (
        seq(nn.Linear(4, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(LayerNorm\): LayerNorm normalises each sample with its own statistics",
    ),
    (
        seq(nn.Linear(4, 4), nn.ReLU(), nn.Embedding(4, 2)),
        (4,),
        False,
        r"^2 \(Embedding\): Embedding is not supported \(supported layers are Linear",
    ),
    (
        seq(nn.Flatten(), nn.Conv1d(1, 2, 3)),
        (4,),
        False,
        r"^1 \(Conv1d\): Conv1d is not supported: only 2-D convolutions",
    ),
    (
        seq(nn.Linear(4, 4), nn.Linear(4, 2)),
        (4,),
        False,
        r"^1 \(Linear\): follows 0 \(Linear\) without a ReLU in between",
    ),
    (
        seq(nn.Conv2d(2, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 1)),
        IMAGE,
        False,
        r"^2 \(Conv2d\): follows 0 \(Conv2d\) without a ReLU in between",
    ),
    (
        seq(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()),
        (4,),
        False,
        r"^3 \(ReLU\): the model ends with a ReLU; the readout must be a Linear or Conv",
    ),
    (
        seq(nn.Flatten(), nn.ReLU(), nn.Dropout()),
        (4,),
        False,
        r"^the model has no Linear or Conv layer",
    ),
    (seq(), (4,), False, r"^the model has no Linear or Conv layer"),
    (
        seq(nn.Conv2d(2, 2, 3), nn.ReLU(), nn.AvgPool2d(2)),
        IMAGE,
        False,
        r"^2 \(AvgPool2d\): the model must end with a Linear or Conv readout",
    ),
    (
        seq(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)),
        (4,),
        False,
        r"^2 \(BatchNorm1d\): BatchNorm must directly follow a Linear or Conv to be folded into "
        r"it, here it follows 1 \(ReLU\)",
    ),
    (
        seq(nn.BatchNorm1d(4), nn.Linear(4, 2)),
        (4,),
        False,
        r"^0 \(BatchNorm1d\): BatchNorm must directly follow .* here it follows the input",
    ),
    (
        seq(
            nn.Conv2d(2, 2, 3),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8, 2),
        ),
        IMAGE,
        False,
        r"^2 \(BatchNorm2d\): BatchNorm must directly follow .* here it follows 1 \(MaxPool2d\)",
    ),
    (
        seq(
            nn.Linear(4, 4),
            nn.BatchNorm1d(4, track_running_stats=False),
            nn.ReLU(),
            nn.Linear(4, 2),
        ),
        (4,),
        False,
        r"^1 \(BatchNorm1d\): has no running statistics \(track_running_stats=False\)",
    ),
    (
        seq(nn.Conv2d(2, 2, 3), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
        IMAGE,
        False,
        r"^1 \(AvgPool2d\): AvgPool must come after a ReLU .* pre-activations of 0 \(Conv2d\)",
    ),
    (
        seq(nn.AvgPool2d(3, padding=1, count_include_pad=False), nn.Flatten(), nn.Linear(8, 2)),
        IMAGE,
        False,
        r"^0 \(AvgPool2d\): count_include_pad=False with padding",
    ),
    (
        seq(nn.AvgPool2d(2, divisor_override=3), nn.Flatten(), nn.Linear(18, 2)),
        IMAGE,
        False,
        r"^0 \(AvgPool2d\): divisor_override=3 is not supported",
    ),
    (
        seq(nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(18, 2)),
        IMAGE,
        False,
        r"^0 \(AvgPool2d\): ceil_mode=True is not supported",
    ),
    (
        seq(nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(18, 2)),
        IMAGE,
        False,
        r"^0 \(MaxPool2d\): ceil_mode=True is not supported",
    ),
    (
        seq(nn.MaxPool2d(2, dilation=2), nn.Flatten(), nn.Linear(8, 2)),
        IMAGE,
        False,
        r"^0 \(MaxPool2d\): dilation=2 is not supported",
    ),
    (
        seq(nn.MaxPool2d(2, return_indices=True), nn.Flatten(), nn.Linear(18, 2)),
        IMAGE,
        False,
        r"^0 \(MaxPool2d\): return_indices=True is not supported",
    ),
    (
        seq(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2)),
        IMAGE,
        True,
        r"^0 \(MaxPool2d\): max pooling directly on a signed input is not supported",
    ),
    (
        seq(nn.ReLU(), nn.Linear(4, 2)),
        (4,),
        True,
        r"^0 \(ReLU\): a ReLU on a signed input drops its negative part",
    ),
    (
        seq(nn.Conv2d(2, 2, 3), nn.MaxPool2d(2), nn.Flatten()),
        IMAGE,
        False,
        r"^1 \(MaxPool2d\): pools the potentials of the readout 0 \(Conv2d\)",
    ),
    (
        seq(nn.Flatten(start_dim=2), nn.Linear(6, 2)),
        IMAGE,
        False,
        r"^0 \(Flatten\): only Flatten\(start_dim=1, end_dim=-1\) is supported",
    ),
    (
        seq(nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Linear(4, 2)),
        IMAGE,
        False,
        r"^2 \(Linear\): a Linear applied to a \(channels, height, width\) tensor",
    ),
    (
        seq(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)),
        IMAGE,
        False,
        r"^0 \(Conv2d\): grouped convolutions \(groups=2\) are not supported",
    ),
    (
        seq(nn.Conv2d(2, 2, 3, dilation=2), nn.Flatten()),
        IMAGE,
        False,
        r"^0 \(Conv2d\): dilated convolutions \(dilation=\(2, 2\)\) are not supported",
    ),
    (
        seq(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten()),
        IMAGE,
        False,
        r"^0 \(Conv2d\): padding_mode='reflect' is not supported",
    ),
    (
        seq(nn.Conv2d(2, 2, 2, padding="same"), nn.Flatten()),
        IMAGE,
        False,
        r"^0 \(Conv2d\): padding='same' with an even kernel",
    ),
]


@pytest.mark.parametrize(("make", "shape", "signed", "message"), REFUSALS)
def test_refusals_name_the_module_and_say_why(
    make: Callable[[], nn.Module], shape: tuple[int, ...], signed: bool, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        convert_to_graph(make(), inputs(0, shape, signed=signed))


def test_signed_false_with_negative_inputs_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"signed=False, but the calibration inputs have"):
        convert_to_graph(model, inputs(0, (4,), signed=True), signed=False)


def test_graph_passes_between_relus_and_redundant_relus() -> None:
    """A ReLU on a non-negative value (twice in a row, after pooling) changes nothing."""
    model = build(
        12,
        lambda: nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(12, 2),
        ),
    )
    x = inputs(12, IMAGE, signed=False)
    graph = convert_to_graph(model, x)
    assert [type(n) for n in graph.nodes] == [Input, Conv, AvgPool, Flatten, Dense]
    assert_equivalent(model, graph, x)


# -- bad calibration inputs --------------------------------------------------------------------


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((3, 4), dtype=bool),
        np.array([[object()] * 4] * 2, dtype=object),
        np.array([["a"] * 4] * 2),
        np.ones((3, 4), dtype=np.complex64),
        torch.ones(3, 4, dtype=torch.complex64),
        torch.ones(3, 4, dtype=torch.bool),
    ],
    ids=["bool", "object", "str", "complex", "torch-complex", "torch-bool"],
)
def test_non_numeric_calibration_inputs_raise_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="calibration inputs must be real numbers"):
        convert_to_graph(small(), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([[0.0, np.nan, 0.0, 0.0]]), "1 NaN or infinite values"),
        (np.array([[0.0, np.inf, -np.inf, 0.0]]), "2 NaN or infinite values"),
        (np.full((1, 4), 1e39), "NaN or infinite values"),  # overflows float32
        (np.zeros((0, 4)), r"must not be empty, got shape \(0, 4\)"),
        (np.zeros(4), r"must be a batch \(N, features\) or \(N, channels, height, width\)"),
        (np.zeros((2, 4, 4)), r"got shape \(2, 4, 4\)"),
        (np.zeros((2, 5)), r"cannot take calibration inputs of shape \(2, 5\) .* expects 4 feat"),
    ],
)
def test_bad_calibration_inputs_raise_value_error(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert_to_graph(small(), bad)


def test_wrong_image_shape_names_expected_channels() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    with pytest.raises(
        ValueError, match=r"shape \(2, 1, 5, 5\).* expects \(channels=3, height, width\)"
    ):
        convert_to_graph(model, np.zeros((2, 1, 5, 5), np.float32))


@pytest.mark.parametrize("percentile", [0, -1, 100.5, float("nan")])
def test_bad_percentile(percentile: float) -> None:
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        convert_to_graph(small(), np.zeros((2, 4)), percentile=percentile)


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError, match="percentile must be a number"):
        convert_to_graph(small(), np.zeros((2, 4)), percentile="90")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="signed must be True, False or None"):
        convert_to_graph(small(), np.zeros((2, 4)), signed="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        convert_to_graph(lambda x: x, np.zeros((2, 4)))  # type: ignore[arg-type]


class SequentialWithSkip(nn.Sequential):
    """A Sequential whose own forward adds a skip: read by tracing, not child by child."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](F.relu(self[0](x)) + x)


class DoubledLinear(nn.Linear):
    """A supported layer whose forward is not the layer's: the final check catches it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_sequential_subclass_with_own_forward_is_traced() -> None:
    model = SequentialWithSkip(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"^add \(operator\.add\): residual additions"):
        convert_to_graph(model, inputs(0, (4,), signed=False))


def test_model_read_wrongly_is_refused_by_the_final_check() -> None:
    model = build(13, lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), DoubledLinear(3, 2)))
    with pytest.raises(ConversionError, match="does not reproduce the model: logits differ"):
        convert_to_graph(model, inputs(13, (4,), signed=False))

"""The command line: a quick demo end to end, the results schema, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import powersave
from powersave.cli import main
from powersave.data import load_mnist10k, save_npz

MODE_KEYS = {
    "name": str,
    "accuracy": float,
    "agreement_with_full": float,
    "synaptic_ops_per_sample": float,
    "dense_macs_per_sample": float,
    "zero_skip_ops_per_sample": float,
    "spikes_per_neuron": float,
    "spikes_per_hidden_neuron": float,
    "energy_pj_per_sample": dict,
    "seconds_per_sample": float,
    "cutoffs": list,
    "early_decision": bool,
    "readout_ops_saved_per_sample": float,
    "populations": list,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--models", "mlp,cnn", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def test_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.npz"
    data = load_mnist10k()
    save_npz(path, type(data.test)(data.test.x[:100], data.test.y[:100], "test slice"))
    return path


def check_types(record: dict[str, Any], keys: dict[str, type], where: str) -> None:
    for key, kind in keys.items():
        assert key in record, f"{where}: missing {key!r}"
        value = record[key]
        if kind is float:
            assert isinstance(value, int | float) and np.isfinite(value), f"{where}.{key}"
        else:
            assert isinstance(value, kind), f"{where}.{key} is {type(value).__name__}"


def test_results_json_follows_the_documented_schema(demo: Path) -> None:
    results = json.loads((demo / "results.json").read_text())
    check_types(
        results,
        {
            "powersave_version": str,
            "created": str,
            "dataset": dict,
            "profiles": list,
            "models": list,
            "seconds": float,
        },
        "results",
    )
    assert results["dataset"]["name"] == "MNIST-10k sample"
    profiles = {p["name"] for p in results["profiles"]}
    assert profiles == {"cmos45-fp32", "cmos45-int8", "loihi"}
    assert [m["name"] for m in results["models"]] == ["mlp", "cnn"]
    for model in results["models"]:
        where = model["name"]
        check_types(
            model,
            {
                "architecture": str,
                "torch_accuracy": float,
                "full_agreement_with_torch": float,
                "baselines": dict,
                "modes": list,
                "early_decision_alone": dict,
                "sweep": list,
                "raster": dict,
            },
            where,
        )
        dense, zero_skip = model["baselines"]["dense"], model["baselines"]["zero_skip"]
        check_types(
            dense,
            {
                "accuracy": float,
                "dense_macs_per_sample": float,
                "energy_pj_per_sample": dict,
                "seconds_per_sample": float,
            },
            where,
        )
        check_types(
            zero_skip,
            {"accuracy": float, "zero_skip_ops_per_sample": float, "energy_pj_per_sample": dict},
            where,
        )
        assert set(dense["energy_pj_per_sample"]) == profiles
        assert [m["name"] for m in model["modes"]] == ["full", "balanced", "saver", "ultra"]
        for mode in model["modes"]:
            check_types(mode, MODE_KEYS, f"{where}.{mode['name']}")
            assert set(mode["energy_pj_per_sample"]) == profiles
            assert 0.0 <= mode["accuracy"] <= 1.0
        assert model["modes"][0]["agreement_with_full"] == 1.0
        assert model["early_decision_alone"]["changed_predictions"] == 0
        raster = model["raster"]
        assert len(raster["populations"][0]["index"]) == len(raster["populations"][0]["time"])


def test_demo_writes_report_and_networks(demo: Path) -> None:
    html = (demo / "report.html").read_text()
    assert "MNIST-10k sample" in html and "data:image/png;base64," in html
    for name in ("mlp", "cnn"):
        assert (demo / f"{name}.safetensors").stat().st_size > 0
        assert (demo / f"{name}_accuracy_energy.png").read_bytes()[:4] == b"\x89PNG"


def test_info_run_calibrate_sweep_report(
    demo: Path, test_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = str(demo / "mlp.safetensors")
    assert main(["info", net]) == 0
    out = capsys.readouterr().out
    assert "balanced" in out and "calibration accuracy" in out and "A=" in out

    assert (
        main(["run", net, str(test_npz), "--mode", "saver", "--out", str(tmp_path / "r.json")]) == 0
    )
    run = json.loads((tmp_path / "r.json").read_text())
    assert run["mode"] == "saver" and len(run["predictions"]) == 100

    copy = tmp_path / "recal.safetensors"
    args = [
        "calibrate",
        net,
        str(test_npz),
        "--out",
        str(copy),
        "--quiet",
        "--target",
        "gentle=1.0",
        "--ops-budget",
        "20000",
        "--energy-budget",
        "1",
    ]
    assert main(args) == 0
    assert "energy-budget" in capsys.readouterr().out.split("budget NOT reached")[0]
    assert main(["info", str(copy)]) == 0
    assert "gentle" in capsys.readouterr().out

    assert main(["sweep", net, str(test_npz), "--out", str(tmp_path / "s.json")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["sweep"]) > 3

    assert main(["export", net, "--nir", str(tmp_path / "net.nir")]) == 0
    import nir

    assert len(nir.read(str(tmp_path / "net.nir")).nodes) > 3

    assert main(["report", str(demo / "results.json"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "/nonexistent/net.safetensors"], "does not exist"),
        (["run", "{net}", "{npz}", "--mode", "turbo"], "unknown mode 'turbo'"),
        (["run", "{net}", "/nonexistent.npz"], "nonexistent.npz"),
        (["info", "{npz}"], "not"),
        (["report", "{npz}"], "not a JSON results file"),
        (["report", "{tmp}/nothere.json"], "does not exist"),
        (["calibrate", "{net}", "{npz}", "--target", "oops"], "NAME=LOSS_PP"),
        (["demo", "--models", "rnn", "--out", "{tmp}/d"], "unknown model"),
        (["run", "{net}", "nonsense"], "not a data set name"),
        (["run", "{net}", "mnist", "--no-download", "--cache-dir", "{tmp}"], "downloading is"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str],
    message: str,
    demo: Path,
    test_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    filled = [a.format(net=demo / "mlp.safetensors", npz=test_npz, tmp=tmp_path) for a in argv]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert err.startswith("powersave: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    assert main(["demo", "--models", ",", "--out", "/tmp/never-written"]) == 2
    assert "names no model" in capsys.readouterr().err


def test_debug_after_the_subcommand_shows_the_traceback() -> None:
    with pytest.raises(powersave.NetworkFileError):
        main(["info", "/nonexistent/net.safetensors", "--debug"])


def test_clipped_inputs_are_reported(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_mnist10k()
    np.savez(tmp_path / "d.npz", x=data.test.x[:50] * 255, y=data.test.y[:50])
    assert main(["run", str(demo / "mlp.safetensors"), str(tmp_path / "d.npz")]) == 0
    assert "exceed the input scale" in capsys.readouterr().err


def test_train_criticality_and_experiment_commands(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_mnist10k()
    small = type(data.test)(data.test.x[:400], data.test.y[:400], "small")
    save_npz(tmp_path / "small.npz", small)
    out = tmp_path / "trained.safetensors"
    args = ["train", "--data", str(tmp_path / "small.npz"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "PyTorch test accuracy" in capsys.readouterr().out
    assert powersave.load(out).modes == ("full", "balanced", "saver", "ultra")

    net = str(demo / "mlp.safetensors")
    crit = tmp_path / "crit.json"
    assert main(["criticality", net, "mnist10k", "--samples", "3", "--per-sample", "2",
                 "--out", str(crit)]) == 0  # fmt: skip
    diagnostics = json.loads(crit.read_text())
    assert len(diagnostics["chi"]) == 3 and diagnostics["branching_ratio"]

    exp = tmp_path / "exp"
    assert main(["experiment", "criticality", "--quick", "--models", "mlp", "--seeds", "0",
                 "--no-report", "--quiet", "--out", str(exp)]) == 0  # fmt: skip
    runs = json.loads((exp / "results.json").read_text())["runs"]
    assert {r["variant"] for r in runs} == {"plain", "sparse", "critical"}

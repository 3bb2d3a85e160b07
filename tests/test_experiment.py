"""The criticality experiment: a quick run writes results.json in the documented schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from powersave.experiment import (
    VARIANTS,
    check_targets,
    combine_results,
    default_recipes,
    format_summary,
    run_criticality_experiment,
    summarize,
)

pytest.importorskip("torch")
pytest.importorskip("powerlaw")

MODE_KEYS = {
    "name",
    "accuracy",
    "agreement_with_full",
    "synaptic_ops_per_sample",
    "dense_macs_per_sample",
    "zero_skip_ops_per_sample",
    "spikes_per_neuron",
    "spikes_per_hidden_neuron",
    "energy_pj_per_sample",
    "seconds_per_sample",
    "cutoffs",
    "early_decision",
    "readout_ops_saved_per_sample",
    "populations",
    "branching_ratio",
}
RUN_KEYS = {
    "model",
    "variant",
    "seed",
    "architecture",
    "dense_accuracy",
    "chi",
    "chi_layers",
    "chi_stderr",
    "chi_hidden_geomean",
    "branching_ratio",
    "avalanche_exponent",
    "avalanches",
    "recipe",
    "training_seconds",
    "power_aware_thresholds",
    "weight_sparsity",
    "baselines",
    "modes",
    "early_decision_alone",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("criticality")
    results = run_criticality_experiment(
        out, seeds=(0,), models=("mlp",), quick=True, progress=False
    )
    return results, out


def test_results_json_is_written_and_matches_the_return(quick) -> None:
    results, out = quick
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))
    for key in (
        "powersave_version",
        "created",
        "command",
        "seconds",
        "machine",
        "quick",
        "dataset",
        "profiles",
        "config",
        "runs",
        "summary",
        "targets",
        "findings",
    ):
        assert key in on_disk, key
    assert on_disk["quick"] is True
    assert {"criticality.html", "mlp_frontier.png", "mlp_chi.png", "mlp_avalanches.png"} <= {
        p.name for p in out.iterdir()
    }


def test_one_run_per_variant_in_the_documented_schema(quick) -> None:
    results, _ = quick
    runs = results["runs"]
    assert [(r["model"], r["variant"], r["seed"]) for r in runs] == [
        ("mlp", v, 0) for v in VARIANTS
    ]
    for run in runs:
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert 0.0 <= run["dense_accuracy"] <= 1.0
        assert len(run["chi"]) == len(run["chi_layers"]) == 3  # two hidden layers, the readout
        assert all(c >= 0 for c in run["chi"])
        assert len(run["branching_ratio"]) == 2  # input → hidden 1 → hidden 2
        exponent = run["avalanche_exponent"]
        assert exponent is None or exponent > 1
        assert [m["name"] for m in run["modes"]] == ["full", "balanced", "saver", "ultra"]
        for mode in run["modes"]:
            assert MODE_KEYS <= set(mode), MODE_KEYS - set(mode)
            assert 0.0 <= mode["spikes_per_hidden_neuron"] <= 1.0
        hist = run["avalanches"]["histogram"]
        assert sum(hist["count"]) == run["avalanches"]["events"]
    plain, sparse = runs[0], runs[1]
    assert plain["power_aware_thresholds"] is None
    assert len(sparse["power_aware_thresholds"]) == 3
    assert all(row["zero_share"] == 0 for row in plain["weight_sparsity"])
    shares = [row["zero_share"] for row in sparse["weight_sparsity"]]
    assert shares == pytest.approx(list(sparse["recipe"]["sparsity"]), abs=0.01)


def test_summary_targets_and_findings(quick) -> None:
    results, _ = quick
    assert summarize(results["runs"]) == results["summary"]
    assert {(r["model"], r["variant"]) for r in results["summary"]} == {
        ("mlp", v) for v in VARIANTS
    }
    targets = check_targets(results["runs"])["mlp"]
    assert targets["plain_dense_accuracy"] == results["runs"][0]["dense_accuracy"]
    assert len(targets["runs"]) == 3 and isinstance(targets["met"], bool)
    for finding in results["findings"]:
        assert {"model", "metric", "a", "b", "difference", "clear", "text"} <= set(finding)
    assert "mlp" in format_summary(results)
    twice = combine_results([results, results])
    assert len(twice["runs"]) == 6 and all(row["seeds"] == 2 for row in twice["summary"])
    assert twice["seconds"] == pytest.approx(2 * results["seconds"])


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        run_criticality_experiment(tmp_path, models=("vgg",))
    with pytest.raises(ValueError, match="unknown variant"):
        run_criticality_experiment(tmp_path, variants=("huge",))
    with pytest.raises(ValueError, match="seed"):
        run_criticality_experiment(tmp_path, seeds=())
    recipes = default_recipes("mlp")
    assert recipes["plain"].epochs == recipes["sparse"].epochs == recipes["critical"].epochs
    assert recipes["critical"].chi_weight > 0 and recipes["sparse"].chi_weight == 0

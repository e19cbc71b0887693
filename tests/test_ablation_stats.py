"""Ablation statistics: t-intervals over seeds, paired differences, verdicts."""

import math

import pytest

from kalm.ablation.config import AblationConfig, Variant
from kalm.ablation.stats import render_markdown, seed_overrides, summarize, t_interval, verdict


def _s(avg, **tasks):
    return {"tasks": tasks or {"T": avg}, "average": avg}


def test_t_interval_matches_students_t():
    est = t_interval([0.80, 0.82, 0.84])
    # mean 0.82, sd 0.02, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.02 / sqrt(3)
    assert est.mean == pytest.approx(0.82) and est.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    one = t_interval([0.5])
    assert (one.low, one.high, one.n) == (0.5, 0.5, 1)
    with pytest.raises(ValueError, match="no finite values"):
        t_interval([float("nan")])


def test_paired_difference_sees_an_effect_the_seed_spread_hides():
    # Seeds move both variants a lot (0.70 .. 0.80); the variant is 0.010-0.012 better on every seed.
    full = {0: _s(0.70), 1: _s(0.75), 2: _s(0.80)}
    better = {0: _s(0.711), 1: _s(0.760), 2: _s(0.812)}
    same = {0: _s(0.705), 1: _s(0.745), 2: _s(0.801)}
    table = summarize({"full": full, "better": better, "same": same}, reference="full")
    rows = {r["variant"]: r for r in table["rows"]}
    assert table["metrics"] == ["T", "average"]
    # unpaired intervals overlap widely ...
    assert rows["better"]["scores"]["average"].low < rows["full"]["scores"]["average"].high
    # ... the paired difference does not contain 0
    assert verdict(rows["better"]["diff"]["average"]) == "better"
    assert verdict(rows["same"]["diff"]["average"]) == "no effect measured"
    assert verdict(rows["full"]["diff"]["average"]) == "reference"
    md = render_markdown(table, {"better": "a lever"}, zero_shot=["T"])
    assert "T (zero-shot)" in md and "| better | +0.0110 [" in md and "no effect measured" in md
    with pytest.raises(ValueError, match="reference variant 'nope'"):
        summarize({"full": full}, reference="nope")


def test_seed_overrides_reseed_data_and_training():
    ov = seed_overrides([{"name": "a", "path": "x", "seed": 0}, {"name": "b", "path": "y"}], 3)
    assert ov["train.seed"] == 3 and [d["seed"] for d in ov["ingest.datasets"]] == [3, 3]
    assert ov["ingest.datasets"][0]["name"] == "a"


def test_ablation_config_checks_reference_and_seeds():
    assert AblationConfig().reference == "full"
    with pytest.raises(ValueError, match="ablation.reference 'x' is not one of"):
        AblationConfig(reference="x")
    with pytest.raises(ValueError, match="repeats a seed"):
        AblationConfig(seeds=[0, 0])
    assert AblationConfig(variants={"full": Variant(), "v": Variant(overrides={"train.seed": 1})}).variants["v"]


def test_an_experiment_stopped_part_way_has_its_table_so_far(tmp_path):
    """flows/ablation.py writes the table after every run: 3 of 14 runs give a paired table that says so."""
    import json

    from flows.ablation import _write
    from kalm.config import load_config

    cfg = load_config("cpu-levers", check_paths=False)
    chosen, seeds = list(cfg.ablation.variants), [0, 1]
    scores = {"full": {0: _s(0.80, STSBenchmark=0.82, MasakhaNEWSClusteringS2S=0.78),
                       1: _s(0.81, STSBenchmark=0.83, MasakhaNEWSClusteringS2S=0.79)},
              "no-filter": {0: _s(0.79, STSBenchmark=0.80, MasakhaNEWSClusteringS2S=0.78)}}
    _write(tmp_path, cfg, chosen, seeds, None, scores, {"full/s0": 60.0})
    md = (tmp_path / "ablation.md").read_text()
    assert "Runs finished so far: 3 of 14." in md and "MasakhaNEWSClusteringS2S (zero-shot)" in md
    assert "| no-filter | 1 |" in md and "one seed: no interval" in md
    assert json.loads((tmp_path / "ablation.json").read_text())["runs_finished"] == 3
    scores["no-filter"][1] = _s(0.80, STSBenchmark=0.81, MasakhaNEWSClusteringS2S=0.79)
    _write(tmp_path, cfg, ["full", "no-filter"], seeds, None, scores, {})
    assert "Runs finished so far" not in (tmp_path / "ablation.md").read_text()  # complete: no progress line


def test_cli_refuses_a_wrong_command_before_prefect_starts(capsys):
    """Named like a bad config: exit 2 with the choices, no flow run, no traceback."""
    from kalm.cli import main

    assert main(["ablate", "--config", "cpu-levers", "--variants", "full", "no-filtr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown variants ['no-filtr']: choose from full, no-filter,"), err
    assert main(["ablate", "--config", "cpu-levers", "--seeds", "0"]) == 2
    assert "at least one seed" in capsys.readouterr().err
    # The same for `kalm run`: a rerun of stages without the run to rerun is the command's fault.
    assert main(["run", "--only", "train"]) == 2
    assert "--only reruns stages of an existing run: give its --run-id" in capsys.readouterr().err

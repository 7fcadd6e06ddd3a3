"""PruningConfig validation (every documented error) and serialisation round trips."""

import pytest

from pruning_hf import CalibrationConfig, PruningConfig


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="wanda", sparsity=-0.1), r"sparsity must be in \[0.0, 1.0\), got -0.1"),
    (dict(method="wanda", sparsity=1.0), r"sparsity must be in \[0.0, 1.0\), got 1.0"),
    (dict(method="wanda", sparsity="half"), r"sparsity must be a number .* got 'half' \(str\)"),
    (dict(method="wanda", sparsity=True), r"sparsity must be a number"),
    (dict(method="wanda", sparsity=float("nan")), r"sparsity must be a number"),
    (dict(method="wanda", pattern="3:2"), r"pattern='3:2' keeps N=3 of every M=2"),
    (dict(method="wanda", pattern="2:4:8"), r"pattern='2:4:8' is not a sparsity pattern"),
    (dict(method="prune-it", sparsity=0.5), r"method='prune-it' is not a known pruning method; choose one of: magnitude"),
    (dict(method="wanda", sparsity=0.5, dampening=0.1), r"unknown option 'dampening' for method 'wanda' .*option of: sparsegpt"),
    (dict(method="sparsegpt", sparsity=0.5, block_sizes=64), r"unknown option 'block_sizes' for method 'sparsegpt'"),
    (dict(method="sparsegpt", sparsity=0.5, dampening=0), r"dampening must be in \(0.0, 10.0\]"),
    (dict(method="sparsegpt", pattern="4:8", block_size=100), r"block_size=100 must be a multiple of M=8"),
    (dict(method="wanda", sparsity=0.6, pattern="2:4"), r"sparsity=0.6 conflicts with pattern='2:4', which implies sparsity 0.5"),
    (dict(method="wanda"), r"sparsity is required for pattern='unstructured'"),
    (dict(method="wanda", sparsity=0.5, scope="global"), r"scope='global' is not available for method 'wanda'; allowed: row, layer"),
    (dict(method="sparsegpt", sparsity=0.5, scope="row"), r"scope='row' is not available for method 'sparsegpt'"),
    (dict(method="magnitude", pattern="2:4", scope="global"), r"scope='global' has no meaning with pattern='2:4'"),
    (dict(method="wanda", sparsity=0.5, targets=[""]), r"targets\[0\] must be a non-empty string"),
    (dict(method="wanda", sparsity=0.5, calibration={"num_samples": 0}), r"calibration.num_samples must be an integer >= 1, got 0"),
    (dict(method="wanda", sparsity=0.5, calibration={"seq_len": "long"}), r"calibration.seq_len must be an integer"),
    (dict(method="wanda", sparsity=0.5, calibration={"samples": 3}), r"unknown calibration key\(s\) \['samples'\]"),
    (dict(method="sparsegpt", sparsity=0.5, options={"dampening": 0.1}, dampening=0.2), r"given both as keywords and in options="),
])
def test_invalid_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_defaults_and_implied_values():
    assert PruningConfig(method="wanda", pattern="2:4").sparsity == 0.5
    assert PruningConfig(method="wanda", pattern="4:8").scope is None
    assert PruningConfig(method="wanda", sparsity=0.5).scope == "row"
    assert PruningConfig(method="magnitude", sparsity=0.5).scope == "layer"
    cfg = PruningConfig(method="SparseGPT", sparsity=0.5, dampening=0.05)
    assert cfg.method == "sparsegpt" and cfg.options.dampening == 0.05 and cfg.options.block_size == 128
    assert CalibrationConfig().num_samples == 128 and CalibrationConfig().seq_len == 2048
    assert not PruningConfig(method="magnitude", sparsity=0.5).needs_calibration
    assert PruningConfig(method="wanda", sparsity=0.5).needs_calibration


def test_round_trips_dict_json_yaml(tmp_path):
    cfg = PruningConfig(method="sparsegpt", pattern="2:4", targets=["mlp.*"], ignore="down_proj", dampening=0.02,
                        calibration={"source": "embedded", "num_samples": 16, "seq_len": 256, "seed": 3})
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg
    assert PruningConfig.from_json(cfg.to_json()) == cfg
    assert PruningConfig.from_yaml(cfg.to_yaml()) == cfg
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert PruningConfig.from_yaml(path) == cfg
    assert cfg.to_dict()["options"] == {"dampening": 0.02, "block_size": 128, "dampening_retries": 6}


def test_from_dict_accepts_flat_options_and_rejects_unknown_keys():
    assert PruningConfig.from_dict({"method": "sparsegpt", "sparsity": 0.5, "block_size": 64}).options.block_size == 64
    with pytest.raises(ValueError, match=r"unknown pruning config key\(s\) \['sparsty'\]"):
        PruningConfig.from_dict({"method": "wanda", "sparsty": 0.5})
    with pytest.raises(ValueError, match="missing the required key 'method'"):
        PruningConfig.from_dict({"sparsity": 0.5})


def test_from_yaml_missing_file_is_clear():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        PruningConfig.from_yaml("nope.yaml")

"""Strict typed config: precedence, unknown keys with suggestions, TOML round trip."""

import pytest

from nasdeploy.config import RunConfig, from_dict, load_config, to_toml
from nasdeploy.errors import ConfigError


def test_precedence_flag_over_file_over_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[search]\nepochs = 7\nC = 6\n")
    cfg = load_config(p, preset="quick", overrides={"search": {"C": 10, "layers": None}})
    assert cfg.search.epochs == 7  # file beats preset (6)
    assert cfg.search.warmup_epochs == 2  # preset
    assert cfg.search.C == 10  # flag beats file
    assert cfg.search.layers == 3  # preset beats default, None flag ignored
    assert cfg.train.epochs == 12  # preset
    assert cfg.search.w_lr == 0.025  # paper default


def test_toml_round_trip():
    import tomllib

    cfg = load_config(preset="quick")
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg
    assert from_dict({}) == RunConfig()


@pytest.mark.parametrize("raw, message", [
    ({"search": {"epoch": 3}}, "unknown key search.'epoch' — did you mean 'epochs'"),
    ({"serch": {}}, "unknown section \\[serch\\] — did you mean 'search'"),
    ({"search": {"epochs": "3"}}, "search.epochs: expected int, got str"),
    ({"search": {"epochs": 0}}, "must be positive"),
    ({"search": {"order": 3}}, "first \\(1\\) and second \\(2\\) order"),
    ({"search": {"primitives": ["none", "conv_9x9"]}}, "unknown op 'conv_9x9'"),
    ({"search": {"latency_target": -1.0}}, "must be positive"),
    ({"profile": {"batch_sizes": [1, 0]}}, "batch sizes must be positive"),
    ({"train": {"auxiliary": 1}}, "expected bool"),
])
def test_bad_config_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_bad_config_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[search\nepochs = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="qiuck")

"""Property-based tests (hypothesis) of the two parsers users feed by hand: genotype JSON and config TOML."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from nasdeploy.config import _SECTION_TYPES, PRESETS, RunConfig, from_dict, to_toml, validate
from nasdeploy.errors import ConfigError, GenotypeError
from nasdeploy.space.genotype import FINAL_OPS, KEYS, Genotype

SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def genotypes(draw) -> Genotype:
    steps = draw(st.integers(1, 6))

    def cell():
        edges = []
        for i in range(steps):
            for _ in range(2):
                edges.append((draw(st.sampled_from(FINAL_OPS)), draw(st.integers(0, 1 + i))))
        return tuple(edges)

    def concat():
        return tuple(draw(st.lists(st.integers(0, 1 + steps), min_size=1, max_size=2 + steps, unique=True)))

    return Genotype(cell(), concat(), cell(), concat())


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=True),
                      st.text(max_size=12), st.sampled_from(FINAL_OPS + ("none", "sep_conv_9x9")))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                              st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


@SETTINGS
@given(genotypes())
def test_valid_genotypes_round_trip_through_json(g):
    text = g.to_json()
    assert Genotype.from_dict(json.loads(text)) == g
    assert Genotype.from_dict(g.to_dict()).to_json() == text


def _paths(obj, prefix=()):
    """Every (container path, key) inside a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix, i
            yield from _paths(v, prefix + (i,))


@SETTINGS
@given(genotypes(), st.data())
def test_corrupted_genotypes_raise_genotype_error_only(g, data):
    d = json.loads(g.to_json())
    spots = list(_paths(d))
    for _ in range(data.draw(st.integers(1, 3))):
        path, key = data.draw(st.sampled_from(spots))
        container = d
        try:
            for p in path:
                container = container[p]
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                container[key] = data.draw(json_values)
            elif action == "delete":
                del container[key]
            elif isinstance(container, dict):
                container[data.draw(st.text(max_size=8))] = data.draw(json_values)
            else:
                container.insert(key, data.draw(json_values))
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier corruption moved this spot (or replaced its container by a scalar)
    try:
        parsed = Genotype.from_dict(d)
    except GenotypeError as e:
        assert e.problem and e.fix  # names the JSON path and the fix
        return
    # still valid: it must then be a faithful genotype of the corrupted dict
    assert Genotype.from_dict(parsed.to_dict()) == parsed
    assert set(d) == set(KEYS)


@SETTINGS
@given(json_values)
def test_arbitrary_json_is_a_genotype_error_or_a_genotype(obj):
    try:
        Genotype.from_dict(obj)
    except GenotypeError:
        pass


def _field_names():
    return {name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTION_TYPES.items()}


toml_leaf = st.one_of(st.booleans(), st.integers(-3, 70), st.floats(-2, 100), st.floats(allow_nan=True),
                      st.text(max_size=8), st.sampled_from(["darts", "auto", "cpu", "reference", "all", "cifar"]),
                      st.lists(st.one_of(st.integers(-1, 40), st.sampled_from(["skip_connect", "none", "x"])),
                               max_size=4))


@st.composite
def config_dicts(draw):
    names = _field_names()
    out = {}
    for section in draw(st.lists(st.sampled_from([*names, "serach", "misc"]), max_size=4, unique=True)):
        keys = names.get(section, []) + ["epohcs", "batchsize", ""]
        values = draw(st.dictionaries(st.sampled_from(keys), toml_leaf, max_size=5))
        out[section] = values if draw(st.integers(0, 9)) else draw(toml_leaf)
    return out


@SETTINGS
@given(config_dicts())
def test_random_config_dicts_give_config_error_or_a_valid_config(d):
    try:
        cfg = from_dict(d, "cfg.toml")
    except ConfigError as e:
        assert e.problem and e.fix
        return
    assert isinstance(cfg, RunConfig)
    for name in _SECTION_TYPES:
        validate(getattr(cfg, name))  # every section passes the range checks
    for name in _SECTION_TYPES:  # no NaN or infinity gets through
        section = getattr(cfg, name)
        assert all(math.isfinite(v) for v in dataclasses.asdict(section).values() if isinstance(v, float))
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg


@SETTINGS
@given(st.sampled_from(sorted(PRESETS)))
def test_presets_are_valid_configs(name):
    cfg = from_dict(PRESETS[name])
    assert math.isfinite(cfg.search.w_lr)

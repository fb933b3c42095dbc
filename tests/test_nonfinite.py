"""Non-finite numbers: refused in every float config key; a loss that turns non-finite stops the
run naming the step and the last good checkpoint; with a loss scale, overflow steps are skipped
and counted (MindSpore's overflow handling)."""
from __future__ import annotations

import pytest

from core.config import ConfigError, known_keys, load_config, parse_override, reference_table


FLOAT_KEYS = [key for key, type_name, _, _ in reference_table() if type_name.startswith("float")]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", ".nan", ".inf", "NaN", "-.inf"])
def test_non_finite_overrides_are_refused_naming_the_key(text):
    key, value = parse_override(f"optim.lr={text}")
    with pytest.raises(ConfigError, match=r"'optim.lr' must be a finite number"):
        load_config(None, {key: value})


def test_every_float_key_refuses_nan_and_inf():
    assert len(FLOAT_KEYS) >= 15
    for key in FLOAT_KEYS:
        for text in (".nan", "inf"):
            with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
                load_config(None, dict([parse_override(f"{key}={text}")]))


def test_non_finite_list_entries_and_yaml_recipes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'data.mean' must be a finite number"):
        load_config(None, {"data.mean": [0.5, float("nan"), 0.5]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  ema_decay: .nan\n")
    with pytest.raises(ConfigError, match="'train.ema_decay' must be a finite number"):
        load_config(str(recipe))
    assert "optim.lr" in known_keys()

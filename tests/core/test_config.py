import pytest

from core.config import Config, ConfigError, known_keys, load_config, parse_override, reference_table


def test_defaults_are_the_reference_recipe():
    cfg = Config()
    assert cfg.optim.name == "rmsprop" and cfg.optim.lr == 0.05 and cfg.optim.eps == 1e-3
    assert cfg.optim.weight_decay == 4e-5 and cfg.optim.warmup_epochs == 4
    assert cfg.train.epochs == 370 and cfg.train.label_smoothing == 0.1
    assert cfg.data.batch_size == 150 and cfg.data.image_size == 224 and cfg.data.eval_resize == 256


@pytest.mark.parametrize("name", ["cpu_demo", "ascend_8p", "gpu_1p", "gpu_8p"])
def test_shipped_recipes_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.model.arch == "mobilenet_v3_small"


def test_recipe_values():
    ascend = load_config("configs/ascend_8p.yaml")
    assert (ascend.data.batch_size, ascend.optim.lr, ascend.system.device_target) == (150, 0.05, "Ascend")
    gpu = load_config("configs/gpu_1p.yaml")
    assert (gpu.data.batch_size, gpu.optim.lr) == (600, 0.005)


def test_dotted_overrides_with_yaml_values():
    cfg = load_config("configs/cpu_demo.yaml", dict(map(parse_override, [
        "train.epochs=3", "optim.lr=1e-3", "data.crop_scale=[0.5, 1.0]", "model.num_classes=null"])))
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-3
    assert cfg.data.crop_scale == [0.5, 1.0] and cfg.model.num_classes is None


def test_int_accepted_for_float():
    assert load_config(None, {"optim.lr": 1}).optim.lr == 1.0


@pytest.mark.parametrize("overrides, fragment", [
    ({"train.epoch": 3}, "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ({"trian.epochs": 3}, "unknown config key 'trian.epochs'"),
    ({"system.depthwise_impl": "native"},  # renamed (issue 28): the new name, not a silent loss
     "config key 'system.depthwise_impl' is now 'system.cpu_ops' (it switches every native CPU operator"),
    ({"train.epochs": "three"}, "config key 'train.epochs' expects int, got str"),
    ({"train.epochs": 2.5}, "config key 'train.epochs' expects int"),
    ({"optim.lr": -0.1}, "config key 'optim.lr' must be greater than 0"),
    ({"optim.name": "adam"}, "config key 'optim.name' must be one of rmsprop, sgd"),
    ({"data.hflip": 1.5}, "config key 'data.hflip' must be at most 1"),
    ({"data.mean": [0.5, 0.5]}, "config key 'data.mean' needs 3 numbers"),
    ({"train.ema_decay": True}, "config key 'train.ema_decay' expects float, got bool"),
    ({"data.image_size": 300}, "'data.eval_resize' (256) must be at least data.image_size (300)"),
    ({"data.crop_scale": [0.9, 0.1]}, "data.crop_scale"),
    ({"train.epochs": 2}, "'optim.warmup_epochs' (4.0) must not exceed train.epochs (2)"),
])
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.lr'"):
        load_config(str(path))


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "none.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(str(path))


def test_saved_config_round_trips():
    cfg = load_config("configs/cpu_demo.yaml", {"train.epochs": 7})
    again = load_config(None, base=cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()


def test_reference_table_covers_every_key():
    assert [row[0] for row in reference_table()] == known_keys()
    assert all(row[3] for row in reference_table()), "every key documents itself"


def test_readme_documents_every_key():
    readme = open("README.md", encoding="utf-8").read()
    missing = [k for k in known_keys() if f"`{k}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"

import pytest

from audio_ssl import config


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_resolved_config_round_trips(name, tmp_path):
    cfg = config.preset(name)
    config.dump(cfg, tmp_path / "config.yaml")
    assert config.from_dict(config.to_dict(cfg)) == cfg
    assert config.load("base", tmp_path / "config.yaml") == cfg


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ValueError, match="model.context.layerz"):
        config.load("tiny", overrides={"model": {"context": {"layerz": 3}}})
    with pytest.raises(ValueError, match="train.max_steps"):
        config.load("tiny", overrides={"train": {"max_steps": "many"}})
    with pytest.raises(ValueError, match="group.*layer"):
        config.load("tiny", overrides={"model": {"encoder": {"norm": "batch"}}})
    with pytest.raises(ValueError, match="unknown preset"):
        config.preset("huge")

import torch

from audio_ssl.models import Wav2Vec2ForCTC
from tests.conftest import small_model_config


def test_load_backbone_can_keep_the_top_layers_random():
    import pytest

    from audio_ssl.models.pretraining import pretraining_model

    torch.manual_seed(0)
    cfg = small_model_config()
    source = {k: v + 1.0 for k, v in pretraining_model(cfg).state_dict().items()}  # differs
    model = Wav2Vec2ForCTC(cfg, vocab_size=5)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    layers = len(model.backbone.context.layers)
    model.load_backbone(source, keep_random_layers=1)
    top = f"context.layers.{layers - 1}."
    for name, value in model.backbone.state_dict().items():
        expected = before[name] if name.startswith(top) else source["backbone." + name]
        assert torch.equal(value, expected), name
    assert any(name.startswith(top) for name in before)
    for bad in (-1, layers + 1):
        with pytest.raises(ValueError, match="keep_random_layers"):
            model.load_backbone(source, keep_random_layers=bad)
    with pytest.raises(RuntimeError, match="does not match"):  # still as strict as before
        model.load_backbone({**source, "backbone.extra.weight": torch.zeros(1)})

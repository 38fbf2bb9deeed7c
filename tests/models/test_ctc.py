import torch

from audio_ssl.models import Wav2Vec2ForCTC
from tests.conftest import small_model_config


def test_freeze_backbone_trains_only_the_head_and_changes_no_output():
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(small_model_config(), vocab_size=5).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([8000, 6400])
    outs = {}
    for frozen in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(x, lengths, freeze_backbone=frozen)
        out.logits.sum().backward()
        outs[frozen] = out.logits.detach()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        if frozen:
            assert with_grad == {"head.weight", "head.bias"}
        else:
            assert "backbone.context.layers.0.attention.q_proj.weight" in with_grad
            assert "backbone.feature_encoder.layers.0.conv.weight" in with_grad
    assert torch.equal(outs[True], outs[False])

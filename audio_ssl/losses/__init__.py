from audio_ssl.losses.contrastive import (
    contrastive_accuracy,
    contrastive_logits,
    diversity_loss,
)
from audio_ssl.losses.total import masked_prediction_objective, wav2vec2_objective

__all__ = ["contrastive_logits", "contrastive_accuracy", "diversity_loss", "wav2vec2_objective",
           "masked_prediction_objective"]

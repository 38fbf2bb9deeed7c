from audio_ssl.losses.contrastive import (
    contrastive_accuracy,
    contrastive_logits,
    diversity_loss,
)

__all__ = ["contrastive_logits", "contrastive_accuracy", "diversity_loss"]

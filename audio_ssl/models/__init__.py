"""Model building blocks (nn.Module only; nothing here imports from data/ or tasks/)."""

from audio_ssl.models.ctc import CTCOutput, Wav2Vec2ForCTC
from audio_ssl.models.feature_encoder import FeatureEncoder, frame_lengths, receptive_field
from audio_ssl.models.masking import compute_span_mask, sample_negatives
from audio_ssl.models.best_rq import MaskedPredictionOutput, RandomProjectionQuantizer
from audio_ssl.models.data2vec import Data2VecForPretraining, Data2VecOutput
from audio_ssl.models.pretraining import (
    PRETRAINING_MODELS,
    BestRqForPretraining,
    HubertForPretraining,
    PretrainOutput,
    Wav2Vec2ForPretraining,
    pretraining_model,
)
from audio_ssl.models.quantizer import GumbelQuantizer
from audio_ssl.models.reconstruct import ReconstructForPretraining, ReconstructOutput
from audio_ssl.models.wav2vec2 import BackboneOutput, Wav2Vec2Model

__all__ = [
    "FeatureEncoder", "frame_lengths", "receptive_field", "compute_span_mask", "sample_negatives",
    "GumbelQuantizer", "Wav2Vec2Model", "BackboneOutput", "Wav2Vec2ForPretraining", "PretrainOutput",
    "Wav2Vec2ForCTC", "CTCOutput", "BestRqForPretraining", "HubertForPretraining", "MaskedPredictionOutput",
    "RandomProjectionQuantizer", "PRETRAINING_MODELS", "pretraining_model",
    "ReconstructForPretraining", "ReconstructOutput",
    "Data2VecForPretraining", "Data2VecOutput",
]

"""audio_ssl: self-supervised speech representation learning (wav2vec 2.0)."""

__version__ = "0.1.0"

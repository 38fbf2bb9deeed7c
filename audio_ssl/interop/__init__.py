"""Import and export of other libraries' wav2vec 2.0 checkpoints."""

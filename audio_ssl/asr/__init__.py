"""Speech recognition with a fine-tuned CTC model: decoding (greedy, beam search with an n-gram
LM: :mod:`.decode`), the LM builder (:mod:`.lm`), error rates (:mod:`.metrics`), ``transcribe``
and ``evaluate`` (:mod:`.transcribe`) and streaming (:mod:`.streaming`). Fine-tuning itself is a
task: :mod:`audio_ssl.tasks.finetune`."""

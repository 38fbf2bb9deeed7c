"""`audio-ssl demo` and what it is made of: English speech from eSpeak NG installed by pip
(:mod:`.espeak`), a corpus of spoken digits or given sentences with held-out voices
(:mod:`.corpus`, also the fine-tuning study's espeak corpus), the demo's digit probe
(:mod:`.probe`) and the stages themselves (:mod:`.run`)."""

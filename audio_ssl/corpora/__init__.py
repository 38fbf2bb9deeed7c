"""Corpora the project makes itself: English speech from eSpeak NG installed by pip
(:mod:`.espeak`, through ctypes) and corpora of spoken digits or given sentences with held-out
voices (:mod:`.corpus`), used by the demo, the probe suite's synthetic task and the study
scripts."""

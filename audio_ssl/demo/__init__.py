"""`audio-ssl demo`: the whole workflow on a corpus it makes (:mod:`audio_ssl.corpora`), each
stage shown working (:mod:`.run`), with the demo's digit probe (:mod:`.probe`)."""

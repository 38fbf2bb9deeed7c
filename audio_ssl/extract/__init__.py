"""Feature extraction (``audio-ssl extract``): features from any checkpoint or exported model,
for one input or a whole collection.

:class:`FeatureExtractor` turns a waveform or a file into the selected layers' features;
:func:`extract_folder` (the ``audio-ssl extract`` command) writes features of every file of a
folder, manifest or list to disk, resumably; :func:`read_index` and :func:`load_entry` read them
back.
"""

from audio_ssl.extract.extractor import FeatureExtractor, Features
from audio_ssl.extract.features import LayerSelection, parse_layers
from audio_ssl.extract.pipeline import ExtractSummary, extract_folder, run_extraction
from audio_ssl.extract.writers import load_entry, read_index

__all__ = [
    "FeatureExtractor", "Features", "extract_folder", "LayerSelection",
    "parse_layers", "ExtractSummary", "run_extraction", "read_index", "load_entry",
]

"""Every training YAML file in configs/ loads on top of its preset (no unknown keys, right
types). The probe suites (``probe_*.yaml``) are checked in tests/probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audio_ssl import config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if not p.name.startswith("probe_"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_loads(path):
    preset = "base" if path.name.startswith("base") else "tiny"
    cfg = config.load(preset, path)
    named = (yaml.safe_load(path.read_text()).get("model") or {}).get("objective")
    assert cfg.model.objective == (named or config.preset(preset).model.objective)
    if path.name in ("tiny_cpu_long.yaml", "tiny_quantized.yaml"):  # wav2vec 2.0 runs, measured
        assert named == "wav2vec2"


def test_tiny_quantized_brings_the_codebook_back():
    cfg = config.load("tiny", CONFIGS[0].parent / "tiny_quantized.yaml")
    assert cfg.model.quantize_targets and cfg.model.quantizer.codes == 32
    assert not cfg.model.quantizer.gumbel_noise

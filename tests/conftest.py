"""Shared fixtures: tiny configurations and the shared data folder."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from audio_ssl import config

SHARED = Path(os.environ.get("AUDIO_SSL_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()
DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _auto_precision_is_fp32(monkeypatch):
    """``--precision auto`` picks bf16 on CPUs with bf16 units and fp32 elsewhere, so a test that
    left it to ``auto`` would compute differently on different machines. In-process, ``auto``
    means fp32 here on every CPU; the bf16 paths are tested by asking for them, and the
    detection with both answers mocked (tests/test_precision.py)."""
    from audio_ssl import precision

    monkeypatch.setattr(precision, "cpu_bf16",
                        lambda **_: (False, "tests pin auto to fp32 on every CPU"))


def tiny_wav2vec2() -> config.ModelConfig:
    """``tiny``'s network with wav2vec 2.0's objective (the preset's default before CPC became
    it): the Transformer backbone that HF, fairseq and torchaudio also have."""
    return replace(config.preset("tiny").model, objective="wav2vec2")


def small_model_config(norm: str = "layer", layer_norm_first: bool = True) -> config.ModelConfig:
    """A model of a few hundred thousand parameters, no dropout: fast and deterministic."""
    cfg = config.preset("tiny").model
    return replace(
        cfg,
        encoder=replace(cfg.encoder, conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
                        norm=norm),
        context=replace(cfg.context, dim=64, layers=2, heads=4, ffn_dim=128, pos_conv_kernel=16,
                        pos_conv_groups=4, layer_norm_first=layer_norm_first, dropout=0.0,
                        attention_dropout=0.0, layer_drop=0.0),
        quantizer=replace(cfg.quantizer, groups=2, codes=16, dim=32),
        loss=config.LossConfig(), final_dim=32, dropout_input=0.0, dropout_features=0.0,
        mask=config.MaskConfig(), quantize_targets=True,  # the paper's objective, whatever tiny's
        objective="wav2vec2",  # the paper's, whatever tiny's default (CPC since item 7)
    )


def require_shared(path: Path = DATA) -> Path:
    """``path`` (under ``../shared/data``), or skip the test where it is missing; fail instead
    where ``AUDIO_SSL_REQUIRE_SHARED=1`` (CI, which always has it beside the clone)."""
    if not path.exists():
        message = f"shared data not found at {path} (set AUDIO_SSL_SHARED)"
        if os.environ.get("AUDIO_SSL_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def data_dir() -> Path:
    return require_shared(DATA)


def _reads_shared(function) -> bool:
    import inspect

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return "DATA" in source or "require_shared" in source or "data_dir" in source


def pytest_collection_modifyitems(config, items):
    """Every test that reads ``../shared/data`` carries the ``shared_data`` marker (``pytest -m
    shared_data`` lists them): those whose body, or one of whose fixtures, names ``DATA``,
    ``require_shared`` or ``data_dir``."""
    for item in items:
        functions = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info else ()):
            functions += [d.func for d in defs if d.argname != "_shared_data_present"]
        if any(f is not None and _reads_shared(f) for f in functions):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(autouse=True)
def _shared_data_present(request):
    """A ``shared_data`` test without ``../shared/data`` is skipped, or fails where
    ``AUDIO_SSL_REQUIRE_SHARED=1`` (CI, which always has it beside the clone)."""
    if request.node.get_closest_marker("shared_data") is not None:
        require_shared(DATA)


@pytest.fixture
def s3(monkeypatch):
    """An S3 server (moto) on loopback with a bucket `corpus`; its endpoint and test
    credentials in the environment, where s3fs and boto3 (and child processes) read them."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import boto3
    import s3fs

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="corpus")
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()

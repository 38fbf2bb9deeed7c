"""Reading torch files without executing what they name, and without the libraries they name."""

from __future__ import annotations

import argparse
import os

import torch

from audio_ssl.interop.safe_load import Opaque, safe_torch_load, to_plain


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_named_callables_are_not_called(tmp_path):
    target = tmp_path / "created-by-the-file"
    torch.save({"model": {"w": torch.ones(2)}, "payload": _Exploit(str(target))},
               tmp_path / "evil.pt")
    loaded = safe_torch_load(tmp_path / "evil.pt")
    assert not target.exists()
    assert isinstance(loaded["payload"], Opaque)
    assert loaded["payload"].qualified_name.endswith(".mkdir")  # os.mkdir, never called
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_namespaces_and_plain_values_survive(tmp_path):
    args = argparse.Namespace(arch="wav2vec2", conv_bias=True, latent_temp=(2, 0.5, 0.999995))
    torch.save({"args": args, "step": 3}, tmp_path / "args.pt")
    loaded = safe_torch_load(tmp_path / "args.pt")
    assert to_plain(loaded["args"]) == {"arch": "wav2vec2", "conv_bias": True,
                                        "latent_temp": (2, 0.5, 0.999995)}
    assert loaded["step"] == 3

"""--precision auto|32|bf16-mixed: the detection with both answers mocked, and every command
resolving it the same way."""

from __future__ import annotations

import pytest
import torch

from audio_ssl import precision
from audio_ssl.cli import build_parser
from audio_ssl.precision import Precision, cpu_bf16, cpu_flags, resolve


@pytest.fixture(autouse=True)
def _real_detection(monkeypatch):
    """Undo conftest's pin of ``auto`` to fp32: these tests are about the detection."""
    monkeypatch.setattr(precision, "cpu_bf16", cpu_bf16)


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma"}, False),                          # AVX2 only
    ({"avx2", "avx512f", "avx512bw"}, False),          # AVX-512 without bf16 units
    ({"avx2", "avx512f", "avx512_bf16"}, True),        # Cooper Lake, Zen 4
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # Sapphire Rapids
])
def test_auto_picks_bf16_only_with_native_units(flags, expected):
    native, why = cpu_bf16(flags=flags, onednn_isa="")
    assert native is expected
    chosen = resolve("auto", "cpu", flags=flags, onednn_isa="")
    assert chosen.name == ("bf16-mixed" if expected else "32")
    assert chosen.reason.startswith("auto: ") and why in chosen.reason
    assert ("emulated" in why) is (not expected)


def test_onednn_isa_cap_keeps_fp32():
    flags = {"avx512f", "avx512_bf16", "amx_bf16"}
    chosen = resolve("auto", "cpu", flags=flags, onednn_isa="AVX2")
    assert chosen.name == "32" and "ONEDNN_MAX_CPU_ISA=AVX2" in chosen.reason
    assert resolve("auto", "cpu", flags=flags, onednn_isa="avx512_core_amx").bf16


def test_torch_answer_used_where_cpuinfo_has_no_flags():
    """No /proc/cpuinfo (macOS, Windows): torch's own cpuinfo query decides."""
    assert cpu_bf16(flags=set(), torch_says=True, onednn_isa="")[0] is True
    assert cpu_bf16(flags=set(), torch_says=False, onednn_isa="")[0] is False
    assert cpu_bf16(flags=set(), torch_says=None, onednn_isa="")[0] is False


def test_explicit_choices_aliases_and_errors():
    assert resolve("32", "cpu") == Precision("32", "asked for")
    assert resolve("bf16-mixed", "cpu").lightning == "bf16-mixed"
    assert resolve("fp32", "cuda").name == "32" and resolve("bf16", "cpu").bf16
    assert resolve("auto", "cuda").bf16 or not torch.cuda.is_bf16_supported()
    with pytest.raises(ValueError, match="precision 'fp16': expected one of auto, 32, bf16-mixed"):
        resolve("fp16", "cpu")


@pytest.mark.parametrize("command", [
    ["pretrain", "DATA"], ["finetune", "P", "--train", "T", "--valid", "V"],
    ["extract", "C", "IN", "OUT"], ["transcribe", "M", "IN"], ["evaluate", "M", "L"]])
def test_every_command_takes_the_same_precision_option(command):
    parser = build_parser()
    assert parser.parse_args(command).precision is None  # None: the config's (auto)
    assert parser.parse_args([*command, "--precision", "bf16-mixed"]).precision == "bf16-mixed"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--precision", "fp16"])


def test_trainer_gets_the_resolved_precision(monkeypatch, tmp_path):
    from audio_ssl import config
    from audio_ssl.tasks.trainer import BF16Mixed, build_trainer

    monkeypatch.setattr(precision, "cpu_bf16", lambda **_: (True, "mocked units"))
    cfg = config.load("tiny")
    trainer = build_trainer(cfg.train, tmp_path, grad_clip=1.0, accelerator="cpu",
                            progress=False)
    assert isinstance(trainer.precision_plugin, BF16Mixed)
    monkeypatch.setattr(precision, "cpu_bf16", lambda **_: (False, "mocked none"))
    trainer = build_trainer(cfg.train, tmp_path, grad_clip=1.0, accelerator="cpu",
                            progress=False)
    assert trainer.precision_plugin.precision == "32-true"


def test_bf16_mixed_clips_gradients_with_a_fused_optimizer():
    """Lightning's own bf16-mixed refuses (it assumes a scaler would unscale); ours clips."""
    from audio_ssl.tasks.trainer import BF16Mixed

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 10.0)
    opt = torch.optim.AdamW([p], fused=True)
    BF16Mixed("cpu").clip_gradients(opt, clip_val=1.0)
    torch.testing.assert_close(p.grad.norm(), torch.tensor(1.0), atol=1e-5, rtol=0)

"""Every code block in the README and docs/ is checked: commands parse with the options they
show, scripts exist and take the flags shown, YAML loads into the typed config, Python runs, and
every relative link points at a file. The configuration reference is the generated one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_ssl import config
from audio_ssl.cli import build_parser, parse_args
from audio_ssl.config_reference import markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[tuple[str, str]]:
    return [(f"{p.relative_to(ROOT)}#{k}", body) for p in PAGES
            for k, (tag, body) in enumerate(FENCE.findall(p.read_text(encoding="utf-8")))
            if tag == lang]


def _commands(block: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments dropped, split at
    ``&&``, ``;`` and ``|``."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for t in tokens + ["&&"]:
            if t in ("&&", ";", "|", "||"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(t)
    return out


COMMANDS = [(where, cmd) for where, body in _blocks("bash") for cmd in _commands(body)]


def test_every_page_has_been_found():
    assert {p.name for p in PAGES} >= {"README.md", "pretraining.md", "configuration.md",
                                       "extraction.md", "probing.md", "asr.md", "checkpoints.md",
                                       "scaling.md", "performance.md"}
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("where,cmd", [c for c in COMMANDS
                                       if any(t.endswith("audio-ssl") or t == "audio_ssl.cli"
                                              for t in c[1])],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_audio_ssl_commands_parse(where, cmd, monkeypatch):
    """As on the machines the pages are written for: 8 GPUs, so that `--device cuda` and
    `--devices 8` parse here too (the checks against this machine are tested elsewhere)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    start = next(i for i, t in enumerate(cmd) if t.endswith("audio-ssl") or t == "audio_ssl.cli")
    args = cmd[start + 1:]
    try:
        parse_args(build_parser(), args)
    except SystemExit as stop:  # --help exits 0; a wrong option exits 2
        assert stop.code == 0, f"{where}: {' '.join(cmd)}"


@pytest.mark.parametrize("where,cmd", [c for c in COMMANDS
                                       if any(t.endswith((".py", ".sh")) for t in c[1][:3])],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_scripts_exist_and_take_the_flags_shown(where, cmd):
    script = next(t for t in cmd if t.endswith((".py", ".sh")))
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    source = path.read_text(encoding="utf-8")
    for flag in (t.split("=")[0] for t in cmd if t.startswith("--")):
        assert f'"{flag}"' in source or f"'{flag}'" in source, f"{where}: {script} has no {flag}"


@pytest.mark.parametrize("where,body", _blocks("yaml"), ids=lambda v: v[:40])
def test_yaml_blocks_load_into_the_typed_config(where, body):
    import yaml

    data = yaml.safe_load(body)
    errors = []
    for load in (config.from_dict, lambda d: config.merge(config.FinetuneConfig(), d)):
        try:
            load(data)
            return
        except (ValueError, TypeError) as err:
            errors.append(str(err))
    pytest.fail(f"{where}: {errors}")


def test_relative_links_point_at_files():
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target}"


def test_configuration_reference_is_the_generated_one():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == markdown(), "run: python -m audio_ssl.config_reference > docs/configuration.md"


@pytest.mark.slow
def test_python_blocks_of_the_docs_run(tmp_path, monkeypatch):
    """Every Python example of docs/ (the extraction, streaming and ONNX pages'), in a folder
    with the checkpoints, exported files and audio they name; a page's blocks share one
    namespace, as a reader running them in order would."""
    import soundfile as sf

    from audio_ssl.interop.export import save_native
    from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
    from tests.conftest import small_model_config

    torch.manual_seed(0)
    ckpt = tmp_path / "runs/demo/pretrain/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    save_native(Wav2Vec2ForPretraining(small_model_config()).eval(), ckpt)
    ctc = tmp_path / "runs/demo/finetune/checkpoints/best.ckpt"  # the streaming page's model
    ctc.parent.mkdir(parents=True)
    save_native(Wav2Vec2ForCTC(small_model_config(), 5).eval(), ctc,
                vocab=["<blank>", "|", "a", "b", "c"])
    rng = np.random.default_rng(0)
    (tmp_path / "my_audio").mkdir()
    for name in ("speech.flac", "speech.wav", "my_audio/a.flac", "my_audio/b.flac"):
        sf.write(tmp_path / name, 0.1 * rng.standard_normal(24_000).astype(np.float32), 16_000)
    monkeypatch.chdir(tmp_path)
    from audio_ssl.interop.onnx import export_onnx

    export_onnx(ctc, tmp_path / "asr.onnx")  # the ONNX page's files
    export_onnx(ckpt, tmp_path / "ssl.onnx")
    blocks = [b for lang in ("py", "python") for b in _blocks(lang)
              if not b[0].startswith("README.md")]  # the README's: tests/test_readme.py
    assert len({where.split("#")[0] for where, _ in blocks}) >= 3
    scopes: dict[str, dict] = {}
    for where, body in blocks:
        exec(compile(body, where, "exec"), scopes.setdefault(where.split("#")[0], {}))

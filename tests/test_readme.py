"""The README's commands, as far as a test can run them: the demo, the CLI help, the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audio_ssl.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "audio-ssl demo" in blocks[0]
    assert blocks[1].strip() == "bash .ci/run"
    assert "pytest" in (ROOT / ".ci" / "run").read_text()


def test_help_explains_each_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "pretrain" in out and "demo" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for option in ("--preset", "--config", "--output", "--max-steps", "--devices", "--resume"):
        assert option in out


def test_python_api_block_runs():
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    block = block.replace('config.preset("base")', 'config.preset("tiny")')  # seconds, not minutes
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--minutes", "1.5", "--pretrain-steps", "3",
            "--finetune-steps", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/7] corpus", "[2/7] pretrain", "[3/7] plot", "[4/7] extract", "[5/7] probe",
                  "[6/7] fine-tune", "[7/7] transcribe", "What the demo showed:"):
        assert stage in printed
    assert "x log(K+1)" in printed and "CER" in printed and "MFCC" in printed
    for path in ("corpus/manifest.jsonl", "pretrain/checkpoints/last.ckpt", "pretrain.png",
                 "features/index.jsonl", "finetune/checkpoints/last.ckpt",
                 "finetune/test_report.jsonl"):
        assert (out / path).is_file(), path
    from audio_ssl.interop import load_model  # CPC, tiny's objective: the 5-frame CTC head

    assert load_model(out / "finetune" / "checkpoints" / "last.ckpt").model.head_kernel == 5
    # a second run reuses what is finished
    assert printed.count("finished before") == 0
    assert main(args) == 0
    assert capsys.readouterr().out.count("(finished before: reused)") == 2
    # other settings in the same folder would mix two demos: one clear line, exit 2
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "other settings (seed)" in err and str(out) in err


def test_demo_head_hears_ahead_only_on_a_causal_network(tmp_path):
    """The demo's CTC head reads 5 frames on CPC (causal: each letter would otherwise hear
    nothing after it) and 1, HF's and fairseq's linear head, on wav2vec 2.0's Transformer."""
    from audio_ssl.demo.run import DemoSettings, _Demo, finetune_overrides

    (tmp_path / "w2v.yaml").write_text("model: {objective: wav2vec2}\n")
    assert _Demo(DemoSettings(output=tmp_path / "a")).head_kernel() == 5
    assert _Demo(DemoSettings(output=tmp_path / "b", config=tmp_path / "w2v.yaml")) \
        .head_kernel() == 1
    assert finetune_overrides(600, 0)["ctc"]["head_kernel"] == 1  # the studies' recipe as was
    assert finetune_overrides(600, 0, head_kernel=5)["ctc"]["head_kernel"] == 5


def test_top_level_help_lists_each_command_once(capsys):
    from audio_ssl.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    commands = list(build_parser().commands)
    assert len(commands) >= 12
    for name in commands:
        assert len(re.findall(rf"^\s+{re.escape(name)}\b", out, re.M)) == 1, name

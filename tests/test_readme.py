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
def test_demo_makes_audio_and_pretrains(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--minutes", "1", "--max-steps", "3",
                 "--finetune-steps", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained 3 steps" in printed
    assert "failures: none" in printed  # extraction
    assert "fine-tuned 2 steps with CTC" in printed
    assert "reference -> greedy transcript" in printed
    assert (out / "corpus" / "manifest.jsonl").is_file()
    assert (out / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "features" / "index.jsonl").is_file()
    assert (out / "finetune" / "checkpoints" / "last.ckpt").is_file()

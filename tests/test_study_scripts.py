"""Study scripts refuse bad input in one line with exit 2, as the CLI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_finetune_study_names_a_missing_checkpoint_in_one_line(tmp_path):
    missing = tmp_path / "nope.ckpt"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune_study.py"),
                           "--pretrained", str(missing), "--corpora", "fsdd",
                           "--output", str(tmp_path / "out"), "--no-tables"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such checkpoint" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written

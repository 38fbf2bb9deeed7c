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


def test_objectives_study_reports_the_mean_of_the_last_logged_losses(tmp_path):
    """The study's loss column: the mean of the last 20 logged training losses, not the last
    batch's; rows without a loss (validation, lr only) are skipped. Checked against numpy."""
    import json

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from scripts.objectives_study import last_losses

    rng = np.random.default_rng(0)
    losses = 4.0 + rng.normal(0.0, 0.3, size=37)
    lines = []
    for step, loss in enumerate(losses):
        lines.append({"step": 10 * step, "train/loss": float(loss)})
        lines.append({"step": 10 * step, "train/lr": 1e-3})  # another metric's row
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert last_losses(metrics) == round(float(np.mean(losses[-20:])), 4)
    assert last_losses(metrics) != round(float(losses[-1]), 4)
    assert last_losses(metrics, count=100) == round(float(np.mean(losses)), 4)

"""Study scripts refuse bad input in one line with exit 2, as the CLI does; benchmark scripts
print JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_hubert_iterations_refuses_an_iteration_2_trained_on_another_layer(tmp_path):
    """A second layer into the same --output would reuse the first layer's iteration 2 (its
    folder is named by seed, budget and clusters) and report it under the new layer's name: one
    line, exit 2, before any clustering or pretraining."""
    import json

    iter1, out = tmp_path / "iter1", tmp_path / "chain"
    iter1.mkdir()
    (iter1 / "summary.json").write_text(json.dumps({"steps": 2000}))
    sweep = {"layer_0": 0.6, "layer_1": 0.5, "layer_2": 0.55}
    probe = {"tasks": {"digits": {"sets": {"hubert-iter1": {"sweep": sweep}}}}}
    (out / "probe-iter1").mkdir(parents=True)
    (out / "probe-iter1" / "results.json").write_text(json.dumps(probe))
    (out / "iter2-s1").mkdir()
    trained_on = out / "targets-layer2-500"
    (out / "iter2-s1" / "config.yaml").write_text(f"data:\n  targets: {trained_on}\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "hubert_iterations.py"),
                           "--iter1", str(iter1), "--layer", "1", "--seed", "1",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(trained_on) in lines[0] and "targets-layer1-500" in lines[0]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["iter2-s1", "probe-iter1"]  # nothing new


def test_bench_speed_perturb_prints_json_lines_and_a_ratio():
    script = ROOT / "scripts" / "bench_speed_perturb.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "2", "--batch", "2",
                          "--seconds", "1"], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["repeat"] for r in rows[:-1]] == [0, 1]
    summary = rows[-1]
    assert summary["ratio_perturb_to_update"] > 0
    assert summary["ratio_perturb_to_update"] == pytest.approx(
        summary["perturb_ms_median"] / summary["update_ms_median"], rel=1e-2, abs=1e-4)

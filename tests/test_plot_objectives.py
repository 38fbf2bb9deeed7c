"""scripts/plot_objectives.py: the study's figure is drawn from the rows, each bar checked
against a second computation (another row order, numpy's mean and standard deviation)."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from scripts.plot_objectives import cost_bars, main, probe_bars

PNG = b"\x89PNG\r\n\x1a\n"


def _row(objective, seed, steps, digits, random_=30.0, mfcc=57.4):
    return {"objective": objective, "seed": seed, "steps": steps, "digits/model": digits,
            "digits/random": random_, "digits/mfcc": mfcc}


def test_bars_are_the_mean_and_spread_over_seeds_whatever_the_row_order():
    rows = [_row("cpc", 1, 2000, 1.0),  # overwritten by the repeat of (cpc, 1, 2000) below
            _row("cpc", 1, 2000, 73.6), _row("cpc", 2, 2000, 74.0), _row("cpc", 3, 2000, 71.6),
            _row("wav2vec2", 1, 400, 51.5, random_=37.2), _row("cpc", 1, 400, 58.1)]
    bars = probe_bars(rows, "digits")
    cpc = next(b for b in bars if b["objective"] == "cpc" and b["updates"] == 2000)
    assert cpc["seeds"] == 3
    assert cpc["mean"] == pytest.approx(np.mean([73.6, 74.0, 71.6]), abs=0.01)
    assert cpc["std"] == pytest.approx(np.std([73.6, 74.0, 71.6], ddof=1), abs=0.01)
    assert [(b["objective"], b["updates"]) for b in bars] == [
        ("cpc", 400), ("wav2vec2", 400), ("cpc", 2000)]
    # the same rows in another order give the same bars, except that the last repeat wins
    kept = rows[1:]
    for seed in range(5):
        shuffled = kept[:]
        random.Random(seed).shuffle(shuffled)
        assert probe_bars(shuffled, "digits") == bars
    assert probe_bars(rows, "language") == []


def test_cost_bars_read_the_ratio_lines_only():
    rows = [{"objective": "cpc", "step_s": 0.2},
            {"ratio": "cpc/wav2vec2", "cost": 0.804, "updates_in_peer_budget": 2488,
             "dtype": "fp32"}]
    assert cost_bars(rows) == [{"objective": "cpc", "peer": "wav2vec2", "dtype": "fp32",
                                "cost": 0.804, "updates_in_peer_budget": 2488}]


def test_the_figure_is_written_and_bad_rows_are_one_line(tmp_path, capsys):
    study = tmp_path / "study.jsonl"
    study.write_text("".join(json.dumps(r) + "\n" for r in
                             [_row("cpc", 1, 400, 58.1), _row("wav2vec2", 1, 400, 51.5)]))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"ratio": "cpc/wav2vec2", "cost": 0.8,
                                 "updates_in_peer_budget": 2500, "dtype": "fp32"}) + "\n")
    out = tmp_path / "fig" / "objectives.png"
    assert main(["--study", str(study), "--bench", str(bench), "--output", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    assert not list(out.parent.glob("*.tmp.png"))
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"task": "digits", "objective": "cpc", "updates": 400, "seeds": 1, "mean": 58.1,
            "std": 0.0, "random": 30.0, "mfcc": 57.4} in printed
    bench.write_text("{not json\n")
    for argv, pattern in (
            (["--study", str(study), "--bench", str(bench), "--output", str(out)],
             r"bench.jsonl:1: not valid JSON"),
            (["--study", str(tmp_path / "missing.jsonl"), "--bench", str(bench)],
             r"cannot read .*missing.jsonl")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err) and len(err.strip().splitlines()) == 1

"""``audio-ssl probe``: tasks, splits, heads and the command end to end on tiny audio."""

from __future__ import annotations

import os

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_ssl.cli import main
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForPretraining
from audio_ssl.probe import ProbeSettings, make_folds, parse_task, read_examples, run_probe
from audio_ssl.probe import heads as probe_heads
from audio_ssl.probe.data import Example, ProbeTask
from audio_ssl.probe.heads import HeadConfig, LayerMix
from tests.conftest import DATA, require_shared, small_model_config

FAST = HeadConfig(epochs=8, ctc_epochs=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(small_model_config()).eval()
    return save_native(model, tmp_path_factory.mktemp("ckpt") / "small.ckpt",
                       run_config={"data": {"normalize": True}})


@pytest.fixture(scope="module")
def tiny_manifest() -> Path:
    path = DATA / "tiny" / "manifest.jsonl"
    require_shared(path)
    return path


def _examples(speakers: list[str], per_speaker: int) -> list[Example]:
    return [Example(f"/x/{s}_{k}.flac", f"label{k % 3}", s, "train", f"m:{i}")
            for i, (s, k) in enumerate((s, k) for s in speakers for k in range(per_speaker))]


# -- tasks and splits ---------------------------------------------------------------------------


def test_task_specs_name_the_kind():
    task = parse_task("digits=data/fsdd/manifest.jsonl:text")
    assert (task.name, task.data, task.kind, task.field) == (
        "digits", Path("data/fsdd/manifest.jsonl"), "classification", "text")
    task = parse_task("chars=data/lj/manifest.jsonl")
    assert (task.kind, task.field, task.data) == ("recognition", "text", Path("data/lj/manifest.jsonl"))
    assert parse_task("lang=/abs/cv.jsonl:lang").field == "lang"
    for bad in ("digits", "=a.jsonl", "x="):
        with pytest.raises(ValueError, match="NAME=MANIFEST"):
            parse_task(bad)


@pytest.mark.parametrize("speakers", [4, 12])
def test_speaker_split_shares_no_speaker(speakers):
    """Few speakers: each held out in turn; many: one speaker-disjoint test set. The dev set
    is drawn from the training speakers only."""
    task = ProbeTask("t", Path("m.jsonl"), split_by="speaker")
    examples = _examples([f"s{i}" for i in range(speakers)], 5)
    folds = make_folds(task, examples)
    assert len(folds) == (speakers if speakers <= 6 else 1)
    for fold in folds:
        train = {examples[i].speaker for i in fold.train + fold.dev}
        test = {examples[i].speaker for i in fold.test}
        assert train and test and not train & test
        assert sorted(fold.train + fold.dev + fold.test) == list(range(len(examples)))
    if speakers <= 6:
        assert sorted(examples[f.test[0]].speaker for f in folds) == sorted({e.speaker for e in examples})


def test_within_speaker_split_holds_out_a_fifth_of_each_speaker():
    task = ProbeTask("t", Path("m.jsonl"), split_by="within-speaker")
    examples = _examples(["a", "b", "c"], 10)
    (fold,) = make_folds(task, examples)
    for s in "abc":
        assert sum(examples[i].speaker == s for i in fold.test) == 2
    assert not set(fold.test) & set(fold.train + fold.dev)


def test_manifest_split_and_rejected_rows(tmp_path, tiny_manifest):
    rows = [json.loads(line) for line in tiny_manifest.read_text().splitlines()]
    for r in rows:
        r["audio"] = str(tiny_manifest.parent / r["audio"])
    rows.append({**rows[0], "audio": "missing.flac"})
    rows.append({**rows[1], "text": None})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, rejected = read_examples(ProbeTask("t", manifest, kind="recognition"))
    assert len(examples) == 23
    assert sorted(r.reason for r in rejected) == ["no 'text' label", "no such file"]
    assert all(r.line.startswith(str(manifest)) for r in rejected)
    assert len(read_examples(ProbeTask("t", manifest, kind="recognition",
                                       max_utterances=5))[0]) == 5
    (fold,) = make_folds(ProbeTask("t", manifest), examples)
    assert {examples[i].split for i in fold.test} == {"test"}
    assert {examples[i].split for i in fold.train + fold.dev} == {"train"}


# -- heads --------------------------------------------------------------------------------------


def test_layer_weights_are_a_softmax_and_one_layer_is_one_hot():
    mix = LayerMix(5, None)
    with torch.no_grad():
        mix.logits.copy_(torch.randn(5))
    assert torch.isclose(mix.weights().sum(), torch.tensor(1.0))
    x = torch.randn(3, 5, 8)  # (N, L, D)
    assert torch.allclose(mix(x), (x * mix.weights()[:, None]).sum(1), atol=1e-6)
    single = LayerMix(5, 2)
    assert single.weights().tolist() == [0, 0, 1, 0, 0]
    assert torch.equal(single(x), x[:, 2])


def test_classifier_learns_a_separable_task_and_is_seeded():
    """Two classes told apart by one layer's mean: the head finds them and the learned weights
    move onto that layer; the same seed gives the same result."""
    g = torch.Generator().manual_seed(0)
    labels = np.array(["a", "b"] * 40)
    arrays = []
    for k, label in enumerate(labels):
        x = torch.randn(3, 20, 4, generator=g)  # (L, T, D)
        x[1] += 2.0 if label == "a" else -2.0
        arrays.append(x.numpy())
    pooled = probe_heads.pool(arrays)
    train, dev, test = list(range(50)), list(range(50, 60)), list(range(60, 80))
    results = [probe_heads.train_classifier(pooled, labels, ["a", "b"], train, dev, test,
                                            layer=None, seed=1, cfg=HeadConfig(epochs=30))
               for _ in range(2)]
    assert results[0].score == 1.0
    assert results[0] == results[1]
    weights = results[0].layer_weights
    assert abs(sum(weights) - 1) < 1e-6 and weights[1] == max(weights)


# -- end to end ---------------------------------------------------------------------------------


def _run(checkpoint, tiny_manifest, out, recognition: bool = True, **settings) -> dict:
    tasks = [ProbeTask("source", tiny_manifest, field="source", split_by="speaker")]
    if recognition:
        tasks.append(ProbeTask("chars", tiny_manifest, kind="recognition"))
    return run_probe(checkpoint, tasks, out, ProbeSettings(seeds=2, head=FAST, progress=False,
                                                           **settings))


@pytest.mark.slow
def test_both_task_kinds_end_to_end_with_baselines_through_the_same_heads(
        checkpoint, tiny_manifest, tmp_path, monkeypatch):
    calls: list[tuple] = []
    for name in ("train_classifier", "train_recognizer"):
        real = getattr(probe_heads, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, kwargs["layer"], kwargs["seed"], kwargs["cfg"]))
            return _real(*args, **kwargs)
        monkeypatch.setattr("audio_ssl.probe.run." + name, spy)
    results = _run(checkpoint, tiny_manifest, tmp_path / "a")
    sets = ["model", "random", "mfcc", "logmel"]
    assert results["sets"] == sets
    for task in ("source", "chars"):
        entry = results["tasks"][task]
        assert list(entry["sets"]) == sets
        for name in sets:
            score = entry["sets"][name]["score"]
            assert len(score["values"]) == 2 and 0 <= score["mean"] <= (1 if task == "source" else 5)
            assert abs(sum(entry["sets"][name]["layer_weights"]) - 1) < 1e-3
        model = entry["sets"]["model"]
        assert model["layers"] == ["layer_0", "layer_1", "layer_2"]
        assert set(model["sweep"]) == set(model["layers"])
    assert "speaker-disjoint" in results["tasks"]["source"]["split"]
    assert results["tasks"]["chars"]["split"] == "the manifest's split field"
    assert "wer" in results["tasks"]["chars"]["sets"]["mfcc"]
    # the same head, the same seeds and folds, for every set: the calls differ only in the
    # layers a network has (a sweep over its 3 layers; the baselines have one)
    weighted = [c for c in calls if c[1] is None]
    folds = sum(len(results["tasks"][t]["folds"]) for t in ("source", "chars"))
    assert len(weighted) == 4 * 2 * folds  # sets x seeds x folds
    assert {c[3] for c in calls} == {FAST}
    for f in ("results.json", "results.md", "scores.png", "layer_weights.png",
              "confusion_source.png"):
        assert (tmp_path / "a" / f).is_file(), f
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| source | accuracy % ↑ |" in table and "| chars | CER % ↓ |" in table


@pytest.mark.slow
def test_results_are_identical_for_a_seed(checkpoint, tiny_manifest, tmp_path):
    a = _run(checkpoint, tiny_manifest, tmp_path / "a", False, baselines=("mfcc",))
    b = _run(checkpoint, tiny_manifest, tmp_path / "b", False, baselines=("mfcc",))
    for r in (a, b):
        r.pop("seconds")
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "torchaudio"])
def test_foreign_checkpoints_are_probed(fmt, tiny_manifest, tmp_path):
    if fmt == "hf":
        pytest.importorskip("transformers")
        from tests.interop.interop_helpers import hf_model

        path = tmp_path / "hf"
        hf_model("Wav2Vec2Model").save_pretrained(path)
    else:
        from tests.interop.test_interop_torchaudio import _torchaudio_model

        path = tmp_path / "model.pth"
        torch.save({"state_dict": _torchaudio_model("group_norm", False).state_dict(),
                    "config": {"encoder_num_heads": 4}}, path)
    task = ProbeTask("source", tiny_manifest, field="source", split_by="speaker")
    results = run_probe(path, [task], tmp_path / "out",
                        ProbeSettings(seeds=1, baselines=(), sweep=False, head=FAST,
                                      progress=False))
    assert results["tasks"]["source"]["sets"]["model"]["layers"] == ["layer_0", "layer_1",
                                                                      "layer_2"]


# -- the command --------------------------------------------------------------------------------


@pytest.mark.slow
def test_command_and_compare(checkpoint, tiny_manifest, tmp_path, capsys):
    base = [str(checkpoint), "--task", f"source={tiny_manifest}:source", "--seeds", "1",
            "--baselines", "mfcc", "--no-sweep", "--no-progress", "--quiet"]
    assert main(["probe", *base, "-o", str(tmp_path / "one"), "--name", "one"]) == 0
    assert main(["probe", *base, "-o", str(tmp_path / "two"), "--name", "two"]) == 0
    capsys.readouterr()
    assert main(["probe", "--compare", str(tmp_path / "one"), str(tmp_path / "two"),
                 "-o", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| task | metric | one | two | mfcc |"
    assert (tmp_path / "cmp" / "compare.md").read_text() == out


@pytest.mark.parametrize("args, message", [
    (["--task", "digits"], "expected NAME=MANIFEST"),
    (["--task", "x=/nonexistent/m.jsonl:text"], "no such file"),
    (["--task", "x={tiny}:nosuchfield"], "no usable rows"),
    (["--task", "x={tiny}:text", "--split-by", "speaker", "--seeds", "0"], "--seeds: 0: expected"),
    ([], "no task"),
])
def test_misuse_is_one_line_and_exit_2(args, message, checkpoint, tiny_manifest, tmp_path,
                                       capsys):
    args = [a.format(tiny=tiny_manifest) for a in args]
    out = tmp_path / "out"
    try:
        code = main(["probe", str(checkpoint), *args, "-o", str(out)])
    except SystemExit as stop:  # refused by the parser, as it is parsed
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_output_that_is_a_file_is_refused(checkpoint, tiny_manifest, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    assert main(["probe", str(checkpoint), "--task", f"c={tiny_manifest}", "-o", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_suite_file_resolves_manifests_and_refuses_unknown_keys(tmp_path):
    from audio_ssl.probe import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("root: data\ntasks:\n  d: {data: fsdd/manifest.jsonl, field: text, "
                     "split_by: speaker}\n")
    (task,) = load_suite(suite)
    assert task.data == tmp_path / "data" / "fsdd" / "manifest.jsonl"
    assert (task.kind, task.split_by) == ("classification", "speaker")
    suite.write_text("tasks:\n  d: {data: m.jsonl, colour: red}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_suite(suite)


def test_shared_suite_names_the_shared_corpora(data_dir, tmp_path, monkeypatch):
    """Every manifest of configs/probe_shared.yaml exists, and the espeak task asks the corpus
    maker for valid options (the corpus itself is not synthesised here)."""
    from audio_ssl.probe import load_suite

    made = []
    monkeypatch.setattr("audio_ssl.corpora.corpus.make_corpus",
                        lambda out, **options: made.append(options) or out)
    path = Path(__file__).resolve().parents[2] / "configs" / "probe_shared.yaml"
    monkeypatch.chdir(tmp_path)  # an output folder given relative to where the user is
    tasks = {t.name: t for t in load_suite(path, Path("out"), progress=False)}
    assert set(tasks) == {"digits", "language", "speaker", "characters_lj", "characters_espeak"}
    for name, task in tasks.items():
        if name != "characters_espeak":
            assert task.data.is_file(), task.data
            assert read_examples(task)[0]
    assert made == [{"minutes": 6, "seed": 0, "progress": False, "sentences": None}]
    assert tasks["characters_espeak"].data.parent.parent == tmp_path / "out"


# -- row order and duplicated rows ----------------------------------------------------------------


def _tone_corpus(folder: Path, per_class: int = 8, seed: int = 0) -> list[dict]:
    """Three classes of 1 s tones (300, 700, 1500 Hz) in noise, random phase and loudness, four
    speakers; the manifest's rows in path order. A probe that pairs every file with its own
    label separates them on MFCCs; one that pairs them in another order cannot."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True)
    t = np.arange(16_000) / 16_000
    rows = []
    for c, freq in enumerate((300, 700, 1500)):
        for k in range(per_class):
            wav = (rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
                   + 0.05 * rng.standard_normal(t.size))
            name = f"audio/f{c}_{k:02d}.wav"
            sf.write(folder / name, wav.astype(np.float32), 16_000)
            rows.append({"audio": name, "tone": f"hz{freq}", "speaker": f"s{k % 4}",
                         "split": "test" if k % 4 == 0 else "train"})
    return sorted(rows, key=lambda r: r["audio"])


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_any_row_order_gives_the_same_figures(checkpoint, tmp_path):
    rows = _tone_corpus(tmp_path, per_class=12)
    orders = {"path": rows, "reversed": rows[::-1],
              "shuffled": [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]}
    results = {}
    for name, ordered in orders.items():
        manifest = _write_rows(tmp_path / f"{name}.jsonl", ordered)
        tasks = [ProbeTask("tone", manifest, field="tone", split_by="manifest"),
                 ProbeTask("tone_speakers", manifest, field="tone", split_by="speaker")]
        results[name] = run_probe(checkpoint, tasks, tmp_path / f"out-{name}",
                                  ProbeSettings(seeds=2, head=HeadConfig(), progress=False,
                                                baselines=("mfcc",)))
    # a second way to the answer: pure tones in light noise are told apart on MFCCs
    for task in ("tone", "tone_speakers"):
        assert results["path"]["tasks"][task]["sets"]["mfcc"]["score"]["mean"] >= 0.9
    for name in ("reversed", "shuffled"):
        for task in ("tone", "tone_speakers"):
            a, b = results["path"]["tasks"][task], results[name]["tasks"][task]
            assert a["folds"] == b["folds"]
            for s in ("model", "mfcc"):
                assert a["sets"][s]["score"] == b["sets"][s]["score"], (name, task, s)
                assert a["sets"][s]["predictions"] == b["sets"][s]["predictions"]


def test_examples_and_folds_do_not_depend_on_row_order(tmp_path):
    rows = _tone_corpus(tmp_path, per_class=10)
    shuffled = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
    for split_by in ("manifest", "speaker", "within-speaker"):
        task = dict(field="tone", split_by=split_by, max_per_label=7, max_utterances=25)
        seen = []
        for name, ordered in (("a", rows), ("b", shuffled)):
            t = ProbeTask(name, _write_rows(tmp_path / f"{name}.jsonl", ordered), **task)
            examples, _ = read_examples(t)
            folds = make_folds(t, examples)
            seen.append(([(e.path, e.label) for e in examples],
                         [(f.name, [examples[i].path for i in f.train],
                           [examples[i].path for i in f.dev],
                           [examples[i].path for i in f.test]) for f in folds]))
        assert seen[0] == seen[1], split_by
        assert len(seen[0][0]) == 21  # 25 by hash, then at most 7 of each of the 3 tones


def test_a_corpus_in_another_folder_is_chosen_and_split_the_same_way(tmp_path):
    """Choices hash the audio path relative to the manifest's folder: the same corpus at two
    absolute locations keeps the same rows and makes the same folds (it did not when the hash
    took absolute paths: a test's count of kept rows changed with pytest's temporary folder)."""
    import shutil

    rows = _tone_corpus(tmp_path / "here", per_class=10)
    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere" / "deeper")
    for split_by in ("manifest", "speaker", "within-speaker"):
        task = dict(field="tone", split_by=split_by, max_per_label=7, max_utterances=25)
        seen = []
        for root in (tmp_path / "here", tmp_path / "elsewhere" / "deeper"):
            t = ProbeTask("t", _write_rows(root / "m.jsonl", rows), **task)
            examples, _ = read_examples(t)
            rel = [os.path.relpath(e.path, root) for e in examples]
            folds = [(f.name, [rel[i] for i in f.train], [rel[i] for i in f.dev],
                      [rel[i] for i in f.test]) for f in make_folds(t, examples)]
            seen.append((rel, folds))
        assert seen[0] == seen[1], split_by


def test_duplicated_audio_rows_are_named_and_used_once(tmp_path):
    rows = _tone_corpus(tmp_path, per_class=4)
    same = dict(rows[0])
    clash = dict(rows[1], tone="hz9999")
    manifest = _write_rows(tmp_path / "m.jsonl", rows + [same, clash])
    examples, rejected = read_examples(ProbeTask("t", manifest, field="tone", min_per_label=1))
    paths = [e.path for e in examples]
    assert len(paths) == len(set(paths)) == len(rows) - 1  # rows[1]: two labels, none used
    assert str(tmp_path / rows[0]["audio"]) in paths
    assert str(tmp_path / rows[1]["audio"]) not in paths
    reasons = {r.line.rpartition(":")[2]: r.reason for r in rejected}
    assert "same audio file as line 1" in reasons[str(len(rows) + 1)]
    assert "different labels" in reasons["2"] and "different labels" in reasons[str(len(rows) + 2)]


@pytest.mark.slow
def test_a_manifest_with_duplicated_rows_is_probed(checkpoint, tmp_path):
    rows = _tone_corpus(tmp_path, per_class=4)
    manifest = _write_rows(tmp_path / "m.jsonl", rows + rows[:3])
    results = run_probe(checkpoint, [ProbeTask("tone", manifest, field="tone")], tmp_path / "o",
                        ProbeSettings(seeds=1, head=FAST, progress=False, baselines=("mfcc",),
                                      sweep=False))
    entry = results["tasks"]["tone"]
    assert entry["utterances"] == len(rows)
    assert sum("same audio file" in r["reason"] for r in entry["rejected"]) == 3

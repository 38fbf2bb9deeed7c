"""``audio-ssl transcribe`` and ``evaluate``: output written as the run goes and resumed, and the
input rules of every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audio_ssl.cli import main
from audio_ssl.asr.transcribe import Transcriber, transcribe
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForCTC
from tests.conftest import small_model_config

VOCAB = ["<blank>", "|", "a", "b", "e", "o", "t"]


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory) -> Path:
    """A CTC model of random weights: its transcripts are nonsense, but deterministic."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ctc") / "ctc.ckpt"
    return save_native(Wav2Vec2ForCTC(small_model_config(), vocab_size=len(VOCAB)), path,
                       vocab=VOCAB)


def _transcriber(model: Path) -> Transcriber:
    """Small batches (one or two of tiny's files each), so that a run has many."""
    return Transcriber.from_path(model, device="cpu", max_batch_samples=200_000)


class Stop(KeyboardInterrupt):
    """What Ctrl-C (or a kill between two files) does to a run."""


def test_stopped_transcription_keeps_its_work_and_a_rerun_completes_it(ctc_model, data_dir,
                                                                       tmp_path, capsys):
    inputs = [str(data_dir / "tiny" / "audio"), str(tmp_path / "missing.flac")]
    transcriber = _transcriber(ctc_model)
    whole = tmp_path / "whole.jsonl"
    complete = transcribe(transcriber, inputs, output=whole)
    assert len(complete.transcriptions) == 23 and len(complete.failed) == 1

    out = tmp_path / "stopped.jsonl"
    seen = []

    def stop_after_five(r) -> None:
        seen.append(r)
        if len(seen) == 6:  # the missing file, then five transcriptions
            raise Stop

    with pytest.raises(Stop):
        transcribe(transcriber, inputs, output=out, on_result=stop_after_five)
    rows = out.read_text().splitlines()
    assert rows == whole.read_text().splitlines()[:5]  # each file written as it was done
    with open(out, "a") as f:  # and a kill tore the next row
        f.write(whole.read_text().splitlines()[5][:17])

    # the rerun (the command line) skips the five, drops the torn row, does the rest
    assert main(["transcribe", str(ctc_model), *inputs, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "transcribed 23 file(s) (5 by an earlier run)" in err
    assert f"audio-ssl: skipped {tmp_path / 'missing.flac'}: does not exist" in err
    assert out.read_text() == whole.read_text()  # the same file, row for row
    last = json.loads(out.read_text().splitlines()[-1])
    assert last == {"path": str(tmp_path / "missing.flac"), "error": "does not exist"}

    # a rerun of a complete output transcribes nothing and leaves it as it was
    before = out.read_text()
    again = transcribe(transcriber, inputs, output=out)
    assert again.resumed == 23 and len(again.transcriptions) == 23
    assert out.read_text() == before


def test_output_that_is_not_transcribe_output_is_refused_untouched(ctc_model, data_dir,
                                                                   tmp_path, capsys):
    out = tmp_path / "manifest.jsonl"
    manifest = '{"audio": "a.flac", "text": "hello"}\n{"audio": "b.flac", "text": "x"}\n'
    out.write_text(manifest)
    code = main(["transcribe", str(ctc_model), str(data_dir / "tiny" / "audio"), "-o", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert f"--output {out}:1: not a row of transcribe's output" in lines[0]
    assert out.read_text() == manifest


def test_transcribe_and_evaluate_apply_the_input_rules_and_name_every_skip(ctc_model, data_dir,
                                                                          tmp_path, capsys):
    """Too-short audio (under the model's receptive field, 400 samples here) and references
    that normalise to nothing are skipped as finetune skips them, with the same reasons; every
    skip is one stderr line naming the file, where it is listed and why."""
    import numpy as np
    import soundfile as sf

    clip = data_dir / "tiny" / "audio" / "cv_00.flac"
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, dtype=np.float32), 16000)
    too_short = "too short: 0.01 s < minimum 0.03 s (100 < 400 samples at 16000 Hz)"

    assert main(["transcribe", str(ctc_model), str(clip), str(short)]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(clip)]
    assert f"audio-ssl: skipped {short}: {too_short}" in captured.err.splitlines()
    assert "transcribed 1 file(s)" in captured.err and "1 skipped" in captured.err

    labelled = tmp_path / "test.tsv"
    labelled.write_text(f"{clip}\thello\n{short}\thello\n{clip}\t?!\n"
                        f"{tmp_path / 'gone.flac'}\thello\n")
    report = tmp_path / "report.jsonl"
    assert main(["evaluate", str(ctc_model), str(labelled), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert "1 utterance(s) decoded (greedy)" in captured.out and "3 skipped" in captured.out
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 3, captured.err
    assert f"audio-ssl: skipped {short} ({labelled}:2): {too_short}" in skipped
    assert f"audio-ssl: skipped {clip}: empty transcript after normalisation (was '?!')" in skipped
    assert any(line.startswith(f"audio-ssl: skipped {tmp_path / 'gone.flac'} ({labelled}:4): ")
               for line in skipped)
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r.get("reference") for r in rows] == ["hello", None, None, None]

"""Misuse of every command ends with one line that names the value or file and what was
expected, exit status 2, no traceback, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audio_ssl.cli import main
from audio_ssl.interop.export import save_native
from audio_ssl.models import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from tests.conftest import small_model_config


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("misuse")
    torch.manual_seed(0)
    good = save_native(Wav2Vec2ForPretraining(small_model_config()), root / "good.ckpt")
    save_native(Wav2Vec2ForCTC(small_model_config(), vocab_size=3), root / "ctc.ckpt",
                vocab=["<blank>", "|", "a"])
    (root / "reinit1.yaml").write_text("ctc: {reinit_layers: 1}\n")
    (root / "random.ckpt").write_bytes(bytes(range(256)) * 64)
    (root / "text.ckpt").write_text("this is not a checkpoint\n")
    (root / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "bad.yaml").write_text("train: {max_steps: 3\n  log_every: [\n")
    (root / "log0.yaml").write_text("train: {log_every: 0}\n")
    (root / "padmin.yaml").write_text("data: {min_samples: 8000, pad_min_samples: 8000}\n")
    (root / "ckpt0.yaml").write_text("train: {checkpoint_every: 0}\n")
    (root / "val0.yaml").write_text("train: {val_every: 0}\n")
    (root / "reinit9.yaml").write_text("ctc: {reinit_layers: 9}\n")
    (root / "lrscale.yaml").write_text("optim: {backbone_lr_scale: -0.1}\n")
    (root / "speed3.yaml").write_text("data: {speed_factors: [0.9, 3]}\n")
    (root / "a_file").write_text("I am a file\n")
    (root / "labelled.tsv").write_text("missing.flac\thello\n")
    return {"root": root, "good": good, **{p.stem: p for p in root.iterdir()}}


BAD_CHECKPOINTS = ("random", "text", "truncated")


def _cases(f: dict[str, Path], data: Path) -> list[tuple[str, list[str], str]]:
    out = f["root"] / "out"  # must not exist after any refusal
    ft = ["--train", str(f["labelled"]), "--valid", str(f["labelled"])]
    cases = [
        ("malformed YAML", ["pretrain", str(data), "-o", str(out), "--config", str(f["bad"])],
         "not valid YAML"),
        ("--max-steps 0", ["pretrain", str(data), "-o", str(out), "--max-steps", "0"],
         "train.max_steps (--max-steps) is 0: expected at least 1"),
        ("--max-steps -1", ["pretrain", str(data), "-o", str(out), "--max-steps", "-1"],
         "train.max_steps (--max-steps) is -1"),
        ("log_every 0", ["pretrain", str(data), "-o", str(out), "--config", str(f["log0"])],
         "train.log_every is 0"),
        ("pad_min_samples not under min_samples",
         ["pretrain", str(data), "-o", str(out), "--config", str(f["padmin"])],
         "data.pad_min_samples is 8000: expected 0 (skip files shorter than data.min_samples = "
         "8000) or 1 to 7999"),
        ("checkpoint_every 0",
         ["pretrain", str(data), "-o", str(out), "--config", str(f["ckpt0"])],
         "train.checkpoint_every is 0"),
        ("val_every 0", ["finetune", str(f["good"]), *ft, "-o", str(out), "--config",
                         str(f["val0"])], "train.val_every is 0"),
        ("reinit_layers 9", ["finetune", str(f["good"]), *ft, "-o", str(out), "--config",
                             str(f["reinit9"])], "ctc.reinit_layers must be between 0 and"),
        ("reinit_layers on a CTC model", ["finetune", str(f["ctc"]), *ft, "-o", str(out),
                                          "--config", str(f["reinit1"])],
         "ctc.reinit_layers is 1: expected 0 when continuing the CTC model"),
        ("backbone_lr_scale -0.1", ["finetune", str(f["good"]), *ft, "-o", str(out), "--config",
                                    str(f["lrscale"])], "optim.backbone_lr_scale is -0.1"),
        ("speed_factors 3", ["finetune", str(f["good"]), *ft, "-o", str(out), "--config",
                             str(f["speed3"])],
         "data.speed_factors[1] is 3.0: expected a speed between 0.5 and 2.0"),
        ("finetune --max-steps 0", ["finetune", str(f["good"]), *ft, "-o", str(out),
                                    "--max-steps", "0"], "train.max_steps (--max-steps) is 0"),
        ("finetune --devices 0", ["finetune", str(f["good"]), *ft, "-o", str(out),
                                  "--devices", "0"], "train.devices (--devices) is 0"),
        ("pretrain --num-nodes 0", ["pretrain", str(data), "-o", str(out), "--num-nodes", "0"],
         "train.num_nodes (--num-nodes) is 0"),
        ("pretrain into a file", ["pretrain", str(data), "-o", str(f["a_file"])],
         "is a file: expected a folder"),
        ("finetune into a file", ["finetune", str(f["good"]), *ft, "-o", str(f["a_file"])],
         "is a file: expected a folder"),
        ("extract into a file", ["extract", str(f["good"]), str(data), str(f["a_file"])],
         "is a file"),
    ]
    for bad in BAD_CHECKPOINTS:
        path = str(f[bad])
        cases += [
            (f"extract {bad}", ["extract", path, str(data), str(out)], path),
            (f"finetune {bad}", ["finetune", path, *ft, "-o", str(out)], path),
            (f"transcribe {bad}", ["transcribe", path, str(data)], path),
            (f"evaluate {bad}", ["evaluate", path, str(f["labelled"])], path),
            (f"convert {bad}", ["convert", path, str(out), "--to", "hf"], path),
            (f"pretrain --init {bad}", ["pretrain", str(data), "-o", str(out), "--init", path],
             path),
        ]
    return cases


def test_every_misuse_is_one_line_and_exit_2(files, data_dir, capsys):
    failures = []
    for name, argv, expected in _cases(files, data_dir / "tiny"):
        try:
            code = main(argv)
        except BaseException as err:  # noqa: BLE001  (a traceback is the failure we look for)
            failures.append(f"{name}: raised {type(err).__name__}: {err}")
            continue
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("audio-ssl: error:")]
        # it ends with the one error line (a line before it may say what was loaded)
        if code != 2 or not errors or errors != lines[-1:] or expected not in errors[0] \
                or "Traceback" in err:
            failures.append(f"{name}: exit {code}, stderr {lines!r}")
        if (files["root"] / "out").exists():
            failures.append(f"{name}: wrote {files['root'] / 'out'}")
    assert not failures, "\n".join(failures)
    assert files["a_file"].read_text() == "I am a file\n"


def _one_line_exit_2(argv: list[str], capsys) -> tuple[int | str, list[str]]:
    """Run the CLI -> (exit status, or what it raised; its stderr lines)."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's refusals exit
        code = stop.code
    except BaseException as err:  # noqa: BLE001  (a traceback is the failure we look for)
        code = f"raised {type(err).__name__}: {err}"
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# (name, argv with {data} {ckpt} {labelled} {out} {missing}, expected in the line, GPUs visible)
OPTION_CASES = [
    ("pretrain --accelerator gpu", "pretrain {missing} -o {out} --accelerator gpu",
     "argument --accelerator: gpu: no CUDA GPU is visible", 0),
    ("finetune --accelerator gpu",
     "finetune {ckpt} --train {labelled} --valid {labelled} -o {out} --accelerator gpu",
     "argument --accelerator: gpu: no CUDA GPU is visible", 0),
    ("demo --accelerator gpu", "demo -o {out} --accelerator gpu",
     "argument --accelerator: gpu: no CUDA GPU is visible", 0),
    ("extract --device cuda", "extract {ckpt} {data} {out} --device cuda",
     "argument --device: cuda: no CUDA GPU is visible", 0),
    ("transcribe --device cuda", "transcribe {ckpt} {data} -o {out}/t.jsonl --device cuda",
     "argument --device: cuda: no CUDA GPU is visible", 0),
    ("evaluate --device cuda:0", "evaluate {ckpt} {labelled} --device cuda:0",
     "argument --device: cuda:0: no CUDA GPU is visible", 0),
    ("probe --device cuda", "probe {ckpt} --task d={labelled} -o {out} --device cuda",
     "argument --device: cuda: no CUDA GPU is visible", 0),
    ("extract --device cuda:2 with one GPU", "extract {ckpt} {data} {out} --device cuda:2",
     "argument --device: cuda:2: 1 CUDA GPU(s) visible: expected cuda:0 to cuda:0", 1),
    ("extract --device nonsense", "extract {ckpt} {data} {out} --device gpu0",
     "argument --device: 'gpu0': expected cpu, cuda or cuda:N", 0),
    ("pretrain --devices 3 on 2 cores", "pretrain {missing} -o {out} --devices 3",
     "argument --devices: 3: without a GPU each device is a CPU process, and this machine has "
     "2 CPU core(s): expected at most 2", 0),
    ("finetune --devices 1000 --accelerator cpu",
     "finetune {ckpt} --train {labelled} --valid {labelled} -o {out} --devices 1000 "
     "--accelerator cpu", "argument --devices: 1000: without a GPU", 1),
    ("pretrain --devices 2 with one GPU", "pretrain {missing} -o {out} --devices 2",
     "argument --devices: 2: 1 CUDA GPU(s) visible here, expected at most 1", 1),
    ("extract --workers -1", "extract {ckpt} {data} {out} --workers -1",
     "argument --workers: -1: expected an integer at least 0", 0),
    ("extract --workers two", "extract {ckpt} {data} {out} --workers two",
     "argument --workers: 'two': expected an integer at least 0", 0),
    ("extract --batch-seconds 0", "extract {ckpt} {data} {out} --batch-seconds 0",
     "argument --batch-seconds: 0: expected a number greater than 0", 0),
    ("extract --chunk-seconds -5", "extract {ckpt} {data} {out} --chunk-seconds -5",
     "argument --chunk-seconds: -5: expected a number greater than 0", 0),
    ("extract --context-seconds -1", "extract {ckpt} {data} {out} --context-seconds -1",
     "argument --context-seconds: -1: expected a number at least 0", 0),
    ("extract --shard-mb 0", "extract {ckpt} {data} {out} --shards --shard-mb 0",
     "argument --shard-mb: 0: expected a number greater than 0", 0),
    ("transcribe --beam-size 0", "transcribe {ckpt} {data} -o {out}/t.jsonl --beam-size 0",
     "argument --beam-size: 0: expected an integer at least 1", 0),
    ("evaluate --beam-size -3", "evaluate {ckpt} {labelled} --report {out}/r.jsonl "
     "--beam-size -3", "argument --beam-size: -3: expected an integer at least 1", 0),
    ("demo --minutes 0", "demo -o {out} --minutes 0",
     "argument --minutes: 0: expected a number greater than 0", 0),
    ("demo --minutes inf", "demo -o {out} --minutes inf",
     "argument --minutes: inf: expected a number greater than 0", 0),
    ("demo --pretrain-steps 0", "demo -o {out} --pretrain-steps 0",
     "argument --pretrain-steps: 0: expected an integer at least 1", 0),
    ("demo --finetune-steps -1", "demo -o {out} --finetune-steps -1",
     "argument --finetune-steps: -1: expected an integer at least 0", 0),
    ("plot --max-files 0", "plot {ckpt} --data {data} -o {out}/u.png --max-files 0",
     "argument --max-files: 0: expected an integer at least 1", 0),
    ("probe --seeds 0", "probe {ckpt} --task d={labelled} -o {out} --seeds 0",
     "argument --seeds: 0: expected an integer at least 1", 0),
    ("targets --clusters 1", "targets {data} -o {out} --clusters 1",
     "argument --clusters: 1: expected an integer at least 2", 0),
]


@pytest.mark.parametrize("name,argv,expected,gpus", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_hardware_counts_and_sizes_are_checked_as_parsed(name, argv, expected, gpus, files,
                                                         data_dir, tmp_path, monkeypatch, capsys):
    """Options naming hardware, counts or sizes are refused as they are parsed, against the
    machine (here: 2 cores and ``gpus`` CUDA GPUs), before any input is read: one line naming
    the option, the value and what was expected, exit status 2, nothing written."""
    import os

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "out"
    args = argv.format(data=data_dir / "tiny", ckpt=files["good"], labelled=files["labelled"],
                       out=out, missing=tmp_path / "missing").split()
    code, lines = _one_line_exit_2(args, capsys)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("audio-ssl: error: ") and expected in lines[0], lines
    assert not out.exists()


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: a mode 555 one, or for root (whom modes do not stop)
    sysfs, which refuses new entries to everyone."""
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no folder refuses writes")
    return Path("/sys/kernel")


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only", "under read-only"])
@pytest.mark.parametrize("command", ["demo", "pretrain"])
def test_output_folder_that_cannot_be_written_is_one_line(command, where, files, data_dir,
                                                          tmp_path, monkeypatch, capsys):
    """``-o`` a file, a path under a file, or a folder one may not write: one line naming the
    path and what was expected, exit status 2, before any stage starts: before the data's
    headers are read (an empty header cache, as on a fresh machine, would print progress)."""
    monkeypatch.setenv("AUDIO_SSL_CACHE", str(tmp_path / "empty-cache"))
    read_only = _read_only_folder(tmp_path)
    output = {"a file": files["a_file"], "under a file": files["a_file"] / "run",
              "read-only": read_only, "under read-only": read_only / "demo" / "run"}[where]
    argv = {"demo": ["demo", "-o", str(output), "--minutes", "0.1", "--pretrain-steps", "1"],
            "pretrain": ["pretrain", str(data_dir / "tiny"), "-o", str(output),
                         "--max-steps", "1"]}[command]
    code, lines = _one_line_exit_2(argv, capsys)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("audio-ssl: error: ") and str(output) in lines[0], lines
    assert "expected a folder" in lines[0], lines
    assert files["a_file"].read_text() == "I am a file\n"


def test_data2vec_that_cannot_fit_is_one_line_before_anything_is_written(data_dir, tmp_path,
                                                                         capsys):
    """data2vec's student runs on ``clones`` copies of the batch: a clones x batch whose
    activations alone exceed the machine's memory is refused in one line naming both settings
    (the bound: tests/models/test_data2vec.py), before the data is read or the folder made."""
    from audio_ssl import config
    from audio_ssl.models.data2vec import student_activation_bytes
    from audio_ssl.tasks.run import device_memory

    have, _ = device_memory("cpu")
    tiny = config.load("tiny", None, overrides={"model": {"objective": "data2vec",
                                                          "data2vec": {"clones": 1}}})
    per_clone = student_activation_bytes(tiny.model, tiny.data.max_batch_samples)
    clones = 2 * (1 + have // per_clone)  # twice what would fill the memory
    (tmp_path / "d2v.yaml").write_text(f"model:\n  data2vec:\n    clones: {clones}\n")
    out = tmp_path / "run"
    code, lines = _one_line_exit_2(["pretrain", str(data_dir / "tiny"), "--objective", "data2vec",
                                    "--config", str(tmp_path / "d2v.yaml"), "-o", str(out),
                                    "--max-steps", "1", "--accelerator", "cpu"], capsys)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert f"model.data2vec.clones {clones}" in lines[0] and "max_batch_samples" in lines[0]
    assert "expected fewer clones" in lines[0]
    assert not out.exists()

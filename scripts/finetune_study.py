"""Does pretraining help? CTC fine-tuning of a pretrained model against the same network from
scratch, with all training labels and with 10% of them, on three labelled corpora.

    python scripts/finetune_study.py --pretrained runs/shared-tiny/checkpoints/last.ckpt \\
        --output runs/finetune-study --steps fsdd=600 espeak=400 ljspeech=400 --lr 2e-3 --no-masks

- fsdd: ../shared/data/fsdd, the official split (test = takes 0-4); 100 training clips held out
  for validation (checkpoint choice).
- espeak: LJSpeech's sentences spoken by eSpeak NG voices (audio_ssl.corpora.corpus, installed by
  pip); the test split has voices and sentences never heard in training; 60 training utterances
  held out for validation.
- ljspeech: ../shared/data/ljspeech has only a train split: its last 34 utterances are the test
  set, the 20 before them validation.

For each corpus: {pretrained, scratch} x {100%, 10% of the training labels}, the same fine-tuning
settings (tiny preset, fixed update count per corpus, and the --lr / --no-masks overrides) except
that scratch runs neither freeze their random backbone for the first updates nor train it at a
lower learning rate (`optim.backbone_lr_scale`). `--config YAML`
adds fine-tuning overrides to both arms (`ctc: {freeze_updates: 800}`, `optim: {lr: 5e-4}`;
the study's flags win over it); `--inits pretrained` runs one arm, to screen a recipe before
paying for its scratch baseline. The test CER and WER of each run's best checkpoint
(lowest validation WER, then CER; `train: {best_by: cer}` in the YAML for CER first) and of its
last are measured with `evaluate` (greedy decoding). Runs that
finished are skipped, an interrupted one resumes: rerun the same command to continue.
Prints one JSON line per run; writes scripts/results/finetune_study.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import console  # noqa: E402

CORPORA = ("fsdd", "espeak", "ljspeech")
LABELS = (1.0, 0.1)
INITS = ("pretrained", "scratch")


def _rows(manifest: Path, split: str | None = None) -> list[dict]:
    root = manifest.parent
    out = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("text") and (split is None or row.get("split") == split):
            out.append({"audio": str((root / row["audio"]).resolve()), "text": row["text"],
                        "speaker": row.get("speaker")})
    return out


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_espeak(data: Path, out: Path, minutes: float) -> Path:
    """The espeak corpus (made once): LJSpeech's sentences, normalised, spoken by eSpeak NG voices
    with audio_ssl's own generator (pip, no system package); its test split has voices and
    sentences never heard in training."""
    from audio_ssl.corpora.corpus import make_corpus

    lines = (data / "ljspeech" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [" ".join(re.sub(r"[^a-z' ]+", " ", json.loads(line)["text"].lower()
                             .replace("-", " ")).split()) for line in lines]
    make_corpus(out, minutes=minutes, seed=0, sentences=texts, progress=False)
    return out / "manifest.jsonl"


def pack(data: Path, out: Path, corpora: dict[str, Path], opus: set[str]) -> None:
    """Copy corpora (manifest + audio) to ``out`` to move them to another machine; the corpora
    named in ``opus`` are re-encoded as Ogg Opus (libsndfile's default bitrate) to fit a small
    transfer. The manifests keep every field; ``audio`` points at the copies."""
    import soundfile as sf

    for name, manifest in corpora.items():
        dst = out / name
        (dst / "audio").mkdir(parents=True, exist_ok=True)
        lines = []
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            src = manifest.parent / row["audio"]
            if name in opus:
                audio, sr = sf.read(src, dtype="float32")
                rel = f"audio/{src.stem}.opus"
                sf.write(dst / rel, audio, sr, format="OGG", subtype="OPUS")
            else:
                rel = f"audio/{src.name}"
                shutil.copyfile(src, dst / rel)
            lines.append(json.dumps({**row, "audio": rel}))
        (dst / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def splits(corpus: str, data: Path, work: Path, args) -> dict[str, Path] | str:
    """Manifests train, train10, valid, test of ``corpus`` (or why it is unavailable)."""
    rng = random.Random(0)
    if corpus == "fsdd":
        train, test = _rows(data / "fsdd/manifest.jsonl", "train"), _rows(data / "fsdd/manifest.jsonl", "test")
        rng.shuffle(train)
        valid, train = train[:100], train[100:]
    elif corpus == "ljspeech":
        rows = _rows(data / "ljspeech/manifest.jsonl", "train")
        test, valid, train = rows[-34:], rows[-54:-34], rows[:-54]
        rng.shuffle(train)
    elif corpus == "espeak":
        made = (args.espeak_corpus / "manifest.jsonl" if args.espeak_corpus else
                make_espeak(data, work / "espeak-corpus", args.espeak_minutes))
        train, test = _rows(made, "train"), _rows(made, "test")
        rng.shuffle(train)
        valid, train = train[:60], train[60:]
    else:
        raise ValueError(corpus)
    few = train[: max(1, round(0.1 * len(train)))]
    folder = work / corpus
    return {"train": _write(train, folder / "train.jsonl"), "train10": _write(few, folder / "train10.jsonl"),
            "valid": _write(valid, folder / "valid.jsonl"), "test": _write(test, folder / "test.jsonl")}


def run_one(name: str, corpus: str, init: str, labels: float, manifests: dict[str, Path],
            args) -> dict:
    from audio_ssl.asr.transcribe import evaluate
    from audio_ssl.tasks.finetune import finetune

    out = args.output / "runs" / name
    done = args.output / "results" / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    steps = args.steps[corpus]
    overrides = {
        "train": {"max_steps": steps, "val_every": max(1, steps // 5), "log_every": 10},
        "data": {"num_workers": args.workers, "min_samples": 400},
    }
    if args.lr is not None:
        overrides["optim"] = {"lr": args.lr}
    if args.no_masks:
        overrides.setdefault("ctc", {}).update(time_mask={"prob": 0.0}, channel_mask={"prob": 0.0})
    if init == "scratch":  # a random backbone is never frozen nor slowed, whatever the config says
        overrides.setdefault("ctc", {})["freeze_updates"] = 0
        overrides.setdefault("optim", {})["backbone_lr_scale"] = 1.0
    resume = (out / "checkpoints" / "last.ckpt").is_file()
    start = time.perf_counter()
    result = finetune(args.pretrained, manifests["train" if labels == 1.0 else "train10"],
                      manifests["valid"], out, preset="tiny", config_yaml=args.config,
                      overrides=overrides,
                      from_scratch=init == "scratch", resume=resume, progress=False,
                      accelerator=args.accelerator)
    train_seconds = time.perf_counter() - start
    ckpt = result.best_checkpoint or result.last_checkpoint
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    ev = evaluate(ckpt, manifests["test"], report=out / "test_report.jsonl", device=device)
    last = (evaluate(result.last_checkpoint, manifests["test"], device=device)
            if result.last_checkpoint and result.best_checkpoint else ev)
    best = result.best or {}
    record = {
        "run": name, "corpus": corpus, "init": init, "labels": labels,
        "train_utterances": result.train_utterances, "train_hours": round(result.train_hours, 4),
        "steps": result.steps, "train_minutes": round(train_seconds / 60, 2),
        "best_step": best.get("step"), "valid_wer": best.get("valid/wer"),
        "valid_cer": best.get("valid/cer"), "test_utterances": len(ev.utterances),
        "test_wer": ev.wer, "test_cer": ev.cer,
        "last_test_wer": last.wer, "last_test_cer": last.cer,  # the last update's checkpoint
        "history": result.history,
        "examples": [{"reference": u.reference, "hypothesis": u.hypothesis}
                     for u in ev.utterances[:3]],
    }
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=1))
    return record


def table(records: list[dict], blocked: dict[str, str]) -> str:
    lines = ["| corpus | labels | train utts | updates | pretrained CER | scratch CER | "
             "pretrained WER | scratch WER |", "|---|---|---|---|---|---|---|---|"]
    for corpus in CORPORA:
        if corpus in blocked:
            lines.append(f"| {corpus} | | | | blocked: {blocked[corpus]} | | | |")
            continue
        for labels in LABELS:
            by = {r["init"]: r for r in records if r["corpus"] == corpus and r["labels"] == labels}
            if not by:
                continue
            p, s = by.get("pretrained"), by.get("scratch")
            any_ = p or s

            def pct(r, key):
                return f"{100 * r[key]:.1f}%" if r else "not run"

            lines.append(
                f"| {corpus} | {int(labels * 100)}% | {any_['train_utterances']} | {any_['steps']} | "
                f"{pct(p, 'test_cer')} | {pct(s, 'test_cer')} | {pct(p, 'test_wer')} | "
                f"{pct(s, 'test_wer')} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = [c for c in CORPORA if any(r["corpus"] == c for r in records)]
    fig, axes = plt.subplots(1, len(corpora), figsize=(max(6.0, 4.2 * len(corpora)), 4.0),
                             squeeze=False)
    styles = {("pretrained", 1.0): ("C0", "-"), ("scratch", 1.0): ("C1", "-"),
              ("pretrained", 0.1): ("C0", "--"), ("scratch", 0.1): ("C1", "--")}
    for ax, corpus in zip(axes[0], corpora):
        for r in records:
            if r["corpus"] != corpus or not r["history"]:
                continue
            color, ls = styles[(r["init"], r["labels"])]
            steps = [h["step"] for h in r["history"]]
            cer = [100 * h["valid/cer"] for h in r["history"]]
            ax.plot(steps, cer, color=color, ls=ls, marker=".",
                    label=f"{r['init']}, {int(100 * r['labels'])}% labels "
                          f"(test CER {100 * r['test_cer']:.0f}%)")
        ax.set_title(corpus)
        ax.set_xlabel("update")
        ax.set_ylabel("validation CER (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("CTC fine-tuning of the tiny model: pretrained (blue) vs. from scratch (orange)\n"
                 "solid: all training labels, dashed: 10% of them", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", type=Path, required=True,
                        help="pretrained checkpoint (runs/shared-tiny/checkpoints/last.ckpt)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "finetune-study")
    parser.add_argument("--results", type=Path, default=ROOT / "scripts" / "results")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--steps", nargs="+", default=["fsdd=400", "espeak=300", "ljspeech=300"],
                        help="updates per run, CORPUS=N")
    parser.add_argument("--labels", nargs="+", type=float, default=list(LABELS),
                        choices=LABELS, help="fractions of the training labels to run")
    parser.add_argument("--lr", type=float, default=None, help="override the tiny preset's lr")
    parser.add_argument("--no-masks", action="store_true",
                        help="no time or channel masks (the paper's are heavy for short runs)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML of fine-tuning overrides for both arms (e.g. ctc: "
                        "{freeze_updates: 500}); the study's own settings and flags (--lr, "
                        "--no-masks, updates, workers) win over it; a scratch arm never freezes "
                        "and trains its backbone at the full lr")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS,
                        help="which arms to run (default: both)")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers")
    parser.add_argument("--espeak-minutes", type=float, default=60.0,
                        help="minutes of audio in the espeak corpus (default: 60)")
    parser.add_argument("--espeak-corpus", type=Path, default=None,
                        help="an espeak corpus already made (its folder), instead of making one")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--pack", type=Path, default=None,
                        help="only copy fsdd, ljspeech and the espeak corpus (LJSpeech and espeak "
                        "as Opus) to this folder, to run the study on another machine")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: tabulate the runs that have finished")
    parser.add_argument("--no-tables", action="store_true",
                        help="run only: leave the results table and plot alone")
    args = parser.parse_args()
    if not args.pretrained.exists() and not args.collect and not args.pack:
        print(f"finetune_study: --pretrained {args.pretrained}: no such checkpoint (expected a "
              f"file or folder load_model reads)", file=sys.stderr)
        return 2
    console.configure()  # each Lightning line once, no advertisement (as the CLI prints)
    args.steps = {k: int(v) for k, v in (s.split("=") for s in args.steps)}
    work = args.output / "data"
    if args.pack:
        espeak = make_espeak(args.data, args.espeak_corpus or work / "espeak-corpus",
                             args.espeak_minutes)
        corpora = {"fsdd": args.data / "fsdd/manifest.jsonl",
                   "ljspeech": args.data / "ljspeech/manifest.jsonl", "espeak": espeak}
        pack(args.data, args.pack, corpora, opus={"ljspeech", "espeak"})
        return 0
    records, blocked = [], {}
    for corpus in args.corpora:
        manifests = splits(corpus, args.data, work, args)
        if isinstance(manifests, str):
            blocked[corpus] = manifests
            print(json.dumps({"corpus": corpus, "blocked": manifests}), flush=True)
            continue
        for labels in args.labels:
            for init in args.inits:
                name = f"{corpus}-{init}-{int(labels * 100)}"
                finished = args.output / "results" / f"{name}.json"
                if args.collect and not finished.is_file():
                    continue
                record = run_one(name, corpus, init, labels, manifests, args)
                records.append(record)
                print(json.dumps({k: v for k, v in record.items()
                                  if k not in ("history", "examples")}), flush=True)
    if args.no_tables:
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    summary = {"pretrained": str(args.pretrained), "steps": args.steps, "blocked": blocked,
               "runs": records}
    (args.results / "finetune_study.json").write_text(json.dumps(summary, indent=1))
    (args.results / "finetune_study.md").write_text(table(records, blocked))
    if records:
        plot(records, args.results / "finetune_study.png")
    print(table(records, blocked))
    return 0


if __name__ == "__main__":
    sys.exit(main())

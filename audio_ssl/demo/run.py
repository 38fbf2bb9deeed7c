"""``audio-ssl demo``: every stage of the workflow on a corpus it makes, each shown working.

Stages: an eSpeak NG spoken-digit corpus (some voices held out) -> pretraining of ``tiny`` (its
objective, CPC, unless ``--config`` names another) with a one-line verdict on the plateau -> a
PNG of its curves -> extraction of every context layer -> a digit probe of those features
against MFCCs on the held-out voices -> CTC fine-tuning -> CER on the held-out voices with
transcripts beside their references -> a summary table of what was learned, how long each stage
took and where everything is.

Run again with the same ``--output``, finished stages are reused and an interrupted one resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from audio_ssl import console


@dataclass
class DemoSettings:
    output: Path
    minutes: float = 20.0
    pretrain_steps: int = 500
    finetune_steps: int = 600
    seed: int = 0
    preset: str = "tiny"
    config: Path | None = None
    accelerator: str = "auto"
    progress: bool = True


@dataclass
class _Report:
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)  # stage, result, where, s

    def add(self, stage: str, result: str, where: Path | str, seconds: float) -> None:
        self.rows.append((stage, result, str(where), seconds))

    def table(self) -> str:
        w0 = max(len(r[0]) for r in self.rows)
        w1 = max(len(r[1]) for r in self.rows)
        lines = [f"{'stage':<{w0}}  {'what it showed':<{w1}}  {'time':>7}  where",
                 f"{'-' * w0}  {'-' * w1}  {'-' * 7}  -----"]
        lines += [f"{s:<{w0}}  {r:<{w1}}  {_clock(t):>7}  {where}" for s, r, where, t in self.rows]
        lines.append(f"{'total':<{w0}}  {'':<{w1}}  {_clock(sum(r[3] for r in self.rows)):>7}")
        return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _say(text: str) -> None:
    if not console.quiet():
        print(text, flush=True)


def _finished(run: Path, steps: int) -> bool:
    try:
        return json.loads((run / "summary.json").read_text())["steps"] >= steps
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_settings(s: DemoSettings) -> None:
    """A demo folder serves one set of settings: rerunning it reuses finished stages, so other
    settings there would mix two demos. Raises FileExistsError naming the difference, and
    :class:`~audio_ssl.io.OutputFolderError` for a folder that cannot be made or written."""
    from audio_ssl.io import atomic_write_text, make_output_folder

    make_output_folder(s.output)  # before anything else: a file there, or no right to write

    wanted = {"minutes": s.minutes, "pretrain_steps": s.pretrain_steps,
              "finetune_steps": s.finetune_steps, "seed": s.seed, "preset": s.preset,
              "config": str(s.config) if s.config else None}
    path = s.output / "demo.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if before != wanted:
            changed = sorted(k for k in wanted if not before or before.get(k) != wanted[k])
            raise FileExistsError(
                f"{s.output} holds a demo run with other settings ({', '.join(changed)}): "
                f"choose another --output, or delete it to start again")
    atomic_write_text(path, json.dumps(wanted, indent=2) + "\n", fsync=False)


def run_demo(s: DemoSettings) -> int:
    """Run every stage; 0 when all of them ran (whether pretraining left the plateau is the
    verdict printed, not an error)."""
    _check_settings(s)
    return _Demo(s).run()


class _Demo:
    """The stages in order; each says what it does, runs (or reuses what a previous run
    finished) and adds one row to the closing table."""

    def __init__(self, settings: DemoSettings):
        self.s = settings
        self.out = settings.output
        self.report = _Report()
        self.manifest = self.out / "corpus" / "manifest.jsonl"
        self.checkpoint = self.out / "pretrain" / "checkpoints" / "last.ckpt"
        # the CTC model transcribed: the last checkpoint, not the best, since fine-tuning
        # validates on the unseen voices (to show the curve) and choosing by it would choose on
        # the test
        self.ctc_checkpoint = self.out / "finetune" / "checkpoints" / "last.ckpt"
        self.features = self.out / "features"
        self.rows: list[dict] = []

    def run(self) -> int:
        stages = [self.corpus, self.pretrain, self.plot, self.extract, self.probe]
        if self.s.finetune_steps > 0:
            stages += [self.finetune, self.transcribe]
        ok = True
        for number, stage in enumerate(stages, 1):
            start = time.perf_counter()
            name, result, where, worked = stage(f"[{number}/{len(stages)}]")
            self.report.add(name, result, where, time.perf_counter() - start)
            ok = ok and worked
        print("\nWhat the demo showed:\n" + self.report.table())
        print(f"\nSee the curves: {self.out / 'pretrain.png'}   Each stage on your own data: "
              f"audio-ssl pretrain | plot | extract | finetune | evaluate --help")
        return 0 if ok else 1

    def corpus(self, tag: str):
        from audio_ssl.corpora.corpus import make_corpus

        _say(f"{tag} corpus: {self.s.minutes:g} min of spoken digits from eSpeak NG voices")
        make_corpus(self.manifest.parent, minutes=self.s.minutes, seed=self.s.seed,
                    progress=self.s.progress)
        self.rows = [json.loads(line) for line in self.manifest.read_text().splitlines()]
        voices = {r["speaker"] for r in self.rows}
        self.test_voices = {r["speaker"] for r in self.rows if r["split"] == "test"}
        minutes = sum(r["duration"] for r in self.rows) / 60
        _say(f"      {len(self.rows)} files, {minutes:.1f} min, {len(voices)} voices "
             f"({len(self.test_voices)} heard only in the test split)")
        return ("corpus", f"{len(self.rows)} files, {minutes:.0f} min, {len(self.test_voices)} "
                f"of {len(voices)} voices held out", self.manifest, True)

    def pretrain(self, tag: str):
        from audio_ssl import config
        from audio_ssl.plot import load_run
        from audio_ssl.tasks.monitor import escape_step
        from audio_ssl.tasks.run import find_last_checkpoint, pretrain

        s, run = self.s, self.out / "pretrain"
        _say(f"{tag} pretrain: {s.preset}, {s.pretrain_steps} updates of the self-supervised "
             f"loss on all files (no transcripts used)")
        if _finished(run, s.pretrain_steps):
            summary = json.loads((run / "summary.json").read_text())
            first, last, uniform = summary["first"], summary["last"], summary["uniform_loss"]
            _say("      (finished before: reused)")
        else:
            cfg = config.load(s.preset, s.config, overrides={
                "train": {"max_steps": s.pretrain_steps, "seed": s.seed}})
            result = pretrain(self.manifest, cfg, run,
                              resume=find_last_checkpoint(run) is not None,
                              progress=s.progress, accelerator=s.accelerator)
            first, last, uniform = result.first, result.last, result.uniform_loss
        key = "train/contrastive" if "train/contrastive" in last else "train/masked_loss"
        steps, losses = load_run(run).series(key)
        escape = escape_step(list(zip(steps, losses)), uniform) or "never"
        tail = [v for step, v in zip(steps, losses) if step > steps[-1] - 50]
        ratio = sum(tail) / len(tail) / uniform
        verdict = "it learned" if ratio < 0.85 else "still near the plateau"
        nearest = ""  # CPC: how well it tells the next frame from its distractors
        if "train/accuracy_k1" in last:
            nearest = (f" (next frame {first['train/accuracy_k1']:.2f} -> "
                       f"{last['train/accuracy_k1']:.2f})")
        _say(f"      loss {first[key]:.2f} -> {ratio * uniform:.2f} (last 50 updates) = "
             f"{ratio:.2f} x log(K+1) ({uniform:.2f}); below 0.9 x from update {escape}; "
             f"accuracy {first['train/accuracy']:.2f} -> {last['train/accuracy']:.2f}{nearest}: "
             f"{verdict}")
        return ("pretrain", f"loss {ratio:.2f} x log(K+1), below 0.9 x from update {escape}",
                self.checkpoint, True)

    def plot(self, tag: str):
        from audio_ssl.plot import plot_runs

        png = plot_runs([self.out / "pretrain"], self.out / "pretrain.png",
                        title="audio-ssl demo: pretraining")
        _say(f"{tag} plot: the pretraining curves in {png}")
        return "plot", "loss, accuracy, lr, grad norm, throughput", png, True

    def extract(self, tag: str):
        from audio_ssl.extract.pipeline import extract_folder

        _say(f"{tag} extract: every context layer of every file")
        done = extract_folder(self.checkpoint, self.manifest, self.features, layers="all",
                              progress=self.s.progress)
        line = f"{done.extracted + done.skipped} files"
        if done.failures:
            line += f", {len(done.failures)} failed (in {self.features / 'failures.jsonl'})"
        _say(f"      {line}")
        return "extract", line, self.features / "index.jsonl", done.ok

    def probe(self, tag: str):
        from audio_ssl.demo.probe import digit_probe

        _say(f"{tag} probe: which digit is it, for voices the probe never heard")
        try:
            probe = digit_probe(self.features, self.manifest)
            _say(f"      {probe.line()}")
            line = (f"digits, unseen voices: features {100 * probe.features:.0f} %, "
                    f"MFCC {100 * probe.mfcc:.0f} %")
        except ValueError as err:  # a corpus too small for it (--minutes)
            line = f"skipped: {err}"
            _say(f"      {line}")
        return "probe", line, self.features, True

    def finetune(self, tag: str):
        from audio_ssl.plot import load_run
        from audio_ssl.tasks.finetune import finetune

        s, run = self.s, self.out / "finetune"
        _say(f"{tag} fine-tune: CTC on the train voices' transcripts, {s.finetune_steps} updates")
        if _finished(run, s.finetune_steps) and self.ctc_checkpoint.is_file():
            _say("      (finished before: reused)")
        else:
            finetune(self.checkpoint, self.manifest, self.manifest, run, train_split="train",
                     valid_split="test", progress=s.progress,
                     resume=self.ctc_checkpoint.is_file(),
                     accelerator=s.accelerator,
                     overrides=finetune_overrides(s.finetune_steps, s.seed,
                                                  head_kernel=self.head_kernel()))
        _, history = load_run(run).series("valid/cer")
        return ("fine-tune", f"{s.finetune_steps} CTC updates, CER on unseen voices " + " -> ".join(
            f"{100 * cer:.0f} %" for cer in history), self.ctc_checkpoint, True)

    def head_kernel(self) -> int:
        """Frames the CTC head reads: 5 on CPC's causal network, so each letter hears 40 ms of
        what follows (docs/demo.md measures it); 1, the linear head HF and fairseq have, on a
        Transformer, which hears the whole clip already."""
        from audio_ssl import config

        return 5 if config.load(self.s.preset, self.s.config).model.objective == "cpc" else 1

    def transcribe(self, tag: str):
        from audio_ssl.asr.transcribe import evaluate

        run = self.out / "finetune"
        _say(f"{tag} transcribe the held-out voices: greedy, and beam search with the train "
             "transcripts' words and a bigram LM of them (audio-ssl lm)")
        lm, lexicon = _train_lm(self.rows, run)
        greedy = evaluate(self.ctc_checkpoint, self.manifest, split="test",
                          report=run / "test_report.jsonl")
        beam = evaluate(self.ctc_checkpoint, self.manifest, split="test",
                        report=run / "test_report_lm.jsonl", lm=lm, lexicon=lexicon)
        with_lm = {u.path: u.hypothesis for u in beam.utterances}
        shown = sorted(greedy.utterances, key=lambda u: u.path)[:6]
        width = max(len(u.reference) for u in shown)
        hyp_width = max(len(u.hypothesis) for u in shown)
        _say(f"      {'reference':<{width}}  |  {'greedy':<{hyp_width}}  |  with words + LM")
        for u in shown:
            _say(f"      {u.reference:<{width}}  |  {u.hypothesis:<{hyp_width}}  |  "
                 f"{with_lm.get(u.path, '')}")
        _say(f"      {len(greedy.utterances)} utterances of {len(self.test_voices)} unseen voices: "
             f"greedy CER {100 * greedy.cer:.1f} % (WER {100 * greedy.wer:.1f} %), with words "
             f"+ LM CER {100 * beam.cer:.1f} % (WER {100 * beam.wer:.1f} %)")
        return ("transcribe", f"CER on unseen voices: greedy {100 * greedy.cer:.1f} %, "
                f"words + LM {100 * beam.cer:.1f} %", run / "test_report.jsonl", True)


def finetune_overrides(steps: int, seed: int, head_kernel: int = 1) -> dict:
    """The demo's CTC recipe for ``steps`` updates (see the README's demo section), with a head
    over ``head_kernel`` frames (``ctc.head_kernel``)."""
    return {"train": {"max_steps": steps, "val_every": max(1, steps // 3), "seed": seed + 1},
            "ctc": {"freeze_updates": 0, "time_mask": {"prob": 0.0},
                    "channel_mask": {"prob": 0.0}, "head_kernel": head_kernel},
            "optim": {"lr": 5e-3}}


def _train_lm(rows: list[dict], folder: Path) -> tuple[Path, Path]:
    """A word bigram LM (ARPA) and a lexicon of the train split's transcripts, for beam search."""
    from audio_ssl.asr.lm import build_lm_file
    from audio_ssl.io import atomic_write_text

    text = folder / "train_text.txt"
    atomic_write_text(text, "".join(r["text"] + "\n" for r in rows if r["split"] == "train"),
                      fsync=False)
    built = build_lm_file(text, folder / "lm.arpa", order=2, lexicon=folder / "lexicon.txt")
    return built.path, built.lexicon


__all__ = ["DemoSettings", "run_demo", "finetune_overrides"]

"""The `audio-ssl` command line: every command's options (:func:`build_parser`) and their
checks (:func:`parse_args`). What each command runs is in :mod:`audio_ssl.cli`.

Every option that names a count, a size or hardware is checked here, as it is parsed: counts and
sizes by their ``type=`` function (:func:`at_least`), ``--accelerator`` and ``--device`` against
the GPUs torch sees, ``--devices`` against the GPUs or CPU cores of the machine once
``--accelerator`` is known (:func:`parse_args`). A refused value is one line on stderr, naming the
option, the value and what was expected, and exit status 2 (:class:`OneLineParser`); nothing has
been read or written by then.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from audio_ssl.config import OBJECTIVES

DESCRIPTION = """\
audio-ssl: self-supervised speech representation learning from raw audio: pretrain (wav2vec 2.0,
HuBERT, BEST-RQ, data2vec 2.0, CPC / wav2vec, masked reconstruction), extract features, probe
them, fine-tune for speech recognition (CTC), transcribe and evaluate, convert checkpoints.
"""
EPILOG = "Run `audio-ssl COMMAND --help` for each command's options."


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``audio-ssl: error: argument --x: ...``,
    and the command's --help to read) and exit status 2, as every other refusal of the CLI;
    subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"audio-ssl: error: {message} (see {self.prog} --help)\n")


def at_least(minimum: float, kind: type = int, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: the text as ``kind`` (int or float), refused unless it is at least
    ``minimum`` (greater than it with ``strict``); NaN and infinities are refused too."""
    what = "an integer" if kind is int else "a number"
    bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"

    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what} {bound}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text}: expected {what} {bound}")
        return value

    check.__name__ = f"{kind.__name__} {bound}"
    return check


POSITIVE_INT = at_least(1)  # steps, beam widths, seeds, file counts
COUNT = at_least(0)  # worker processes, steps that may be skipped
POSITIVE_SECONDS = at_least(0.0, float, strict=True)  # durations and sizes


def _no_gpu() -> str:
    return "no CUDA GPU is visible here (torch.cuda.is_available() is False)"


def accelerator(text: str) -> str:
    """``--accelerator``: ``gpu`` only where torch sees a CUDA GPU (choices are checked after)."""
    if text == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"gpu: {_no_gpu()}; expected cpu or auto")
    return text


def device(text: str) -> str:
    """``--device``: a torch device name (cpu, cuda, cuda:N, ...); a CUDA one only where that GPU
    is visible."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: {_no_gpu()}; expected cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: {count} CUDA GPU(s) visible: expected cuda:0 to cuda:{count - 1}")
    return text


def check_devices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--devices`` of pretrain and finetune: at most the GPUs visible when training on GPUs
    (``--accelerator gpu``, or ``auto`` with one visible), else at most ``os.cpu_count()`` CPU
    processes. Values below 1 are the config's to refuse (train.devices)."""
    devices = getattr(args, "devices", None)
    if devices is None or devices < 1:
        return
    import torch

    if args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available()):
        have = torch.cuda.device_count()
        if devices > have:
            parser.error(f"argument --devices: {devices}: {have} CUDA GPU(s) visible here, "
                         f"expected at most {have}")
        return
    cpus = os.cpu_count() or 1
    if devices > cpus:
        parser.error(f"argument --devices: {devices}: without a GPU each device is a CPU "
                     f"process, and this machine has {cpus} CPU core(s): expected at most {cpus}")


def parse_args(parser: argparse.ArgumentParser,
               argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` and the checks that need several options (:func:`check_devices`);
    a refusal exits with status 2 after one line."""
    args = parser.parse_args(argv)
    command = getattr(parser, "commands", {}).get(args.command, parser)  # for its --help
    check_devices(command, args)
    return args


PRECISION_HELP = ("auto (default): bf16-mixed on a GPU and on CPUs with bf16 units (AVX512-BF16, "
                  "AMX), fp32 elsewhere; 32; bf16-mixed. The log says which and why")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=["auto", "32", "bf16-mixed"],
                   help=PRECISION_HELP)


def _add_device_options(p: argparse.ArgumentParser) -> None:
    """Where and how a training command runs: pretrain and finetune share these."""
    p.add_argument("--devices", type=int, default=None,
                   help="devices per node (GPUs, or CPU processes with gloo when no GPU)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes (torchrun or SLURM)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   type=accelerator, help="where to train (default: GPU when one is visible)")
    add_precision_option(p)


def _add_pretrain_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", choices=["tiny", "base", "large"], default=default_preset,
                   help=f"model and training preset (default: {default_preset})")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of overrides on top of the preset (see configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="number of updates")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                   help="self-supervised objective (default: the preset's, wav2vec2): wav2vec "
                   "2.0's contrastive loss; HuBERT's masked prediction of k-means labels "
                   "(needs --targets); BEST-RQ's masked prediction of fixed random-projection "
                   "codes of the log-mel; reconstruct: L1 regression of the masked frames' "
                   "normalised log-mel (TERA / Mockingjay style); CPC / wav2vec (v1): a causal "
                   "context network predicting the next model.cpc.steps frames (InfoNCE, no "
                   "masking); data2vec 2.0: regression of an EMA teacher's averaged top "
                   "layers")
    p.add_argument("--targets", default=None, metavar="DIR",
                   help="hubert: the labels of DATA that `audio-ssl targets` wrote")
    _add_device_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="continue pretraining from this checkpoint's weights (ours, an HF "
                   "Wav2Vec2ForPreTraining folder or a fairseq .pt) on DATA, with a fresh "
                   "optimizer and schedule; its network replaces the preset's, --config may "
                   "still change masks, loss weights and temperatures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="audio-ssl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # each command listed once, with its own help= line, in the order below
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parser.commands = sub.choices  # command -> its parser (parse_args' errors name its --help)

    p = sub.add_parser(
        "pretrain", help="pretrain on a folder of raw audio",
        description="Pretrain a wav2vec 2.0 model on DATA: a folder (scanned recursively for "
        "wav, flac, ogg, opus, mp3), a JSONL manifest or a list of files. Audio is mixed down "
        "to mono and resampled to 16 kHz; unreadable, empty or too-short files are skipped and "
        "listed in OUTPUT/rejected.jsonl. Checkpoints, the resolved config, metrics and logs go "
        "to --output.",
    )
    p.add_argument("data", nargs="+", help="folder of audio, JSONL manifest, list of files, or a "
                   "shard folder of `audio-ssl shard` (a path or an s3:// URL: streamed); or "
                   "several shard folders as SOURCE=WEIGHT (the fraction of each epoch's hours "
                   "drawn from each) or a YAML list of {source, weight} (docs/shards.md)")
    p.add_argument("--output", "-o", type=Path, default=Path("runs/pretrain"),
                   help="run folder (default: runs/pretrain)")
    _add_pretrain_options(p, "tiny")

    sh = sub.add_parser(
        "shard", help="write a corpus as Lhotse Shar shards, to a folder or object storage",
        description="Write SOURCE (a folder, a JSONL manifest -- its transcripts and speakers "
        "go into the cuts -- or a list of files) as Lhotse Shar shards at OUTPUT (a path, or a "
        "URL such as s3://bucket/prefix): OUTPUT/shar/cuts.NNNNNN.jsonl.gz and "
        "recording.NNNNNN.tar, OUTPUT/index.jsonl.gz (each cut's shard and length: pretraining "
        "plans from it without opening audio) and OUTPUT/rejected.jsonl. Audio keeps its rate "
        "and channels, losslessly encoded. Each shard appears whole or not at all; a rerun "
        "skips complete shards. `audio-ssl pretrain OUTPUT` streams from it.",
    )
    sh.add_argument("source", help="folder of audio, JSONL manifest or list of files")
    sh.add_argument("output", help="shard folder: a path, file:// or s3:// URL")
    sh.add_argument("--shard-size", type=int, default=1000,
                    help="files per shard (default: 1000)")
    sh.add_argument("--format", default="flac", choices=["flac", "wav"],
                    help="audio encoding inside the shards (default: flac)")
    sh.add_argument("--workers", type=int, default=4,
                    help="threads decoding and encoding files (default: 4)")
    sh.add_argument("--no-progress", action="store_true", help="no progress bar")

    k = sub.add_parser(
        "targets", help="k-means labels of every file, for HuBERT pretraining",
        description="Cluster frames of DATA (one per encoder frame, 20 ms) with MiniBatchKMeans "
        "and write each file's labels to OUTPUT, for `audio-ssl pretrain DATA --objective hubert "
        "--targets OUTPUT`. --kind mfcc: 39-d MFCC + deltas (HuBERT's first iteration); --kind "
        "layer: a checkpoint's context layer (later iterations). Resumes where a stopped run "
        "left off; unreadable files are listed in OUTPUT/rejected.jsonl.",
    )
    k.add_argument("data", help="folder of audio, JSONL manifest or list of files")
    k.add_argument("--output", "-o", type=Path, required=True, help="targets folder")
    k.add_argument("--kind", choices=["mfcc", "layer"], default="mfcc")
    k.add_argument("--clusters", type=at_least(2), default=100,
                   help="k-means clusters (default: 100)")
    k.add_argument("--checkpoint", default=None, help="--kind layer: any model load_model reads")
    k.add_argument("--layer", type=COUNT, default=None,
                   help="--kind layer: context layer (0 = input)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--no-progress", action="store_true", help="no progress bars")

    d = sub.add_parser(
        "demo", help="the whole workflow on a corpus it makes, each stage shown working",
        description="Make a spoken-digit corpus with eSpeak NG voices (installed by pip; a few "
        "voices held out for testing), pretrain the tiny preset on it, plot the curves, extract "
        "every layer's features, probe them against MFCCs, fine-tune with CTC and transcribe "
        "the held-out voices; ends with a table of what each stage showed and where its outputs "
        "are. About 10 minutes on 2 CPU cores. Run it again to reuse finished stages.",
    )
    d.add_argument("--output", "-o", type=Path, default=Path("runs/demo"),
                   help="folder for the corpus and the runs (default: runs/demo)")
    d.add_argument("--minutes", type=POSITIVE_SECONDS, default=20.0,
                   help="minutes of audio to generate (default: 20)")
    d.add_argument("--pretrain-steps", type=POSITIVE_INT, default=500,
                   help="pretraining updates (default: 500)")
    d.add_argument("--finetune-steps", type=COUNT, default=600,
                   help="CTC fine-tuning updates (default: 600; 0: stop after the probe)")
    d.add_argument("--seed", type=int, default=0, help="corpus and training seed (default: 0)")
    d.add_argument("--preset", choices=["tiny", "base", "large"], default="tiny",
                   help="model preset (default: tiny)")
    d.add_argument("--config", type=Path, default=None,
                   help="YAML overrides on top of the preset, as for pretrain")
    d.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   type=accelerator)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    o = sub.add_parser(
        "plot", help="curves of pretraining or fine-tuning runs; a checkpoint's codebook usage",
        description="Draw the logged curves of one or more run folders (overlaid, one colour "
        "each) to a PNG. Pretraining: loss as a fraction of a uniform guess's, loss terms, "
        "accuracy, code and prob perplexity, cosines to positive and distractors, Gumbel "
        "temperature, learning rate, gradient norm, throughput. Fine-tuning: loss, validation "
        "WER and CER, learning rate. A checkpoint with --data: how often each code of each "
        "quantizer group is chosen over that audio, as a heat map.",
    )
    o.add_argument("paths", nargs="+", metavar="RUN_DIR",
                   help="run folders of one kind, or one checkpoint (with --data)")
    o.add_argument("--output", "-o", type=Path, default=None,
                   help="PNG to write (default: RUN_DIR/curves.png, or CHECKPOINT.codebook.png)")
    o.add_argument("--data", default=None,
                   help="checkpoint: audio whose codes to count (folder, manifest or list)")
    o.add_argument("--max-files", type=POSITIVE_INT, default=200,
                   help="checkpoint: files of --data to read at most (default: 200)")
    o.add_argument("--title", default=None, help="figure title")

    _add_asr_commands(sub)

    from audio_ssl.cli.probe import add_parser as add_probe_parser

    add_probe_parser(sub)

    c = sub.add_parser(
        "convert", help="convert a checkpoint to an HF folder, an audio-ssl .ckpt or ONNX",
        description="Load SRC in any format audio-ssl reads (an HF wav2vec 2.0 folder, a fairseq "
        "wav2vec 2.0 .pt -- pretraining, or fine-tuned CTC with dict.ltr.txt beside it -- a "
        "torchaudio wav2vec2_model state dict, or an audio-ssl .ckpt) and write it to DST: "
        "--to hf writes a folder transformers loads with from_pretrained (config.json, "
        "model.safetensors, and the Wav2Vec2Processor files); --to audio-ssl writes a .ckpt "
        "every audio-ssl command takes. The weights are copied unchanged. A DST ending in .onnx "
        "writes an ONNX file (opset 18, dynamic batch and length, inputs waveforms and lengths) "
        "with its sample rate, normalisation, frame rate, layer names and CTC vocabulary in its "
        "metadata: CTC logits for a fine-tuned model, else the encoder's and every context "
        "layer's output; extract, transcribe and evaluate run it with onnxruntime "
        "(pip install 'audio-ssl[onnx]'). See docs/onnx.md.",
    )
    c.add_argument("src", type=Path, help="checkpoint file or HF folder")
    c.add_argument("dst", type=Path, help="output folder (--to hf), .ckpt file (--to audio-ssl) "
                   "or .onnx file")
    c.add_argument("--to", default=None, choices=["hf", "audio-ssl", "onnx"],
                   help="output format (default: onnx for a DST ending in .onnx, else required)")
    c.add_argument("--outputs", default="auto", choices=["auto", "features", "logits"],
                   help="ONNX: logits (CTC models), features (encoder and every context layer) "
                   "or auto (default): logits when SRC has a CTC head, else features")
    c.add_argument("--quantize", default=None, choices=["int8"],
                   help="ONNX: dynamic int8 quantisation of the matrix products (convolutions "
                   "stay fp32); docs/onnx.md has what it costs in accuracy")
    c.add_argument("--dictionary", type=Path, default=None,
                   help="letter dictionary of a fine-tuned fairseq checkpoint (default: "
                   "dict.ltr.txt beside it)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing DST")

    e = sub.add_parser(
        "extract", help="features of every audio file of a folder, manifest or list",
        description="Extract features with CHECKPOINT (any format audio-ssl reads) from every "
        "audio file of INPUT (a folder, scanned recursively, a JSONL manifest or a list of "
        "files; decoded, mixed down and resampled to 16 kHz as for pretraining) into "
        "OUTPUT_DIR: one file per input mirroring INPUT's tree (or --shards), and "
        "OUTPUT_DIR/index.jsonl with each file's shape, frame rate and layers. Long files are "
        "processed in chunks with overlap (the frame count is the whole file's). Every file is "
        "written under a temporary name and renamed; a rerun skips complete outputs. "
        "Unusable inputs are listed in OUTPUT_DIR/failures.jsonl and make the exit status 1.",
    )
    e.add_argument("checkpoint", help="model checkpoint (.ckpt, HF folder, fairseq or "
                   "torchaudio .pt)")
    e.add_argument("input", help="folder of audio, JSONL manifest or list of files")
    e.add_argument("output_dir", type=Path, help="where the features go")
    e.add_argument("--layer", default="last",
                   help="context layer index (0 = the context network's input), 'last', 'all', "
                   "'encoder' (conv features after their layer norm) or 'codes' (quantizer "
                   "indices, (T, G) int64); several comma-separated, e.g. 6,last (default: last)")
    e.add_argument("--format", default=None, choices=["npy", "pt", "safetensors"],
                   help="one file per input (default: npy; several layers of different widths "
                   "need pt or safetensors)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="stored feature type (default: float32)")
    e.add_argument("--shards", action="store_true",
                   help="write a few large shard files and an index instead of one file per input")
    e.add_argument("--shard-mb", type=POSITIVE_SECONDS, default=1024.0,
                   help="size of a shard in MB (default: 1024)")
    e.add_argument("--chunk-seconds", type=POSITIVE_SECONDS, default=30.0,
                   help="long files: seconds kept per chunk (default: 30)")
    e.add_argument("--context-seconds", type=at_least(0.0, float), default=5.0,
                   help="long files: context computed and dropped on each side of a chunk "
                   "(default: 5)")
    e.add_argument("--batch-seconds", type=POSITIVE_SECONDS, default=None,
                   help="padded audio per forward (default: 160 on CUDA, 32 on the CPU)")
    e.add_argument("--workers", type=COUNT, default=None,
                   help="decoding processes (default: all cores but two on CUDA, up to 16; "
                   "0 on the CPU, where the model is the bottleneck)")
    e.add_argument("--device", default=None, type=device,
                   help="cpu, cuda, cuda:1 (default: cuda when visible)")
    add_precision_option(e)
    e.add_argument("--normalize", default=None, action=argparse.BooleanOptionalAction,
                   help="zero-mean unit-variance audio (default: as the checkpoint was trained)")
    e.add_argument("--no-fsync", action="store_true",
                   help="do not flush each output to disk before renaming it (faster where the "
                   "disk is slower than the model; outputs still appear whole or not at all, "
                   "but a power cut may leave empty ones)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    for command in sub.choices.values():
        loud = command.add_mutually_exclusive_group()
        loud.add_argument("--quiet", "-q", action="store_true",
                          help="only warnings, errors and results; no progress bars")
        loud.add_argument("--verbose", "-v", action="store_true",
                          help="also Lightning's device lines and the model summary")
    return parser


def _add_decoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", type=Path, default=None,
                   help="n-gram LM (ARPA, from `audio-ssl lm`) for beam search; a word model "
                   "needs --lexicon, a --unit char model works without one")
    p.add_argument("--lexicon", type=Path, default=None,
                   help="lexicon (word<TAB>w o r d |) for beam search: only its words are spelled")
    p.add_argument("--beam-size", type=POSITIVE_INT, default=50, help="beam width (default: 50)")
    p.add_argument("--lm-weight", type=float, default=2.0, help="LM weight (default: 2.0)")
    p.add_argument("--word-score", type=float, default=0.0,
                   help="score added per word (default: 0.0)")
    p.add_argument("--device", default=None, type=device,
                   help="cpu or cuda (default: cuda when visible)")
    add_precision_option(p)


def _add_stream_options(g, live: bool) -> None:
    """transcribe --stream and evaluate --stream: chunk and context (and, live, stdin's rate
    and JSON events)."""
    g.add_argument("--stream", action="store_true", help="stream the inputs (see above)")
    g.add_argument("--chunk", type=float, default=1.0, metavar="SECONDS",
                   help="seconds of frames made final per forward (default: 1.0)")
    g.add_argument("--left", type=float, default=8.0, metavar="SECONDS",
                   help="context before a chunk, in seconds (default: 8.0)")
    g.add_argument("--right", type=float, default=1.28, metavar="SECONDS",
                   help="context after a chunk, in seconds: adds to the latency (default: 1.28, "
                   "half the BASE positional convolution)")
    if live:
        g.add_argument("--sample-rate", default=None, metavar="HZ",
                       help="rate of the PCM on stdin; must be the model's (default: the "
                       "model's, 16000)")
        g.add_argument("--json", action="store_true",
                       help="one JSON object a line per event ({path, event, text, start, "
                       "end}), then {event: summary, ...}")


def _add_asr_commands(sub) -> None:
    f = sub.add_parser(
        "finetune", help="fine-tune for speech recognition with CTC",
        description="Fine-tune PRETRAINED (a checkpoint of `audio-ssl pretrain`, or a CTC model "
        "to continue) on transcribed audio with CTC: a character vocabulary from the training "
        "transcripts, time and channel masking, the feature encoder frozen, the loaded backbone "
        "frozen for the first ctc.freeze_updates updates, tri-stage learning rate. LABELLED is "
        "a JSONL manifest (audio, text), a LibriSpeech-style folder (*.trans.txt) or a TSV of "
        "path<TAB>text. Utterances that cannot be used are listed in OUTPUT/rejected.jsonl; "
        "checkpoints/best.ckpt is the lowest validation WER (CER with train.best_by: cer).",
    )
    f.add_argument("pretrained", nargs="?", default=None,
                   help="pretrained checkpoint (optional with --from-scratch)")
    f.add_argument("--train", required=True, help="labelled training data")
    f.add_argument("--valid", required=True, help="labelled validation data")
    f.add_argument("--train-split", default=None,
                   help="JSONL: use the rows whose 'split' is this (e.g. train)")
    f.add_argument("--valid-split", default=None,
                   help="JSONL: use the rows whose 'split' is this (e.g. test)")
    f.add_argument("--output", "-o", type=Path, default=Path("runs/finetune"),
                   help="run folder (default: runs/finetune)")
    f.add_argument("--preset", choices=["tiny", "base"], default="tiny",
                   help="fine-tuning settings (default: tiny, for CPUs; base: fairseq base_100h)")
    f.add_argument("--config", type=Path, default=None,
                   help="YAML file of overrides (text, ctc, data, optim, train, model sections)")
    f.add_argument("--max-steps", type=int, default=None, help="number of updates")
    f.add_argument("--from-scratch", action="store_true",
                   help="the same network with random weights (a baseline)")
    f.add_argument("--chunk-train", action="store_true",
                   help="dynamic chunk training for streaming (WeNet's): per batch a random "
                   "chunk size, each frame attending to its chunk and a few chunks before it "
                   "(ctc.chunk_train; sizes in ctc.chunk_frames, ctc.chunk_left)")
    _add_device_options(f)
    f.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser(
        "transcribe", help="speech to text with a fine-tuned model",
        description="Transcribe audio files, folders (scanned recursively) or lists with MODEL "
        "(a fine-tuned CTC checkpoint). Prints 'path<TAB>text' lines as each batch is decoded "
        "(shortest files first), or appends them to --output as JSONL; a rerun into the same "
        "--output skips the files it holds, so a stopped run resumes. Files that cannot be "
        "used are reported and skipped.",
    )
    t.add_argument("model", help="fine-tuned CTC checkpoint")
    t.add_argument("inputs", nargs="+", help="audio files, folders, .jsonl or .txt lists; with "
                   "--stream also '-' (raw PCM s16le mono on stdin)")
    t.add_argument("--output", "-o", type=Path, default=None,
                   help="JSONL of {path, text, seconds} instead of text on stdout, a line "
                   "written as each file is done, then {path, error} for each file skipped; "
                   "an existing one is resumed")
    _add_stream_options(t.add_argument_group(
        "streaming", "--stream: transcribe as the audio arrives, chunk by chunk; files are read "
        "as if live, '-' reads raw PCM s16le mono from stdin (arecord -f S16_LE -r 16000 | "
        "audio-ssl transcribe --stream MODEL -). Prints partial hypotheses as they change and "
        "final segments with start and end times ('partial|final<TAB>start<TAB>end<TAB>text', "
        "the path first for several inputs), then the real-time factor and the algorithmic "
        "latency (chunk + right context)"), live=True)
    _add_decoder_options(t)

    e = sub.add_parser(
        "evaluate", help="WER and CER on transcribed audio",
        description="Decode LABELLED (JSONL manifest, LibriSpeech-style folder or TSV) with "
        "MODEL and print the word and character error rates; references and hypotheses are "
        "normalised with the model's text settings. Utterances that cannot be used (no or "
        "empty transcript, one that normalises to nothing, unreadable, empty or too-short "
        "audio: the rules of finetune) are skipped, each named on stderr with why. --report "
        "writes one JSONL line per utterance (reference, hypothesis, errors), then the skipped "
        "ones.",
    )
    e.add_argument("model", help="fine-tuned CTC checkpoint")
    e.add_argument("labelled", help="labelled data")
    e.add_argument("--split", default=None, help="JSONL: the rows whose 'split' is this")
    e.add_argument("--report", type=Path, default=None, help="per-utterance JSONL report")
    _add_stream_options(e.add_argument_group(
        "streaming", "--stream: also decode every file as a stream (fed chunk by chunk) and "
        "report its WER and CER next to the offline ones"), live=False)
    _add_decoder_options(e)

    m = sub.add_parser(
        "lm", help="build an n-gram language model from text",
        description="Estimate an interpolated modified Kneser-Ney n-gram model from TEXT_FILE "
        "(one sentence a line; normalised as the default transcripts are) and write it as ARPA. "
        "--unit word (default) for beam search with a lexicon; --unit char for lexicon-free "
        "beam search.",
    )
    m.add_argument("text_file", type=Path, help="plain text, one sentence a line")
    m.add_argument("--output", "-o", type=Path, required=True, help="ARPA file to write")
    m.add_argument("--order", type=int, default=None,
                   help="n-gram order (default: 3 for words, 6 for characters)")
    m.add_argument("--unit", choices=["word", "char"], default="word")
    m.add_argument("--lexicon", type=Path, default=None,
                   help="also write a lexicon of the text's words here")

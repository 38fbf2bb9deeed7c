"""Speech recognition: ``audio-ssl finetune`` (CTC), ``transcribe`` (whole files, or
``--stream``: chunk by chunk as the audio arrives), ``evaluate`` (WER and CER) and ``lm`` (an
n-gram model for beam search); each command's options beside its run. The implementations live in
:mod:`audio_ssl.tasks.finetune` and :mod:`audio_ssl.asr`."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from audio_ssl.cli.options import POSITIVE_INT, add_device_options, add_precision_option, device


def add_finetune(sub) -> None:
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
    f.add_argument("--train", required=True,
                   help="labelled training data (or a shard folder, a path or URL, that "
                   "`audio-ssl shard` made from a manifest with transcripts)")
    f.add_argument("--valid", required=True, help="labelled validation data (likewise)")
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
    add_device_options(f)
    f.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_finetune(args: argparse.Namespace) -> int:
    from audio_ssl.tasks.finetune import finetune

    train = {"max_steps": args.max_steps, "precision": args.precision,
             "devices": args.devices, "num_nodes": args.num_nodes}
    overrides = {"train": {k: v for k, v in train.items() if v is not None}}
    if args.chunk_train:
        overrides["ctc"] = {"chunk_train": True}
    result = finetune(args.pretrained, args.train, args.valid, args.output,
                      preset=args.preset, config_yaml=args.config, overrides=overrides,
                      from_scratch=args.from_scratch, train_split=args.train_split,
                      valid_split=args.valid_split, resume=args.resume,
                      progress=not args.no_progress, accelerator=args.accelerator)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(result.summary())
    return 0


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


def _decoder_settings(args: argparse.Namespace) -> dict:
    """transcribe's and evaluate's decoder and device options, as the keywords of
    :class:`~audio_ssl.asr.transcribe.Transcriber`."""
    return dict(lm=args.lm, lexicon=args.lexicon, beam_size=args.beam_size,
                lm_weight=args.lm_weight, word_score=args.word_score, device=args.device,
                precision=args.precision or "auto")


def _skipped_line(r) -> str:
    """One stderr line naming a file a command skipped (a ``Rejected``): its path, the manifest
    row it came from when there is one, and why."""
    where = f" ({r.line})" if getattr(r, "line", None) else ""
    return f"audio-ssl: skipped {r.path}{where}: {r.reason}"


def add_transcribe(sub) -> None:
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


def run_transcribe(args: argparse.Namespace) -> int:
    """Whole files (or, with --stream, :func:`_run_stream`): a line per file as its batch is
    decoded, then the summary on stderr; 1 when files failed and none was transcribed."""
    if args.stream:
        return _run_stream(args, _decoder_settings(args))
    from audio_ssl.asr.transcribe import transcribe
    from audio_ssl.data.manifest import Rejected

    def show(r) -> None:  # each file as soon as its batch is decoded
        if isinstance(r, Rejected):
            print(_skipped_line(r), file=sys.stderr, flush=True)
        elif args.output is None:
            print(f"{r.path}\t{r.text}", flush=True)

    result = transcribe(args.model, args.inputs, output=args.output, on_result=show,
                        **_decoder_settings(args))
    print(result.summary() + (f"; written to {args.output}" if args.output else ""),
          file=sys.stderr)
    return 0 if result.transcriptions or not result.failed else 1


def add_evaluate(sub) -> None:
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


def run_evaluate(args: argparse.Namespace) -> int:
    from audio_ssl.asr.transcribe import evaluate

    stream = None
    if args.stream:
        from audio_ssl.asr.streaming import StreamSettings

        stream = StreamSettings(args.chunk, args.left, args.right)
    result = evaluate(args.model, args.labelled, split=args.split, report=args.report,
                      stream=stream, **_decoder_settings(args))
    for r in result.skipped:
        print(_skipped_line(r), file=sys.stderr)
    print(result.summary())
    if args.report:
        print(f"per-utterance report: {args.report}")
    return 0


def add_lm(sub) -> None:
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


def run_lm(args: argparse.Namespace) -> int:
    from audio_ssl.asr.lm import build_lm_file

    print(build_lm_file(args.text_file, args.output, order=args.order, unit=args.unit,
                        lexicon=args.lexicon).summary(), end="")
    return 0


def _stdin_rate(value: str | None) -> int | None:
    """--sample-rate as a positive whole number of Hz (None: not given)."""
    if value is None:
        return None
    try:
        rate = int(value)
    except ValueError:
        rate = 0
    if rate <= 0:
        raise ValueError(f"--sample-rate {value!r}: expected a positive whole number of Hz, "
                         "e.g. 16000")
    return rate


def _stream_rate(args: argparse.Namespace) -> int | None:
    """transcribe --stream's checks that need no model (no --output, '-' at most once,
    --sample-rate only with '-'); the rate of stdin's PCM (None: not given)."""
    if args.output is not None:
        raise ValueError("--output is for whole files; with --stream use --json (and redirect "
                         "stdout)")
    if args.inputs.count("-") > 1:
        raise ValueError("'-' (stdin) given more than once")
    rate = _stdin_rate(args.sample_rate)
    if rate is not None and "-" not in args.inputs:
        raise ValueError(f"--sample-rate {rate}: only raw PCM on stdin ('-') needs a rate; "
                         "files carry their own")
    return rate


def _stdin_chunks(block: int):
    """Raw PCM s16le from stdin as it arrives: int16 arrays of at most ``block`` samples. A byte
    left at the end (half a sample) is dropped, with a line on stderr."""
    import numpy as np

    binary = sys.stdin.buffer
    read = getattr(binary, "read1", binary.read)  # what has arrived, up to a block
    pending = b""
    while data := read(2 * block):
        data = pending + data
        whole = len(data) // 2 * 2
        pending = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype="<i2")
    if pending:
        print("audio-ssl: stdin ended inside a sample: its last byte was dropped",
              file=sys.stderr)


def _print_events(path: str, events, *, as_json: bool, several: bool) -> None:
    """Each streaming event as it comes: a JSON object, or 'partial|final<TAB>start<TAB>end<TAB>
    text' (the path first when there are several inputs)."""
    for e in events:
        if as_json:
            print(json.dumps({"path": path, **e.to_dict()}, ensure_ascii=False), flush=True)
        else:
            kind = "final" if e.final else "partial"
            print(f"{path}\t" * several + f"{kind}\t{e.start:.2f}\t{e.end:.2f}\t{e.text}",
                  flush=True)


def _run_stream(args: argparse.Namespace, options: dict) -> int:
    """transcribe --stream: each input fed chunk by chunk (files as if live, '-' raw PCM s16le
    from stdin), events printed as they come, then the real-time factor and the latency."""
    from audio_ssl.asr.streaming import StreamingTranscriber, StreamSettings
    from audio_ssl.asr.transcribe import Transcriber, expand_inputs
    from audio_ssl.data.audio import AudioError, load_audio
    from audio_ssl.data.manifest import Rejected

    rate = _stream_rate(args)
    settings = StreamSettings(args.chunk, args.left, args.right)
    stream = StreamingTranscriber(Transcriber.from_path(args.model, **options), settings)
    model_rate = stream.sample_rate
    if rate is not None and rate != model_rate:
        raise ValueError(f"--sample-rate {rate}: this model takes {model_rate} Hz audio; "
                         f"record or resample at {model_rate} Hz (arecord -f S16_LE -r "
                         f"{model_rate})")
    files, bad = expand_inputs([i for i in args.inputs if i != "-"])
    sources = ["-"] * ("-" in args.inputs) + files
    emit = functools.partial(_print_events, as_json=args.json, several=len(sources) > 1)
    block = max(1, round(settings.chunk_seconds * model_rate))
    done = 0
    for source in sources:
        if source == "-":
            chunks = _stdin_chunks(block)
        else:
            try:
                wav = load_audio(source, sample_rate=model_rate)
            except AudioError as err:
                bad.append(Rejected(source, err.reason))
                continue
            chunks = (wav[start:start + block] for start in range(0, wav.numel(), block))
        for chunk in chunks:
            emit(source, stream.feed(chunk))
        emit(source, stream.finish())
        done += 1
    for r in bad:
        print(f"audio-ssl: skipped {r.path}: {r.reason}", file=sys.stderr)
    stats = stream.stats()
    if args.json:
        print(json.dumps({"event": "summary", **stats.to_dict(), "inputs": done,
                          "skipped": len(bad)}), flush=True)
    else:
        print(stats.summary() + f"; {done} input(s), {len(bad)} skipped", file=sys.stderr)
    return 0 if done or not bad else 1

"""The single `audio-ssl` command: what each command runs. Options are declared in
:mod:`audio_ssl.cli.parser`; user errors (bad values, missing or unusable files, a refused
checkpoint) are caught once, in :func:`main`: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audio_ssl.cli.parser import build_parser, parse_args


def _load_config(args: argparse.Namespace, init=None):
    """The run's config: preset, --config, command-line values; on ``init`` (a
    :class:`~audio_ssl.interop.LoadedModel` to continue from) its network and normalisation."""
    from audio_ssl import config

    train = {"max_steps": args.max_steps, "devices": args.devices, "num_nodes": args.num_nodes,
             "precision": args.precision}
    overrides: dict = {"train": {k: v for k, v in train.items() if v is not None}}
    if getattr(args, "objective", None):
        overrides["model"] = {"objective": args.objective}
    if getattr(args, "targets", None):
        overrides["data"] = {"targets": str(Path(args.targets).resolve())}
    return config.load(args.preset, args.config, overrides=overrides,
                       model=init.config if init is not None else None,
                       normalize=init.expects_normalized if init is not None else None)


def _run_pretrain(args: argparse.Namespace, data: str | Path, output: Path) -> int:
    from audio_ssl.tasks.run import load_init, pretrain

    init = getattr(args, "init", None)
    # read once: its network for the config, its weights for the run
    loaded = load_init(init) if init is not None and not args.resume else None
    cfg = _load_config(args, loaded)
    result = pretrain(data, cfg, output, resume=args.resume, progress=not args.no_progress,
                      accelerator=args.accelerator, init=loaded or init)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        print(result.summary())
    return 0


def _run_targets(args: argparse.Namespace) -> int:
    from audio_ssl.data import scan
    from audio_ssl.data.targets import TargetsConfig, make_targets

    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    cfg = TargetsConfig(kind=args.kind, clusters=args.clusters, seed=args.seed,
                        checkpoint=checkpoint, layer=args.layer)
    featurize = None
    if args.kind == "layer" and checkpoint is not None and args.layer is not None:
        from audio_ssl.extract.extractor import FeatureExtractor

        # the one extraction path: the checkpoint's own normalisation, exact frames for long
        # files; fp32 so that labels do not depend on the CPU's bf16 units
        extractor = FeatureExtractor.from_checkpoint(checkpoint, layers=args.layer,
                                                     precision="32")
        featurize = lambda wav: extractor(wav, sample_rate=cfg.sample_rate).float()  # noqa: E731
    items, skipped = scan(args.data, progress=not args.no_progress)
    count, rejected = make_targets(items, cfg, args.output, featurize)
    print(f"labelled {count} files with {args.clusters} {args.kind} clusters in {args.output} "
          f"({len(skipped) + len(rejected)} skipped)\n"
          f"pretrain on them: audio-ssl pretrain {args.data} --objective hubert "
          f"--targets {args.output}")
    return 0


def _skipped_line(r) -> str:
    """One stderr line naming a file a command skipped (a ``Rejected``): its path, the manifest
    row it came from when there is one, and why."""
    where = f" ({r.line})" if getattr(r, "line", None) else ""
    return f"audio-ssl: skipped {r.path}{where}: {r.reason}"


def _run_asr(args: argparse.Namespace) -> int:
    """finetune, transcribe, evaluate, lm: the commands' implementations live in tasks/ and
    inference/."""
    if args.command == "finetune":
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
    if args.command == "lm":
        from audio_ssl.asr.lm import build_lm_file

        print(build_lm_file(args.text_file, args.output, order=args.order, unit=args.unit,
                            lexicon=args.lexicon).summary(), end="")
        return 0
    options = dict(lm=args.lm, lexicon=args.lexicon, beam_size=args.beam_size,
                   lm_weight=args.lm_weight, word_score=args.word_score, device=args.device,
                   precision=args.precision or "auto")
    if args.command == "transcribe" and args.stream:
        return _run_stream(args, options)
    if args.command == "transcribe":
        from audio_ssl.asr.transcribe import transcribe

        from audio_ssl.data.manifest import Rejected

        def show(r) -> None:  # each file as soon as its batch is decoded
            if isinstance(r, Rejected):
                print(_skipped_line(r), file=sys.stderr, flush=True)
            elif args.output is None:
                print(f"{r.path}\t{r.text}", flush=True)

        result = transcribe(args.model, args.inputs, output=args.output, on_result=show,
                            **options)
        print(result.summary() + (f"; written to {args.output}" if args.output else ""),
              file=sys.stderr)
        return 0 if result.transcriptions or not result.failed else 1
    from audio_ssl.asr.transcribe import evaluate

    stream = None
    if args.stream:
        from audio_ssl.asr.streaming import StreamSettings

        stream = StreamSettings(args.chunk, args.left, args.right)
    result = evaluate(args.model, args.labelled, split=args.split, report=args.report,
                      stream=stream, **options)
    for r in result.skipped:
        print(_skipped_line(r), file=sys.stderr)
    print(result.summary())
    if args.report:
        print(f"per-utterance report: {args.report}")
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


def _run_stream(args: argparse.Namespace, options: dict) -> int:
    """transcribe --stream: each input fed chunk by chunk (files as if live, '-' raw PCM s16le
    from stdin), events printed as they come, then the real-time factor and the latency."""
    import json

    import numpy as np

    from audio_ssl.data.audio import AudioError, load_audio
    from audio_ssl.data.manifest import Rejected
    from audio_ssl.asr.streaming import StreamingTranscriber, StreamSettings
    from audio_ssl.asr.transcribe import Transcriber, expand_inputs

    if args.output is not None:
        raise ValueError("--output is for whole files; with --stream use --json (and redirect "
                         "stdout)")
    if args.inputs.count("-") > 1:
        raise ValueError("'-' (stdin) given more than once")
    rate = _stdin_rate(args.sample_rate)
    if rate is not None and "-" not in args.inputs:
        raise ValueError(f"--sample-rate {rate}: only raw PCM on stdin ('-') needs a rate; "
                         "files carry their own")
    settings = StreamSettings(args.chunk, args.left, args.right)
    stream = StreamingTranscriber(Transcriber.from_path(args.model, **options), settings)
    model_rate = stream.sample_rate
    if rate is not None and rate != model_rate:
        raise ValueError(f"--sample-rate {rate}: this model takes {model_rate} Hz audio; "
                         f"record or resample at {model_rate} Hz (arecord -f S16_LE -r "
                         f"{model_rate})")
    files, bad = expand_inputs([i for i in args.inputs if i != "-"])
    sources = ["-"] * ("-" in args.inputs) + files
    several = len(sources) > 1
    block = max(1, round(settings.chunk_seconds * model_rate))

    def emit(path: str, events) -> None:
        for e in events:
            if args.json:
                print(json.dumps({"path": path, **e.to_dict()}, ensure_ascii=False), flush=True)
            else:
                kind = "final" if e.final else "partial"
                print(f"{path}\t" * several + f"{kind}\t{e.start:.2f}\t{e.end:.2f}\t{e.text}",
                      flush=True)

    done = 0
    for source in sources:
        if source == "-":
            binary = sys.stdin.buffer
            read = getattr(binary, "read1", binary.read)  # what has arrived, up to a block
            pending = b""
            while data := read(2 * block):
                data = pending + data
                whole = len(data) // 2 * 2
                pending = data[whole:]
                if whole:
                    emit(source, stream.feed(np.frombuffer(data[:whole], dtype="<i2")))
            if pending:
                print("audio-ssl: stdin ended inside a sample: its last byte was dropped",
                      file=sys.stderr)
            emit(source, stream.finish())
            done += 1
            continue
        try:
            wav = load_audio(source, sample_rate=model_rate)
        except AudioError as err:
            bad.append(Rejected(source, err.reason))
            continue
        for start in range(0, wav.numel(), block):
            emit(source, stream.feed(wav[start:start + block]))
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


def _run_extract(args: argparse.Namespace) -> int:
    """0 when every input was extracted (or already was), 1 when some failed (listed in
    failures.jsonl), 2 when nothing could start (bad input or options)."""
    from audio_ssl.extract.extractor import FeatureExtractor
    from audio_ssl.extract.pipeline import extract_folder

    extractor = FeatureExtractor.from_checkpoint(
        args.checkpoint, layers=args.layer, device=args.device,
        precision=args.precision or "auto", normalize=args.normalize,
        chunk_seconds=args.chunk_seconds, context_seconds=args.context_seconds,
        batch_seconds=args.batch_seconds)
    summary = extract_folder(
        extractor, args.input, args.output_dir, fmt=args.format, dtype=args.dtype,
        shards=args.shards, shard_mb=args.shard_mb, num_workers=args.workers,
        progress=not args.no_progress, fsync=not args.no_fsync)
    print(summary.summary())
    return 0 if summary.ok else 1


def _run_demo(args: argparse.Namespace) -> int:
    from audio_ssl.demo.run import DemoSettings, run_demo

    settings = DemoSettings(
        output=args.output, minutes=args.minutes, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, seed=args.seed, preset=args.preset,
        config=args.config, accelerator=args.accelerator, progress=not args.no_progress)
    return run_demo(settings)


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user's input can cause, reported as one line: bad values and configs
    (ValueError, which NoAudioError, CheckpointError and the rest derive from), missing or
    misplaced files, an extraction folder in use, eSpeak NG not starting, the [onnx] extra
    missing."""
    from audio_ssl.corpora.espeak import EspeakError
    from audio_ssl.extract.output_folder import FolderInUseError
    from audio_ssl.interop.onnx import OptionalDependencyError

    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            FolderInUseError, EspeakError, OptionalDependencyError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help()
        return 1
    from audio_ssl import console

    console.configure(console.QUIET if args.quiet else
                      console.VERBOSE if args.verbose else console.DEFAULT)
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    try:
        if args.command == "pretrain":
            return _run_pretrain(args, args.data, args.output)
        if args.command == "targets":
            return _run_targets(args)
        if args.command == "shard":
            from audio_ssl.data.shard_writer import write_shards

            print(write_shards(args.source, args.output, shard_size=args.shard_size,
                               audio_format=args.format, num_workers=args.workers,
                               progress=not args.no_progress).summary())
            return 0
        if args.command == "extract":
            return _run_extract(args)
        if args.command == "convert":
            from audio_ssl.interop.export import run_convert

            return run_convert(args.src, args.dst, args.to, args.dictionary, args.overwrite,
                               outputs=args.outputs, quantize=args.quantize)
        if args.command in ("finetune", "transcribe", "evaluate", "lm"):
            return _run_asr(args)
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "probe":
            from audio_ssl.cli.probe import run as run_probe_command

            return run_probe_command(args)
        if args.command == "plot":
            from audio_ssl.plot import run_plot_command

            return run_plot_command(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"audio-ssl: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2



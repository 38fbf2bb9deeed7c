"""A checkpoint's features and the checkpoint itself in other formats: ``audio-ssl extract``
and ``convert``; each command's options beside its run."""

from __future__ import annotations

import argparse
from pathlib import Path

from audio_ssl.cli.options import (COUNT, POSITIVE_SECONDS, add_precision_option, at_least,
                                   device)


def add_extract(sub) -> None:
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
    _add_storage_options(e)
    _add_runner_options(e)
    e.add_argument("--no-fsync", action="store_true",
                   help="do not flush each output to disk before renaming it (faster where the "
                   "disk is slower than the model; outputs still appear whole or not at all, "
                   "but a power cut may leave empty ones)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_storage_options(e: argparse.ArgumentParser) -> None:
    """How the features are stored: file format, dtype, shards."""
    e.add_argument("--format", default=None, choices=["npy", "pt", "safetensors"],
                   help="one file per input (default: npy; several layers of different widths "
                   "need pt or safetensors)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="stored feature type (default: float32)")
    e.add_argument("--shards", action="store_true",
                   help="write a few large shard files and an index instead of one file per input")
    e.add_argument("--shard-mb", type=POSITIVE_SECONDS, default=1024.0,
                   help="size of a shard in MB (default: 1024)")


def _add_runner_options(e: argparse.ArgumentParser) -> None:
    """How the model runs: chunks of long files, batches, decoding workers, device, precision,
    normalisation."""
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


def run_extract(args: argparse.Namespace) -> int:
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


def add_convert(sub) -> None:
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


def run_convert(args: argparse.Namespace) -> int:
    from audio_ssl.interop.export import run_convert as convert

    return convert(args.src, args.dst, args.to, args.dictionary, args.overwrite,
                   outputs=args.outputs, quantize=args.quantize)

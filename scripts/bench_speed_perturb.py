"""What speed perturbation costs a fine-tuning update: its resampling against the update itself.

A CTC model with random weights and the network of a preset (default tiny, its default
objective) trains on batches of ``--batch`` utterances of ``--seconds`` seconds of noise (what
they hold does not change the cost); each repeat times, in the same process, one update as
fine-tuning runs it (forward, CTC loss, backward, optimiser step) and the resampling of the same
batch by :func:`audio_ssl.data.augment.speed_perturb` with a speed per row drawn from
``--speeds``. Prints one JSON line per repeat and a summary line: median milliseconds of each
and their ratio (perturbation / update).

    OMP_NUM_THREADS=2 python scripts/bench_speed_perturb.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio_ssl import config  # noqa: E402
from audio_ssl.data.augment import speed_perturb  # noqa: E402
from audio_ssl.losses.ctc import ctc_loss  # noqa: E402
from audio_ssl.models import Wav2Vec2ForCTC  # noqa: E402

VOCAB_SIZE = 29  # blank, word separator, a-z, apostrophe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    p.add_argument("--batch", type=int, default=4, help="utterances per batch (default: 4)")
    p.add_argument("--seconds", type=float, default=6.5,
                   help="length of each (default: 6.5, LJSpeech's mean)")
    p.add_argument("--speeds", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model_cfg = config.preset(args.preset).model
    model = Wav2Vec2ForCTC(model_cfg, VOCAB_SIZE).train()
    model.backbone.feature_encoder.requires_grad_(False)  # as fine-tuning freezes it
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    sr = 16_000
    samples = int(args.seconds * sr)
    waveforms = torch.randn(args.batch, samples)  # (B, S)
    lengths = torch.full((args.batch,), samples)  # (B,)
    targets = torch.randint(2, VOCAB_SIZE, (args.batch, int(args.seconds * 12)))  # (B, L)
    target_lengths = torch.full((args.batch,), targets.shape[1])
    g = torch.Generator().manual_seed(args.seed)
    speeds = torch.tensor(args.speeds, dtype=torch.float64)

    def update() -> None:
        out = model(waveforms, lengths)
        loss = ctc_loss(out.logits, out.frame_lengths, targets, target_lengths, blank=0)
        opt.zero_grad(set_to_none=True)
        loss.loss.backward()
        opt.step()

    def perturb() -> None:
        factors = speeds[torch.randint(len(speeds), (args.batch,), generator=g)]  # (B,)
        speed_perturb(waveforms, lengths, factors, sr)

    for fn in (update, perturb):  # warm-up
        fn()
    rows = []
    for k in range(args.repeats):
        row = {"repeat": k}
        for name, fn in (("update_ms", update), ("perturb_ms", perturb)):
            t = time.perf_counter()
            fn()
            row[name] = round(1000 * (time.perf_counter() - t), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    upd = statistics.median(r["update_ms"] for r in rows)
    per = statistics.median(r["perturb_ms"] for r in rows)
    print(json.dumps({
        "summary": True, "preset": args.preset, "objective": model_cfg.objective,
        "batch": args.batch, "seconds": args.seconds, "speeds": args.speeds,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "update_ms_median": round(upd, 2),
        "perturb_ms_median": round(per, 2),
        "ratio_perturb_to_update": round(per / upd, 4)}), flush=True)


if __name__ == "__main__":
    main()

"""data2vec 2.0 on the wav2vec 2.0 backbone: the EMA teacher, the targets, the masked loss, the
collapse watch, the config, and `audio-ssl pretrain --objective data2vec` end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audio_ssl import config
from audio_ssl.losses.regression import layer_average_targets
from audio_ssl.models import Data2VecForPretraining, Wav2Vec2Model, pretraining_model
from audio_ssl.tasks.monitor import SpreadWatch
from tests.conftest import small_model_config


def _cfg(**data2vec) -> config.ModelConfig:
    """The small layer-norm model (padding-exact) with a small decoder and two clones."""
    small = small_model_config(norm="layer", layer_norm_first=True)
    d2v = replace(small.data2vec, **{"decoder_dim": 32, "decoder_groups": 4, "decoder_layers": 2,
                                     "clones": 2, **data2vec})
    return replace(small, objective="data2vec", data2vec=d2v)


def _model(**data2vec) -> Data2VecForPretraining:
    torch.manual_seed(0)
    model = pretraining_model(_cfg(**data2vec))
    assert isinstance(model, Data2VecForPretraining)
    return model


def _batch(padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16_000, 11_000, 16_000, 7_321] if padded else [16_000] * 4)
    x = torch.randn(4, 16_000, generator=g)
    return x * (torch.arange(16_000)[None, :] < lengths[:, None]), lengths


# -- (a) the teacher ---------------------------------------------------------------------------

def test_teacher_is_the_ema_of_the_student_and_gets_no_gradient():
    model = _model(tau_start=0.9, tau_end=0.99)  # a decay far from 1: every term shows
    student, teacher = model.backbone.context, model.teacher
    for (name, s), t in zip(student.named_parameters(), teacher.parameters()):
        assert torch.equal(s, t), name  # built as a copy of the student
        assert not t.requires_grad, name
    x, lengths = _batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    total = 100
    assert model.update_teacher(0, total) == pytest.approx(model.cfg.data2vec.tau(0, total))
    out = model(x, lengths, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(t.grad is None for t in teacher.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    optimizer.step()
    old = [t.detach().clone() for t in teacher.parameters()]
    new = [s.detach().clone() for s in student.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(old, new)) > 1e-2  # the student moved

    model.update_teacher(1, total)  # step 1: catch up with the student of update 1
    tau = model.cfg.data2vec.tau(0, total)
    assert tau == pytest.approx(0.9)
    for t, a, b in zip(teacher.parameters(), old, new):
        torch.testing.assert_close(t, tau * a + (1 - tau) * b, rtol=1e-6, atol=1e-7)
    after = [t.detach().clone() for t in teacher.parameters()]
    model.update_teacher(1, total)  # the same step again (gradient accumulation): no update
    assert all(torch.equal(t, a) for t, a in zip(teacher.parameters(), after))
    # the backbone a checkpoint exports is the student alone
    assert not any(k.startswith("teacher") for k in model.backbone.state_dict())
    assert any(k.startswith("teacher.") for k in model.state_dict())


def test_tau_ramps_linearly_to_its_end_and_stays():
    d2v = config.Data2VecConfig(tau_start=0.999, tau_end=0.9999)
    assert d2v.tau(0, 100) == pytest.approx(0.999)
    assert d2v.tau(50, 100) == pytest.approx(0.99945)
    assert d2v.tau(100, 100) == d2v.tau(10_000, 100) == 0.9999
    assert replace(d2v, anneal_steps=10).tau(5, 100) == pytest.approx(0.99945)


def test_teacher_runs_without_dropout():
    small = _cfg()
    torch.manual_seed(0)
    model = pretraining_model(replace(small, context=replace(small.context, dropout=0.3,
                                                             layer_drop=0.5)))
    x, lengths = _batch()
    enc = model.backbone.encode(x, lengths)
    want = model.eval().targets(enc)
    torch.testing.assert_close(model.train().targets(enc), want, rtol=0, atol=0)
    assert model.teacher.training  # the mode flag follows the model's


# -- (b) the targets ---------------------------------------------------------------------------

@pytest.mark.parametrize("final_norm", [False, True])
def test_targets_match_a_loop_over_layers_and_utterances(final_norm):
    g = torch.Generator().manual_seed(0)
    frames = torch.tensor([9, 5, 7])
    padding = torch.arange(9)[None, :] >= frames[:, None]  # (B, T)
    layers = [torch.randn(3, 9, 6, generator=g) * (i + 1) + i for i in range(3)]
    got = layer_average_targets(layers, padding, True, final_norm)
    for b, n in enumerate(frames.tolist()):
        per_layer = [F.instance_norm(y[b, :n].T[None]) for y in layers]  # (1, D, n) each
        want = sum(per_layer) / len(per_layer)
        if final_norm:
            want = F.instance_norm(want)
        torch.testing.assert_close(got[b, :n], want[0].T, rtol=1e-5, atol=1e-5)
        assert torch.all(got[b, n:] == 0)  # padding
    # without any normalisation: the plain mean
    plain = layer_average_targets(layers, padding, False, False)
    torch.testing.assert_close(plain, sum(layers) / 3)


def test_targets_of_a_padded_batch_are_those_of_each_item_alone():
    """The teacher's top K layers (here both of 2, top_k 8 capped), per utterance: a padded
    batch gives each item the targets it gets alone."""
    model = _model().eval()
    x, lengths = _batch(padded=True)
    batch = model.targets(model.backbone.encode(x, lengths))  # (B, T, D)
    assert model.top_k == 2
    for b in range(4):
        alone_enc = model.backbone.encode(x[b:b + 1, :lengths[b]])
        proj = model.backbone.projection(alone_enc.features)
        _, states = model.teacher(proj, None, return_layers=True)
        want = sum(F.instance_norm(s.transpose(1, 2)) for s in states[1:]) / 2  # (1, D, T_b)
        n = want.shape[-1]
        torch.testing.assert_close(batch[b, :n], want[0].T, rtol=1e-4, atol=1e-4)


# -- (c) the loss ------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", "smooth_l1"])
def test_loss_is_the_mean_over_masked_frames_by_formula(loss):
    model = _model(loss=loss)
    x, lengths = _batch(padded=True)
    frames = model.backbone.frame_lengths(lengths)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2 * 4, 49, generator=g) < 0.4  # (M * B, T), clone-major
    mask &= torch.arange(49)[None, :] < frames.repeat(2)[:, None]  # never on padding
    out = model(x, lengths, mask=mask)
    full, _ = model.predict(x, lengths, mask=mask)
    targets = full.targets.repeat(2, 1, 1)  # (M * B, T, D): clone m of item b is row m * B + b
    p, t = full.predictions[mask], targets[mask]  # (M, D)
    per_dim = (p - t).pow(2) if loss == "mse" else F.smooth_l1_loss(p, t, reduction="none",
                                                                    beta=0.25)
    torch.testing.assert_close(out.regression, per_dim.mean(-1).mean(), rtol=1e-5, atol=1e-6)
    assert out.num_masked == mask.sum()
    torch.testing.assert_close(out.masked_fraction, mask.sum() / (2 * frames.sum()))
    std = t.std(0, unbiased=False).mean()
    torch.testing.assert_close(out.target_std, std, rtol=1e-4, atol=1e-5)
    # only masked frames count: gradients reach the decoder's input at masked frames alone
    pred = full.predictions.detach().requires_grad_(True)
    rows = torch.nonzero(mask.reshape(-1))[:, 0]
    value = F.mse_loss(pred.flatten(0, 1)[rows], targets.flatten(0, 1)[rows])
    value.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask].abs().sum(-1) > 0)


def test_random_masks_leave_padding_alone_and_differ_per_clone():
    model = _model()
    x, lengths = _batch(padded=True)
    out = model(x, lengths, generator=torch.Generator().manual_seed(0))
    frames = model.backbone.frame_lengths(lengths).repeat(2)
    assert out.mask.shape == (8, 49)
    assert not (out.mask & (torch.arange(49)[None, :] >= frames[:, None])).any()
    assert not torch.equal(out.mask[:4], out.mask[4:])
    assert torch.isfinite(out.loss) and 0.2 < float(out.masked_fraction) < 0.8


def test_training_step_reads_nothing_back_from_the_device():
    from tests.tasks.test_no_host_sync import _batch as sync_batch, _step_syncs, _task

    task = _task("data2vec", padded=True,
                 data2vec=replace(config.Data2VecConfig(), clones=2, decoder_dim=64))
    assert task.global_step % task.cfg.train.log_every
    syncs = _step_syncs(task, sync_batch(task, True))
    assert syncs == [], "host syncs in the training step:\n" + "\n".join(syncs)


# -- config and collapse watch -----------------------------------------------------------------

@pytest.mark.parametrize("field, value, words", [
    ("tau_start", 1.5, "tau_start is 1.5"),
    ("clones", 0, "clones is 0: expected at least 1"),
    ("decoder_kernel", 6, "decoder_kernel is 6: expected an odd"),
    ("loss", "l3", "expected one of ['mse', 'smooth_l1']"),
])
def test_bad_data2vec_config_is_one_clear_error(field, value, words):
    with pytest.raises(ValueError) as err:
        config.load("tiny", overrides={"model": {"objective": "data2vec",
                                                 "data2vec": {field: value}}})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_tiny_preset_builds_data2vec():
    cfg = config.load("tiny", overrides={"model": {"objective": "data2vec"}})
    model = pretraining_model(cfg.model)
    assert isinstance(model, Data2VecForPretraining) and model.top_k == cfg.model.context.layers


def test_spread_watch_warns_when_the_targets_collapse():
    watch = SpreadWatch(patience=30, grace=50)
    assert watch.update(0, 0.9) == []
    warned = [w for step in range(10, 200, 10) for w in watch.update(step, 0.05)]
    assert len(warned) == 1 and "target_std" in warned[0] and "0.0500" in warned[0]
    assert watch.update(200, 0.5) == []  # recovered: clears
    fresh = SpreadWatch(patience=30, grace=50)
    fresh.load_state_dict(watch.state_dict())
    assert fresh.first == 0.9


# -- (d) end to end ----------------------------------------------------------------------------

FAST = """
train: {log_every: 1, checkpoint_every: 40}
data: {num_workers: 0, max_batch_samples: 64000, max_crop_samples: 16000}
"""


def _metrics(run: Path) -> dict[int, dict]:
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


@pytest.mark.slow
def test_cli_data2vec_loss_falls_and_its_backbone_extracts(tmp_path, data_dir, capsys):
    from audio_ssl.cli import main
    from audio_ssl.interop import load_model

    yaml = tmp_path / "fast.yaml"
    yaml.write_text(FAST)
    run = tmp_path / "run"
    code = main(["pretrain", str(data_dir / "tiny"), "--preset", "tiny", "--objective", "data2vec",
                 "--output", str(run), "--max-steps", "80", "--config", str(yaml),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "regression" in printed and "target_std" in printed and "uniform guess" not in printed
    rows = _metrics(run)
    assert sorted(rows) == list(range(80))
    losses = [rows[s]["train/loss"] for s in range(80)]
    assert np.mean(losses[-20:]) <= 0.9 * losses[0], losses
    for key in ("train/target_std", "train/prediction_std", "train/ema_decay",
                "train/masked_fraction", "train/grad_norm"):
        assert np.isfinite(rows[79][key]), key
    assert rows[0]["train/ema_decay"] == pytest.approx(0.999)
    assert json.loads((run / "summary.json").read_text())["uniform_loss"] is None

    loaded = load_model(run / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.model, Data2VecForPretraining)
    assert isinstance(loaded.backbone, Wav2Vec2Model)
    assert not any(p.requires_grad for p in loaded.model.teacher.parameters())
    out = tmp_path / "features"
    assert main(["extract", str(run / "checkpoints" / "last.ckpt"), str(data_dir / "tiny"),
                 str(out), "--workers", "0", "--no-progress"]) == 0
    assert len(list(out.rglob("*.npy"))) == 23
    assert main(["convert", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "hf"),
                 "--to", "hf"]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["architectures"] == ["Wav2Vec2Model"]
    # fine-tuning takes the student's backbone alone
    from audio_ssl.models import Wav2Vec2ForCTC
    from audio_ssl.tasks.finetune import _initial_weights

    model_cfg, state, vocab, *_ = _initial_weights(run / "checkpoints" / "last.ckpt", False)
    assert vocab is None and state and all(k.startswith("backbone.") for k in state)
    missing, unexpected = Wav2Vec2ForCTC(model_cfg, 5).load_state_dict(state, strict=False)
    assert unexpected == [] and not any(k.startswith("backbone.") for k in missing)


@pytest.mark.slow
def test_cli_data2vec_resume_repeats_the_straight_run(tmp_path, data_dir):
    """The teacher travels in the checkpoint and catches up by the step alone: a run stopped at
    update 3 and resumed logs the straight run's losses and target spreads."""
    from audio_ssl.cli import main

    yaml = tmp_path / "fast.yaml"
    yaml.write_text(FAST.replace("checkpoint_every: 40", "checkpoint_every: 3")
                    + "optim: {schedule_steps: 6}\nmodel: {data2vec: {clones: 2}}\n")
    common = [str(data_dir / "tiny"), "--config", str(yaml), "--no-progress",
              "--objective", "data2vec"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(straight)]) == 0
    assert main(["pretrain", *common, "--max-steps", "3", "--output", str(split)]) == 0
    assert main(["pretrain", *common, "--max-steps", "6", "--output", str(split), "--resume"]) == 0
    a, b = _metrics(straight), _metrics(split)
    assert sorted(a) == sorted(b) == list(range(6))
    for step in range(6):
        for key in ("train/loss", "train/target_std", "train/prediction_std", "train/ema_decay"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for one update's backward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, lengths, generator=torch.Generator().manual_seed(0)).loss.backward()
    return sum(seen.values())


def test_student_activation_bound_is_below_what_autograd_keeps():
    """The memory bound that refuses an impossible clones x batch before training is a lower
    bound on what autograd keeps (counted by a saved-tensors hook), in total and in what each
    further clone adds, and it tracks the latter (within 3x here)."""
    from audio_ssl.models.data2vec import student_activation_bytes

    x, lengths = _batch(padded=False)
    kept, bound = {}, {}
    for clones in (2, 4):
        model = _model(clones=clones).train()
        kept[clones] = _saved_bytes(model, x, lengths)
        bound[clones] = student_activation_bytes(model.cfg, x.numel(), bytes_per_value=4)
        assert bound[clones] <= kept[clones], (clones, bound, kept)
    added, bound_added = kept[4] - kept[2], bound[4] - bound[2]
    print(f"two more clones keep {added / bound_added:.2f}x the bound")
    assert bound_added <= added <= 3 * bound_added, (bound_added, added)

# Over 400 lines: the pretraining and fine-tuning trees and their presets cross-reference
# (fine-tuning presets reuse the pretraining networks); dict/YAML code is in config_io.
"""Frozen configuration dataclasses, presets and YAML loading (the dict / YAML machinery is
:mod:`audio_ssl.config_io`; its functions are importable from here too).

Every component reads its own dataclass; a run's resolved config is the nested
:class:`PretrainConfig`, written as YAML beside its checkpoints so it can be repeated.
Presets (``tiny``, ``base``, ``large``) live here, in code, so an installed package needs no
files from the repository; ``configs/*.yaml`` hold overrides on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import typing
from typing import Any, Literal

from audio_ssl.config_io import dump, merge, overlay, to_dict  # dict / YAML round trip

ConvSpec = tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per layer

BASE_CONV: ConvSpec = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class FeatureEncoderConfig:
    """1-D conv stack on the raw waveform (z = f(x))."""

    conv_layers: ConvSpec = BASE_CONV
    norm: Literal["group", "layer"] = "group"  # group: GroupNorm on layer 0 (base); layer: every layer (large)
    conv_bias: bool = False
    grad_scale: float = 0.1  # gradient into the encoder is multiplied by this


@dataclass(frozen=True)
class ContextConfig:
    """Transformer context network (c = g(z))."""

    dim: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layer_drop: float = 0.05
    layer_norm_first: bool = False  # False: post-norm (base), True: pre-norm (large)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16


@dataclass(frozen=True)
class QuantizerConfig:
    """Gumbel-softmax product quantizer: G groups x V codes, codevectors of ``dim`` in all."""

    groups: int = 2
    codes: int = 320
    dim: int = 256
    temperature_start: float = 2.0
    temperature_end: float = 0.5
    temperature_decay: float = 0.999995  # per update
    codebook_init: Literal["uniform", "normal"] = "uniform"  # uniform(0, 1) as in fairseq/HF
    gumbel_noise: bool = True  # False: hard argmax of the logits, straight-through softmax

    def temperature(self, step: int) -> float:
        """Gumbel temperature at ``step``: a pure function of the update count."""
        return max(self.temperature_start * self.temperature_decay**step, self.temperature_end)


@dataclass(frozen=True)
class MaskConfig:
    """Span masking of the latent frames, with the paper's semantics."""

    prob: float = 0.065  # probability that a frame starts a span
    length: int = 10
    min_masks: int = 2  # at least this many spans per utterance


@dataclass(frozen=True)
class LossConfig:
    num_negatives: int = 100
    logit_temperature: float = 0.1
    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0
    # a distractor with exactly the positive's codes is the same target: its logit becomes -inf
    mask_identical_negatives: bool = True


@dataclass(frozen=True)
class BestRqConfig:
    """BEST-RQ targets (Chiu et al. 2022): a frozen random projection and a frozen random
    codebook on per-utterance normalised log-mel frames, stacked to the encoder's frame rate."""

    mels: int = 80
    stack: int = 2  # mel frames per encoder frame: the mel hop is the conv stack's hop / stack
    code_dim: int = 16
    codes: int = 1024
    seed: int = 0  # the projection and codebook are a pure function of this seed


@dataclass(frozen=True)
class HubertConfig:
    """HuBERT's prediction head: cosine similarity of the projected context to one learned
    embedding per cluster, over a temperature (fairseq's hubert)."""

    clusters: int = 100  # set from the targets folder by `audio-ssl pretrain --targets`
    logit_temperature: float = 0.1


@dataclass(frozen=True)
class ReconstructConfig:
    """Masked reconstruction (TERA / Mockingjay style, the generative family): a head predicts,
    from each masked frame's context vector, the per-utterance normalised 10 ms log-mel frames
    under that encoder frame (the conv stack's hop / 10 ms of them, stacked: 2 x 80 = 160
    values for the paper's 20 ms stack)."""

    n_mels: int = 80
    head_hidden: int = 0  # 0: a linear head; > 0: linear -> GELU -> linear with this width
    loss: Literal["l1", "l2"] = "l1"  # mean absolute or mean squared error over masked frames

    def __post_init__(self) -> None:
        for name, value, least in (("n_mels", self.n_mels, 1), ("head_hidden", self.head_hidden, 0)):
            if value < least:
                raise ValueError(f"model.reconstruct.{name} is {value}: expected at least {least}"
                                 + (" (0: a linear head)" if name == "head_hidden" else ""))


@dataclass(frozen=True)
class CpcConfig:
    """CPC / wav2vec (v1) (Oord et al. 2018; Schneider et al. 2019): a causal context network
    over the feature encoder's frames z predicts z_{t+k}, k = 1..``steps``, with one linear
    map per step, scored by dot product against ``negatives`` distractors drawn uniformly from
    the other frames of the same utterance (InfoNCE). No masking."""

    context: Literal["conv", "gru"] = "conv"  # conv: wav2vec's causal convs; gru: CPC's GRU
    dim: int = 256  # context network width (z is projected to it)
    layers: int = 5  # conv: causal conv layers (residual); gru: stacked GRU layers
    kernel: int = 3  # conv: frames each layer reads (itself and kernel - 1 before it)
    steps: int = 12  # K: future frames predicted
    negatives: int = 10  # distractors per prediction
    dropout: float = 0.0  # on the context network's input and between its layers

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "kernel", "steps", "negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config model.cpc.{name} is {value!r}: expected an integer "
                                 "of at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config model.cpc.dropout is {self.dropout!r}: expected a value "
                             "in [0, 1)")


@dataclass(frozen=True)
class Data2VecConfig:
    """data2vec 2.0 (Baevski et al., 2022) on the wav2vec 2.0 backbone: the student, on ``clones``
    masked copies of each utterance's feature-encoder output, regresses through a small conv
    decoder the average of the top ``top_k`` Transformer blocks of an EMA teacher that sees the
    unmasked frames. The teacher is an EMA copy of the context network (positional convolution
    and blocks); the feature encoder and projection are shared (one conv pass), as in data2vec.

    Targets: each of the top min(``top_k``, context.layers) block outputs normalised over time
    per utterance and channel (``instance_norm_layers``, data2vec's instance_norm_target_layer),
    averaged, and with ``instance_norm_targets`` the average normalised so again (data2vec's
    audio recipes leave it off).
    """

    tau_start: float = 0.999  # EMA decay at update 0
    tau_end: float = 0.9999  # reached after ``anneal_steps`` updates, then held
    anneal_steps: int = 0  # 0: the run's schedule length (optim.schedule_steps or max_steps)
    top_k: int = 8  # average the top min(top_k, context.layers) blocks of the teacher
    instance_norm_layers: bool = True
    instance_norm_targets: bool = False
    clones: int = 8  # masked copies of each utterance per encoder pass (data2vec 2.0: 8 for audio)
    decoder_dim: int = 384
    decoder_layers: int = 4
    decoder_kernel: int = 7  # odd: 'same' padding
    decoder_groups: int = 16  # must divide decoder_dim and context.dim
    loss: Literal["mse", "smooth_l1"] = "mse"  # per masked frame, mean over the target's dims
    smooth_l1_beta: float = 0.25

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            value = getattr(self, name)
            raise ValueError(f"model.data2vec.{name} is {value!r}: expected {expected}")

        if not 0.0 <= self.tau_start <= self.tau_end <= 1.0:
            fail("tau_start", f"0 <= tau_start <= tau_end ({self.tau_end}) <= 1")
        for name in ("top_k", "clones", "decoder_dim", "decoder_layers", "decoder_groups"):
            if getattr(self, name) < 1:
                fail(name, "at least 1")
        if self.anneal_steps < 0:
            fail("anneal_steps", "0 (the run's length) or more")
        if self.decoder_kernel < 1 or self.decoder_kernel % 2 == 0:
            fail("decoder_kernel", "an odd number of frames")
        if self.decoder_dim % self.decoder_groups:
            fail("decoder_dim", f"a multiple of decoder_groups ({self.decoder_groups})")
        if self.smooth_l1_beta <= 0:
            fail("smooth_l1_beta", "more than 0")

    def tau(self, step: int, total_steps: int) -> float:
        """EMA decay of the teacher update after update ``step``: a pure function of the step,
        linear from ``tau_start`` at 0 to ``tau_end`` at ``anneal_steps`` (or ``total_steps``)
        as data2vec's get_annealed_rate, then ``tau_end``."""
        steps = self.anneal_steps or total_steps
        if step >= steps:
            return self.tau_end
        return self.tau_end - (self.tau_end - self.tau_start) * (1.0 - step / steps)


@dataclass(frozen=True)
class ModelConfig:
    encoder: FeatureEncoderConfig = field(default_factory=FeatureEncoderConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    final_dim: int = 256  # shared space of context outputs and quantized targets
    dropout_input: float = 0.1  # on projected features before masking
    dropout_features: float = 0.1  # on the features fed to the quantizer
    detach_targets: bool = False  # True: the quantizer's input carries no gradient to the encoder
    # False: the targets are the (projected) conv features themselves, not Gumbel codevectors:
    # the paper's "continuous targets" ablation (fairseq's quantize_targets=False); no codebook,
    # no diversity loss, nothing to collapse
    quantize_targets: bool = True
    # the self-supervised objective: wav2vec 2.0's contrastive loss against its own quantized (or
    # continuous) targets, or BEST-RQ's masked prediction of fixed random-projection codes
    # (HuBERT: masked prediction of k-means labels made beforehand by `audio-ssl targets`;
    # reconstruct: the generative family, see ReconstructConfig; cpc: CPC / wav2vec (v1), a
    # causal context network predicting future frames, see CpcConfig; data2vec: regression of
    # an EMA teacher's averaged top layers, see Data2VecConfig)
    objective: Literal["wav2vec2", "hubert", "best-rq", "reconstruct", "cpc", "data2vec"] = \
        "wav2vec2"
    best_rq: BestRqConfig = field(default_factory=BestRqConfig)
    hubert: HubertConfig = field(default_factory=HubertConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    cpc: CpcConfig = field(default_factory=CpcConfig)
    data2vec: Data2VecConfig = field(default_factory=Data2VecConfig)

    # the backbone's context network, whichever objective built it: CPC's causal network has
    # its own size (model.cpc), every other objective the Transformer's (model.context). Code
    # that counts layers or sizes outputs asks these, never model.context directly.
    @property
    def context_layers(self) -> int:
        """Layers of the context network (``layer_1`` .. ``layer_N``; the last is its output)."""
        return self.cpc.layers if self.objective == "cpc" else self.context.layers

    @property
    def context_dim(self) -> int:
        """Width of the context network's input and of each layer's output."""
        return self.cpc.dim if self.objective == "cpc" else self.context.dim


OBJECTIVES: tuple[str, ...] = typing.get_args(typing.get_type_hints(ModelConfig)["objective"])


@dataclass(frozen=True)
class DataConfig:
    sample_rate: int = 16_000
    normalize: bool = False  # zero mean, unit variance per utterance
    max_batch_samples: int = 1_400_000  # per device
    max_crop_samples: int = 250_000
    # shorter files are skipped (2 s at 16 kHz), unless pad_min_samples keeps them
    min_samples: int = 32_000
    # files of pad_min_samples up to min_samples samples are kept whole, batched apart and
    # padded to their longest (the padding masked): keyword and command corpora are made of such
    # clips. 0: skipped, as fairseq
    pad_min_samples: int = 0
    num_buckets: int = 20
    num_workers: int = 2
    crop_to_shortest: bool = True  # crop each batch to its shortest item: no padding (fairseq)
    # few batch shapes: crops rounded down to a multiple of crop_multiple samples, batches cut
    # to a multiple of batch_multiple items (the rest wait for the next epoch). oneDNN builds
    # kernels per shape, so on CPUs a stream of new shapes costs more than the model (bf16:
    # 1.0x fp32 instead of 1.3x for tiny); 0 and 1: every shape, as fairseq
    crop_multiple: int = 0
    batch_multiple: int = 1
    targets: str = ""  # HuBERT: the folder `audio-ssl targets` wrote (labels of every file)

    @property
    def shortest(self) -> int:
        """Samples of the shortest file a run uses: pad_min_samples where it keeps short ones."""
        return self.pad_min_samples if self.pad_min_samples > 0 else self.min_samples


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_fraction: float = 0.08
    grad_clip: float = 10.0
    encoder_lr_scale: float = 1.0  # learning rate of the feature encoder relative to the rest
    quantizer_lr_scale: float = 1.0  # learning rate of the quantizer relative to the rest
    schedule_steps: int = 0  # length of the warm-up/decay schedule in updates; 0: train.max_steps
                             # (a shorter run with the schedule of a longer one: studies, sweeps)


@dataclass(frozen=True)
class TrainerConfig:
    """The loop settings pretraining and fine-tuning share: what
    :func:`audio_ssl.tasks.trainer.build_trainer` reads."""

    max_steps: int = 400_000
    log_every: int = 10
    seed: int = 1
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"  # auto: bf16-mixed on GPU, fp32 on CPU
    devices: int = 1
    num_nodes: int = 1
    accumulate_grad_batches: int = 1


@dataclass(frozen=True)
class TrainConfig(TrainerConfig):
    """Pretraining's loop: checkpoints every N updates, and the collapse watch."""

    checkpoint_every: int = 1000
    collapse_patience: int = 200  # steps a collapse symptom must persist before the warning


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# Presets


def _tiny() -> PretrainConfig:
    """A few M parameters: tests, the demo, CPU runs. Small crops and many updates per minute.

    Measured on ../shared/data (scripts/pretrain_shared.py and scripts/pretrain_sweep.py, 2 CPU
    cores; README, "Why the contrastive loss sat at log(K+1)"):
    - group-norm encoder: with a layer-norm encoder this size the Gumbel codebook collapses to
      one code per group within ~30 updates; no feature penalty (Adam drives the conv output
      below the layer norm's eps under it).
    - continuous targets (the paper's ablation, fairseq's quantize_targets=False): with Gumbel
      codevectors the positive and its distractors are equally far from the context within 30
      updates (cosines 0.002 and 0.002) and stay so for 1,000-2,000 updates; a quarter of the
      codes are Gumbel noise and 30 % of the targets change code every 5 updates, so there is
      nothing to predict. Continuous targets are a smooth, stable function of the audio.
    - 5-frame mask spans starting with probability 0.1 (about 41 % of frames masked) and a
      16-frame positional convolution: a masked frame has unmasked audio within 100 ms.
    Together: below 0.9 log(K+1) by update 272-330 in 3 of 3 seeds; each alone did not get there
    within 400 updates (quantized targets never, with or without the short spans).
    """
    return PretrainConfig(
        model=ModelConfig(
            encoder=FeatureEncoderConfig(
                conv_layers=((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2,
                norm="group",
            ),
            context=ContextConfig(
                dim=256, layers=4, heads=4, ffn_dim=1024, dropout=0.0, attention_dropout=0.0,
                layer_drop=0.0, layer_norm_first=True, pos_conv_kernel=16, pos_conv_groups=16,
            ),
            quantizer=QuantizerConfig(
                groups=2, codes=320, dim=128, temperature_decay=0.9995, codebook_init="normal",
            ),
            mask=MaskConfig(prob=0.1, length=5),
            loss=LossConfig(feature_penalty_weight=0.0),
            final_dim=128,
            dropout_input=0.0,
            dropout_features=0.0,
            quantize_targets=False,
            objective="cpc",
        ),
        data=DataConfig(
            normalize=True, max_batch_samples=8 * 32_000, max_crop_samples=32_000,
            min_samples=8_000, num_buckets=4, crop_multiple=3_200, batch_multiple=4,
        ),
        optim=OptimConfig(lr=1e-3, warmup_fraction=0.08, grad_clip=5.0),
        train=TrainConfig(max_steps=2000, checkpoint_every=250, log_every=10),
    )


def _base() -> PretrainConfig:
    """Paper BASE: 12 x 768, group-norm encoder, post-norm Transformer."""
    return PretrainConfig()


def _large() -> PretrainConfig:
    """Paper LARGE: 24 x 1024, layer-norm encoder, pre-norm Transformer, normalised audio."""
    return PretrainConfig(
        model=ModelConfig(
            encoder=FeatureEncoderConfig(norm="layer", conv_bias=True),
            context=ContextConfig(
                dim=1024, layers=24, heads=16, ffn_dim=4096, layer_drop=0.2, layer_norm_first=True
            ),
            quantizer=QuantizerConfig(dim=768, temperature_end=0.1),
            final_dim=768,
        ),
        data=DataConfig(normalize=True, max_batch_samples=1_200_000, max_crop_samples=320_000),
        optim=OptimConfig(lr=3e-4),
        train=TrainConfig(max_steps=600_000),
    )


PRESETS = {"tiny": _tiny, "base": _base, "large": _large}


def preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def load(preset_name: str = "tiny", yaml_path: str | Path | None = None,
         overrides: dict[str, Any] | None = None, model: ModelConfig | None = None,
         normalize: bool | None = None) -> PretrainConfig:
    """Preset, then a YAML file of overrides, then a dict of overrides.

    ``model`` (a checkpoint's network, for continued pretraining) replaces the preset's model
    section and ``normalize`` its ``data.normalize`` before the overrides apply, so a YAML file
    can still change the training-time fields (masks, loss weights, temperatures, dropout).
    """
    cfg = preset(preset_name)
    if model is not None:
        cfg = replace(cfg, model=model)
    if normalize is not None:
        cfg = replace(cfg, data=replace(cfg.data, normalize=normalize))
    return overlay(cfg, yaml_path, overrides)


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Rebuild a resolved config (as written beside checkpoints)."""
    return merge(PretrainConfig(), data)


__all__ = [
    "FeatureEncoderConfig", "ContextConfig", "QuantizerConfig", "MaskConfig", "LossConfig",
    "ReconstructConfig", "OBJECTIVES",
    "CpcConfig",
    "ModelConfig", "DataConfig", "OptimConfig", "TrainerConfig", "TrainConfig", "PretrainConfig",
    "PRESETS",
    "preset", "load", "merge", "from_dict", "to_dict", "dump",
    "TextConfig", "CTCConfig", "FinetuneDataConfig", "FinetuneOptimConfig", "FinetuneTrainConfig",
    "FinetuneConfig", "FINETUNE_PRESETS", "finetune_preset", "load_finetune",
]


# ---------------------------------------------------------------------------------------------
# Fine-tuning with CTC (speech recognition)


@dataclass(frozen=True)
class TextConfig:
    """Transcript normalisation, applied alike to training targets, references and hypotheses.

    In order: Unicode NFKC, lower case, accents stripped, ``to_space`` characters become spaces,
    every character that is not a kept letter, digit or ``keep`` character is dropped, runs of
    spaces fold into one. The defaults give the shared corpora's rule (a-z, apostrophe, space).
    """

    lowercase: bool = True
    letters: Literal["ascii", "any"] = "ascii"  # ascii: a-z (A-Z); any: every Unicode letter
    strip_accents: bool = True  # "café" -> "cafe" (before the letters are filtered)
    digits: bool = False  # keep 0-9
    keep: str = "'"  # other characters kept as they are
    to_space: str = "-"  # characters replaced by a space


@dataclass(frozen=True)
class CTCConfig:
    """The CTC head and what fine-tuning does to the backbone.

    Masks follow fairseq's fine-tuning recipe (base_10h / base_100h: ``mask_prob 0.65``,
    ``mask_length 10``, ``mask_channel_prob 0.5``, ``mask_channel_length 64``), converted to our
    span-start probabilities: 0.65 / 10 = 0.065 and 0.5 / 64. ``min_masks`` is 0 for both: fairseq
    forces two time spans per utterance, which would mask most of a sub-second clip.
    """

    final_dropout: float = 0.0  # on the context vectors before the linear head
    time_mask: MaskConfig = field(default_factory=lambda: MaskConfig(prob=0.065, length=10,
                                                                     min_masks=0))
    channel_mask: MaskConfig = field(default_factory=lambda: MaskConfig(prob=0.5 / 64, length=64,
                                                                        min_masks=0))
    freeze_feature_encoder: bool = True  # fairseq feature_grad_mult 0.0
    freeze_updates: int = 0  # updates with the loaded backbone frozen (freeze_finetune_updates)
    reinit_layers: int = 0  # top context layers left at random weights (not loaded; not fairseq)
    # frames the CTC head reads around each frame (odd): 1 a linear head (wav2vec 2.0, HF);
    # 3, 5, ...: a centred convolution first, the future a causal backbone (CPC) has not heard
    head_kernel: int = 1
    # dynamic chunk training (WeNet's), for streaming (--chunk-train): per batch a chunk size,
    # each frame attending to its own chunk and chunk_left chunks before it (the positional
    # convolution still reads its kernel's reach)
    chunk_train: bool = False
    chunk_frames: tuple[int, int] = (10, 100)  # chunk sizes drawn from, inclusive (frames)
    chunk_left: int = 4  # chunks before its own a frame attends to (-1: all)
    chunk_full_prob: float = 0.5  # batches that keep full attention

    def __post_init__(self) -> None:
        check_head_kernel(self.head_kernel)


def check_head_kernel(value: Any) -> int:
    """``ctc.head_kernel`` as given, or a ValueError naming it: an odd number of frames >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ValueError(f"ctc.head_kernel is {value!r}: expected an odd number of frames, at "
                         "least 1 (1: a linear head)")
    return value


MIN_SPEED, MAX_SPEED = 0.5, 2.0  # data.speed_factors accepted (Kaldi's are 0.9 and 1.1)


def check_speed_factors(factors: Any) -> tuple[float, ...]:
    """``data.speed_factors`` as given, or a ValueError naming the first that is not a speed
    between :data:`MIN_SPEED` and :data:`MAX_SPEED`."""
    for k, f in enumerate(factors):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (
                MIN_SPEED <= f <= MAX_SPEED):
            raise ValueError(f"data.speed_factors[{k}] is {f!r}: expected a speed between "
                             f"{MIN_SPEED} and {MAX_SPEED} (1.0 as recorded, 1.1 ten per cent "
                             "faster)")
    return tuple(factors)


@dataclass(frozen=True)
class FinetuneDataConfig:
    sample_rate: int = 16_000
    normalize: bool | None = None  # None: as the pretrained model was trained (its data.normalize)
    max_batch_samples: int = 3_200_000  # padded samples per batch (B * S), per device
    max_samples: int = 560_000  # longer utterances are skipped and reported (35 s)
    min_samples: int = 400  # shorter ones too (one frame of the BASE conv stack)
    num_buckets: int = 20
    num_workers: int = 2
    # speed perturbation of training utterances (Kaldi's, ESPnet's, lhotse's): each time an
    # utterance is drawn it plays at one of these speeds, chosen uniformly (tempo and pitch
    # together; list 1.0 to keep some as recorded), e.g. [0.9, 1.0, 1.1]; () none. A speed
    # that would leave too few frames for the transcript is not used for that utterance
    speed_factors: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_speed_factors(self.speed_factors)


@dataclass(frozen=True)
class FinetuneOptimConfig:
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    stages: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri-stage: warm-up, hold, decay
    init_scale: float = 0.01  # learning rate at step 0, relative to lr
    final_scale: float = 0.05  # at the end of the decay
    grad_clip: float = 0.0  # 0: no clipping (fairseq's default)
    # learning rate of the pretrained backbone relative to lr (the head and any
    # ctc.reinit_layers train at lr); 1.0 as fairseq, lower as SpeechBrain's separate lr_wav2vec
    backbone_lr_scale: float = 1.0


@dataclass(frozen=True)
class FinetuneTrainConfig(TrainerConfig):
    """Fine-tuning's loop: validation and checkpoints every N updates."""

    max_steps: int = 80_000
    val_every: int = 1000  # validation (greedy WER, CER) and checkpoints every N updates
    # what best.ckpt is chosen by: the lowest WER (the other rate breaks ties), or the lowest
    # CER (characters: languages written without spaces, or too few labels for words)
    best_by: Literal["wer", "cer"] = "wer"


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run: the network (taken from the pretrained checkpoint), text, CTC, data,
    optimiser and loop settings. Written beside the checkpoints and inside them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    ctc: CTCConfig = field(default_factory=CTCConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


def _finetune_base() -> FinetuneConfig:
    """fairseq's base_100h recipe (80k updates at lr 3e-5, no freezing); base_10h differs in
    lr 5e-5, 20k updates and ``freeze_updates`` 10k."""
    return FinetuneConfig(model=_base().model)


def _finetune_tiny() -> FinetuneConfig:
    """The tiny network on a CPU: minutes, not days. Higher learning rate, short schedule,
    small padded batches; masks and schedule shape as in the paper."""
    return FinetuneConfig(
        model=_tiny().model,
        ctc=CTCConfig(freeze_updates=100),
        data=FinetuneDataConfig(max_batch_samples=320_000, max_samples=320_000, min_samples=400,
                                num_buckets=8),
        optim=FinetuneOptimConfig(lr=5e-4, grad_clip=5.0),
        train=FinetuneTrainConfig(max_steps=1000, val_every=100, log_every=10),
    )


FINETUNE_PRESETS = {"tiny": _finetune_tiny, "base": _finetune_base}


def finetune_preset(name: str = "tiny", model: ModelConfig | None = None) -> FinetuneConfig:
    """Fine-tuning preset ``name`` (``tiny`` or ``base``), on the network ``model`` when given
    (the pretrained checkpoint's)."""
    if name not in FINETUNE_PRESETS:
        raise ValueError(f"unknown fine-tuning preset {name!r}: expected one of "
                         f"{sorted(FINETUNE_PRESETS)}")
    cfg = FINETUNE_PRESETS[name]()
    return cfg if model is None else replace(cfg, model=model)


def load_finetune(preset_name: str = "tiny", yaml_path: str | Path | None = None,
                  overrides: dict[str, Any] | None = None,
                  model: ModelConfig | None = None) -> FinetuneConfig:
    """Fine-tuning preset (on ``model``), then a YAML file of overrides, then a dict."""
    return overlay(finetune_preset(preset_name, model), yaml_path, overrides)


"""Frozen configuration dataclasses, presets and YAML loading.

Every component reads its own dataclass; a run's resolved config is the nested
:class:`PretrainConfig`, written as YAML beside its checkpoints so it can be repeated.
Presets (``tiny``, ``base``, ``large``) live here, in code, so an installed package needs no
files from the repository; ``configs/*.yaml`` hold overrides on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

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


@dataclass(frozen=True)
class DataConfig:
    sample_rate: int = 16_000
    normalize: bool = False  # zero mean, unit variance per utterance
    max_batch_samples: int = 1_400_000  # per device
    max_crop_samples: int = 250_000
    min_samples: int = 32_000  # shorter files are skipped (2 s at 16 kHz)
    num_buckets: int = 20
    num_workers: int = 2
    crop_to_shortest: bool = True  # crop each batch to its shortest item: no padding (fairseq)


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


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 400_000
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 1
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"  # auto: bf16-mixed on GPU, fp32 on CPU
    devices: int = 1
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
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

    Measured on ../shared/data (scripts/pretrain_shared.py, 2 CPU cores): with a layer-norm
    encoder this size collapses to one code per group within ~30 updates at any learning rate
    from 5e-4 up, whatever the diversity weight (0.1-1.0) or the -inf rule; the group-norm
    encoder of BASE keeps its codes in use, so tiny uses it. With the feature penalty at 10,
    Adam shrinks the conv output (the 0.1 gradient scale does not slow Adam) until, after ~1,500
    updates, its variance is below the layer norm's eps and the targets carry nothing: tiny turns
    the penalty off.
    """
    return PretrainConfig(
        model=ModelConfig(
            encoder=FeatureEncoderConfig(
                conv_layers=((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2,
                norm="group",
            ),
            context=ContextConfig(
                dim=256, layers=4, heads=4, ffn_dim=1024, dropout=0.0, attention_dropout=0.0,
                layer_drop=0.0, layer_norm_first=True, pos_conv_kernel=64, pos_conv_groups=16,
            ),
            quantizer=QuantizerConfig(
                groups=2, codes=320, dim=128, temperature_decay=0.9995, codebook_init="normal",
            ),
            loss=LossConfig(feature_penalty_weight=0.0),
            final_dim=128,
            dropout_input=0.0,
            dropout_features=0.0,
        ),
        data=DataConfig(
            normalize=True, max_batch_samples=8 * 32_000, max_crop_samples=32_000,
            min_samples=8_000, num_buckets=4,
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


# ---------------------------------------------------------------------------------------------
# Dict / YAML round trip


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain nested dict of builtins (tuples become lists)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"config {where}: expected a mapping, got {value!r}")
        return merge(hint(), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"config {where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is Literal:
        options = get_args(hint)
        if value not in options and str(value) not in options:
            raise ValueError(f"config {where}: expected one of {list(options)}, got {value!r}")
        return value if value in options else str(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, float, bool, str) and not isinstance(value, hint):
        raise ValueError(f"config {where}: expected {hint.__name__}, got {value!r}")
    return value


def merge(cfg: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """Return ``cfg`` with ``overrides`` (a nested dict) applied; unknown keys are an error."""
    hints = get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"config: unknown key {path!r}; expected one of {sorted(known)}")
        current = getattr(cfg, key)
        if is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return replace(cfg, **changes)


def load(preset_name: str = "tiny", yaml_path: str | Path | None = None,
         overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Preset, then a YAML file of overrides, then a dict of overrides."""
    cfg = preset(preset_name)
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a mapping at the top level")
        cfg = merge(cfg, data)
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Rebuild a resolved config (as written beside checkpoints)."""
    return merge(PretrainConfig(), data)


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = [
    "FeatureEncoderConfig", "ContextConfig", "QuantizerConfig", "MaskConfig", "LossConfig",
    "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "PretrainConfig", "PRESETS",
    "preset", "load", "merge", "from_dict", "to_dict", "dump",
]

"""Which arithmetic a command runs in: ``--precision auto|32|bf16-mixed``, chosen once, with why.

``auto`` picks bf16-mixed where bf16 matrix products are native -- every CUDA device torch
supports bf16 on, and CPUs with AVX512-BF16 or AMX-BF16 units that oneDNN may use -- and fp32
elsewhere: on a CPU without those units bf16 is emulated and slower than fp32. bf16-mixed means
autocast: the matrix products and convolutions run in bf16, while parameters, optimizer state
and what is fragile (cosine logits, Gumbel softmax, CTC, the losses) stay in fp32.

The CPU answer comes from ``/proc/cpuinfo``'s flags, or torch's cpuinfo queries where there is
no such file (macOS, Windows), and honours ``ONEDNN_MAX_CPU_ISA``: capped below AVX512_CORE_BF16, oneDNN cannot use the
units, so ``auto`` stays in fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

CHOICES = ("auto", "32", "bf16-mixed")
_ALIASES = {"fp32": "32", "32-true": "32", "bf16": "bf16-mixed"}
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps under which it has no bf16 dot products (it then emulates them)
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                   "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``"32"`` or ``"bf16-mixed"``; ``reason`` says why."""

    name: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16-mixed"

    @property
    def lightning(self) -> str:
        """The value of ``L.Trainer(precision=...)``."""
        return "bf16-mixed" if self.bf16 else "32-true"

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def _torch_native_bf16() -> bool | None:
    """torch's own cpuinfo answer (x86), or None where this torch cannot tell."""
    queries = [getattr(torch.cpu, name, None)
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(q is None for q in queries):
        return None
    return any(q() for q in queries)


def cpu_bf16(flags: set[str] | None = None, onednn_isa: str | None = None,
             torch_says: bool | None = None) -> tuple[bool, str]:
    """Whether this CPU has bf16 matrix units that oneDNN may use, and why (one phrase).

    The arguments override what is detected (for tests): ``flags`` the cpuinfo flags,
    ``onednn_isa`` the ``ONEDNN_MAX_CPU_ISA`` value, ``torch_says`` torch's cpuinfo answer.
    """
    if onednn_isa is None:
        onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if flags is None:
        flags = cpu_flags()
        if torch_says is None:
            torch_says = _torch_native_bf16()
    found = [f for f in NATIVE_FLAGS if f in flags]
    if not found and torch_says:  # no /proc/cpuinfo (macOS, Windows): torch's cpuinfo tells
        found = ["bf16"]
    if not found:
        return False, "this CPU has no avx512_bf16 or amx_bf16 units; bf16 would be emulated"
    if onednn_isa.upper() in _ONEDNN_NO_BF16:
        return False, (f"ONEDNN_MAX_CPU_ISA={onednn_isa} keeps oneDNN off this CPU's "
                       f"{'/'.join(found)} units")
    return True, f"this CPU has {'/'.join(found)} units"


def resolve(requested: str, device_type: str, **detected) -> Precision:
    """``requested`` (auto, 32, bf16-mixed; fp32 and bf16 are accepted for 32 and bf16-mixed)
    on a ``device_type`` (cpu, cuda) -> the precision to run in. ``detected`` goes to
    :func:`cpu_bf16`."""
    name = _ALIASES.get(requested, requested)
    if name not in CHOICES:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(CHOICES)}")
    if name != "auto":
        return Precision(name, "asked for")
    if device_type == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return Precision("32", "auto: this GPU has no bf16")
        return Precision("bf16-mixed", "auto: on a GPU")
    native, why = cpu_bf16(**detected)
    return Precision("bf16-mixed" if native else "32", f"auto: {why}")


def device_type_of(accelerator: str) -> str:
    """Lightning's ``accelerator`` argument (auto, cpu, gpu, cuda) -> ``cpu`` or ``cuda``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


__all__ = ["CHOICES", "Precision", "cpu_flags", "cpu_bf16", "resolve", "device_type_of"]

"""Collapse watch: the two failures users of the peers meet most, caught while training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CollapseWatch:
    """Feed it the contrastive loss and code perplexity of every step, or of every few steps
    (the training loop feeds it the steps it logs); it returns warnings.

    - *no learning signal*: the contrastive loss stays within ``tolerance`` of log(K + 1), a
      uniform guess among the candidates (fairseq#3661, #3718, #4530);
    - *codebook collapse*: the code perplexity falls towards G, the number of groups, i.e. one
      code per group is used for everything (fairseq#3687, transformers#14387).

    A symptom must hold for ``patience`` consecutive steps (after ``grace`` steps of warm-up) to
    warn, counted in training steps between the updates that show it; each warning is given once
    until the symptom clears.
    """

    num_negatives: int
    groups: int
    codes: int
    patience: int = 200
    grace: int = 500
    tolerance: float = 0.02
    _streak: dict[str, int] = field(default_factory=lambda: {"plateau": 0, "collapse": 0})
    _warned: set[str] = field(default_factory=set)
    _last_step: int | None = None

    @property
    def uniform_loss(self) -> float:
        return math.log(self.num_negatives + 1)

    def update(self, step: int, contrastive: float, code_perplexity: float) -> list[str]:
        symptoms = {
            "plateau": abs(contrastive - self.uniform_loss) < self.tolerance,
            "collapse": code_perplexity < 2.0 * self.groups,
        }
        warnings = []
        gap = 1 if self._last_step is None else max(1, step - self._last_step)
        self._last_step = step
        for name, present in symptoms.items():
            self._streak[name] = self._streak[name] + gap if present else 0
            if not present:
                self._warned.discard(name)
            elif (step >= self.grace and self._streak[name] >= self.patience
                  and name not in self._warned):
                self._warned.add(name)
                warnings.append(self._message(name, step, contrastive, code_perplexity))
        return warnings

    def state_dict(self) -> dict:
        return {"streak": dict(self._streak), "warned": sorted(self._warned),
                "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self._streak.update(state["streak"])
        self._warned = set(state["warned"])
        self._last_step = state.get("last_step")

    def _message(self, name: str, step: int, loss: float, ppl: float) -> str:
        if name == "plateau":
            return (
                f"collapse watch (step {step}): the contrastive loss has stayed at {loss:.3f} for "
                f"{self._streak[name]} steps, log(K+1) = {self.uniform_loss:.3f} for K = "
                f"{self.num_negatives}: the model guesses uniformly among the candidates and is "
                "not learning. Usual remedies: a lower learning rate or longer warm-up, more audio "
                "per update, a faster Gumbel temperature decay on small models."
            )
        return (
            f"collapse watch (step {step}): code perplexity {ppl:.1f} is near G = {self.groups} "
            f"(of {self.groups * self.codes} codes): the quantizer uses almost one code per "
            "group, so the contrastive task becomes trivial. Usual remedies: a larger diversity "
            "weight, a higher final Gumbel temperature, a lower learning rate."
        )


def escape_step(losses: list[tuple[int, float]], uniform: float, threshold: float = 0.9,
                hold: int = 50) -> int | None:
    """When the loss left the plateau: the first logged step from which every logged loss stays
    below ``threshold`` x ``uniform`` (the loss of a uniform guess) for ``hold`` steps, or None.
    ``losses`` are (step, loss) pairs in step order."""
    bound = threshold * uniform
    start = None
    for step, loss in losses:
        if loss < bound:
            if start is None:
                start = step
            if step - start >= hold:
                return start
        else:
            start = None
    return None



@dataclass
class SpreadWatch:
    """The collapse of a self-distilled teacher (data2vec; fairseq#4177, #5239): feed it the
    targets' spread (``train/target_std``) of the logged steps; it returns warnings.

    *target collapse*: the spread falls below ``ratio`` x its first logged value, i.e. the
    teacher gives nearly the same vector at every frame. Targets normalised per layer over time
    stay near 1 while the teacher's outputs vary at all (their average over K decorrelated layers
    no lower than about 1/sqrt(K) of it), so 0.1 of the first value is far below healthy
    training and well above the 0 a constant teacher reaches. Patience and grace as
    :class:`CollapseWatch`.
    """

    patience: int = 200
    grace: int = 500
    ratio: float = 0.1
    first: float | None = None
    _streak: int = 0
    _warned: bool = False
    _last_step: int | None = None

    def update(self, step: int, target_std: float) -> list[str]:
        if self.first is None:
            self.first = target_std
        present = target_std < self.ratio * self.first
        gap = 1 if self._last_step is None else max(1, step - self._last_step)
        self._last_step = step
        self._streak = self._streak + gap if present else 0
        if not present:
            self._warned = False
            return []
        if step < self.grace or self._streak < self.patience or self._warned:
            return []
        self._warned = True
        return [f"collapse watch (step {step}): the targets' spread over frames (target_std) is "
                f"{target_std:.4f}, below {self.ratio} x its first value {self.first:.4f} for "
                f"{self._streak} steps: the EMA teacher gives nearly the same vector at every "
                "frame. Usual remedies: a higher tau_start or a slower tau ramp, a lower "
                "learning rate, instance-normalised target layers."]

    def state_dict(self) -> dict:
        return {"first": self.first, "streak": self._streak, "warned": self._warned,
                "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self.first, self._streak = state["first"], state["streak"]
        self._warned, self._last_step = state["warned"], state["last_step"]

"""The choices a user makes, as enums checked in one place, and `Method`: what produced a label
map (an ensemble rule or one member, plus clean-up steps), with its one spelling as a name.

Nothing here imports torch: the Slicer module offers these options before torch is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Optional, Sequence


class _Choice(str, Enum):
    """A string enum whose `parse` names the valid values in its error (MONAI's StrEnum idea)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value, what: str = ""):
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown {what or cls.__name__} {value!r}; choose one of "
                             f"{', '.join(cls.values())}") from None


class FusionRule(_Choice):
    """How member outputs become one label map (see `inference.fusion`)."""

    MEAN = "mean"  # argmax of the members' mean probabilities
    WEIGHTED = "weighted"  # argmax of a weighted mean (a weight per member and class)
    VOTE = "vote"  # majority vote of the members' labels (SimpleITK)
    STAPLE = "staple"  # multi-label STAPLE of the members' labels (SimpleITK)


class PostprocessStep(_Choice):
    """Clean-up steps after fusion (see `inference.postprocess`). Named in this order; they
    run in the order gate, heart, lcc whatever the order given (`postprocess.apply_steps`)."""

    LCC = "lcc"  # keep each structure's largest connected component
    GATE = "gate"  # erase slices most members see as empty
    HEART = "heart"  # keep the largest connected object of all foreground


class Backend(_Choice):
    """What runs a member's network (see `inference.onnx_runtime`). Labels are equal either way
    (checked on real frames); the choice is cost only."""

    AUTO = "auto"  # ONNX Runtime on the CPU when it is installed, torch otherwise and on CUDA
    ONNXRUNTIME = "onnxruntime"  # an ONNX export of the member's weights, cached, CPU only
    TORCH = "torch"  # the reference: the training path and the CUDA path


class Preset(_Choice):
    """A point on the accuracy-cost front: a member set, a fusion and clean-up, and where the
    members run, chosen on validation and recorded in the manifest (`core.manifest`), with its
    measured time per frame."""

    FAST = "fast"
    BALANCED = "balanced"
    FULL = "full"


#: The rule list as plain strings, for argparse choices and the Slicer panel.
FUSION_RULES: tuple[str, ...] = FusionRule.values()
POSTPROCESS_STEPS: tuple[str, ...] = PostprocessStep.values()


def check_steps(steps: Iterable[str]) -> tuple[str, ...]:
    """Post-processing steps in their one canonical order (that of `PostprocessStep`), each
    once; an unknown step is refused, naming the known ones."""
    steps = [str(s) for s in steps]
    unknown = [s for s in steps if s not in POSTPROCESS_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step(s) {unknown}; known: "
                         f"{', '.join(POSTPROCESS_STEPS)}")
    return tuple(s for s in POSTPROCESS_STEPS if s in steps)


def lone_member_steps(steps: Sequence[str]) -> tuple[str, ...]:
    """The steps a single member can get on its own: gating needs the other members'
    opinions, so a lone member keeps only the connected-component steps."""
    return tuple(s for s in check_steps(steps) if s != PostprocessStep.GATE)


def rival_member_steps(steps: Sequence[str]) -> list[tuple[str, ...]]:
    """The post-processing variants each lone member is scored with when it is the rival an
    ensemble shipping `steps` must beat: raw, largest component, and the lone part of `steps`.

    Why always the largest component, even when the ensemble ships without it: a single network
    plus that clean-up is a pipeline anyone can run, so the best member is taken over all of
    these, and an ensemble cannot win its comparison by dropping a clean-up its rival needs."""
    return list(dict.fromkeys([(), ("lcc",), lone_member_steps(steps)]))  # in order, once each


ENSEMBLE = "ensemble"

#: The margin (pixels of the members' 1.5 mm network grid) that heart-region inference grows
#: the located heart by, where a user does not choose one (`--heart-margin`, the panel's
#: "Heart region only"). Chosen on the validation split; see docs/usage.md, "Heart-region inference".
HEART_MARGIN_PX = 16


@dataclass(frozen=True)
class Method:
    """What produced a label map: the ensemble under `rule`, or the member `member`, followed by
    clean-up `steps`. `name` is its one spelling in reports and CSVs ("ensemble-weighted+lcc",
    "unetpp25d-mnv2+lcc"); `Method.parse` reads it back."""

    rule: Optional[FusionRule] = None  # None: a single member
    member: str = ""  # the member's name when `rule` is None
    steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.rule is None) == (not self.member):
            raise ValueError("a Method is either an ensemble rule or one member, not both")
        if self.rule is not None:
            object.__setattr__(self, "rule", FusionRule.parse(self.rule, "fusion rule"))
        object.__setattr__(self, "steps", check_steps(self.steps))

    @classmethod
    def ensemble(cls, rule: str, steps: Sequence[str] = ()) -> "Method":
        return cls(rule=FusionRule.parse(rule, "fusion rule"), steps=tuple(steps))

    @classmethod
    def single(cls, member: str, steps: Sequence[str] = ()) -> "Method":
        return cls(member=member, steps=tuple(steps))

    @property
    def is_ensemble(self) -> bool:
        return self.rule is not None

    @property
    def base(self) -> str:
        """The name without its clean-up steps: "ensemble-weighted" or the member's name."""
        return f"{ENSEMBLE}-{self.rule.value}" if self.is_ensemble else self.member

    @property
    def suffix(self) -> str:
        """The clean-up part of the name: "" for none, else "+lcc", "+lcc+gate", ..."""
        return "".join(f"+{s}" for s in self.steps)

    @property
    def name(self) -> str:
        return self.base + self.suffix

    def __str__(self) -> str:
        return self.name

    def with_steps(self, steps: Sequence[str]) -> "Method":
        return Method(self.rule, self.member, tuple(steps))

    @classmethod
    def parse(cls, name: str) -> "Method":
        """Read back a name `Method.name` wrote."""
        base, *steps = str(name).split("+")
        if base.startswith(f"{ENSEMBLE}-") and base[len(ENSEMBLE) + 1:] in FUSION_RULES:
            return cls.ensemble(base[len(ENSEMBLE) + 1:], steps)
        if not base:
            raise ValueError(f"{name!r} is not a method name")
        return cls.single(base, steps)

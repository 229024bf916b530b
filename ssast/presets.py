"""The official recipes' data settings, one table: normalization, input length, augmentation.

One entry per recipe of the SSAST/AST code (``run_as.sh``, ``run_esc_patch.sh``,
``run_sc.sh``) and one for pretraining, which uses AudioSet's statistics and no augmentation.
``label_set`` names the labels a recipe's models predict, and ``multilabel`` whether a clip may
have several (AudioSet) or exactly one (ESC-50, Speech Commands); released fine-tuned files
store neither, so the loader reads them from here by their label count.
"""
from __future__ import annotations

from dataclasses import dataclass

from .augment import AugmentConfig
from .features import AUDIOSET_MEAN, AUDIOSET_STD, FeatureConfig


@dataclass(frozen=True)
class Preset:
    name: str
    mean: float
    std: float
    target_length: int  # frames per clip
    augment: AugmentConfig
    num_labels: int | None = None
    multilabel: bool | None = None
    label_set: str | None = None

    def features(self, **overrides) -> FeatureConfig:
        """The preset's :class:`FeatureConfig`; ``overrides`` (None values ignored) replace fields."""
        fields = dict(mean=self.mean, std=self.std, target_length=self.target_length)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return FeatureConfig(**fields)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("audioset", AUDIOSET_MEAN, AUDIOSET_STD, 1024, AugmentConfig(freqm=48, timem=192, mixup=0.5),
           num_labels=527, multilabel=True, label_set="audioset"),
    Preset("esc50", -6.6268077, 5.358466, 512, AugmentConfig(freqm=24, timem=96, noise=True),
           num_labels=50, multilabel=False, label_set="esc50"),
    Preset("speechcommands", -6.845978, 5.5654526, 128, AugmentConfig(freqm=48, timem=48, mixup=0.6, noise=True),
           num_labels=35, multilabel=False, label_set="speechcommands"),
    Preset("pretrain", AUDIOSET_MEAN, AUDIOSET_STD, 1024, AugmentConfig()),
)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}") from None


def for_labels(num_labels: int) -> Preset | None:
    """The recipe whose models have ``num_labels`` outputs (527 AudioSet, 50 ESC-50, 35 Speech Commands)."""
    return next((p for p in PRESETS.values() if p.num_labels == num_labels), None)

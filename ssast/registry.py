"""Every released SSAST and AST model, by name: geometry, labels, normalization, download.

The facts come from the public releases: the SSAST README (Gong et al., AAAI 2022: the
pretrained models and the ablation models of the paper's Table 2) and the AST README (Gong et
al., Interspeech 2021: AudioSet and Speech Commands models), with the Hugging Face hub ids of
the AST conversions.

    >>> from ssast import registry
    >>> r = registry.resolve("ssast-base-frame-400.pth")
    >>> r.name, (r.fshape, r.tshape), r.mask_patch
    ('SSAST-Base-Frame-400', (128, 2), 400)
    >>> path = registry.fetch(r)          # the cached file, downloaded and verified if missing

Names are matched case-insensitively, with or without ``.pth``: the release name, the file
name, the ablation ID (``ablation-1``), the Hugging Face id (with or without ``MIT/``) or the
download URL. Label names ship with the package: :func:`label_names`.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import presets
from .checkpoint import Checkpoint, CheckpointError, read_checkpoint
from .config import SIZES, ModelConfig, canonical_size
from .download import cache_dir, download, source_url
from .features import FeatureConfig
from .sources import SourceError, read_label_csv

# Label sets: number of labels and the package file with their ids and names.
LABEL_SETS: dict[str, tuple[int, str]] = {
    name: (presets.get(name).num_labels, f"{name}_class_labels_indices.csv") for name in ("audioset", "speechcommands")
}


class UnknownModelError(KeyError, ValueError):
    """No release has this name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class Release:
    """One released checkpoint file and everything known about it without downloading it."""

    name: str  # as the release spells it
    file: str  # file name of the download
    url: str  # the release's download address
    family: str  # "ssast" (self-supervised) or "ast" (supervised, fine-tuned)
    model_size: str  # tiny / small / base (SSAST) or AST's base384
    fshape: int
    tshape: int
    fstride: int
    tstride: int
    input_tdim: int  # frames the model was trained on
    input_fdim: int  # mel bins
    mask_patch: int | None  # masked patches in pretraining (SSAST)
    label_set: str | None  # None: a pretrained encoder without labels
    mean: float  # input normalization, (x - mean) / (2 * std)
    std: float
    purpose: str  # what it is for, one line
    data: str  # what it was trained on
    result: str | None = None  # the result the release reports for it
    hub_id: str | None = None  # Hugging Face hub id of the transformers conversion
    size_bytes: int | None = None  # file size, where the release states it
    aliases: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        return "pretrain" if self.label_set is None else "finetune"

    @property
    def label_dim(self) -> int | None:
        return None if self.label_set is None else LABEL_SETS[self.label_set][0]

    @property
    def patch(self) -> str:
        """``"frame"`` for models whose patch spans every mel bin, else ``"patch"``."""
        return "frame" if self.fshape == self.input_fdim else "patch"

    def config(self) -> ModelConfig:
        """The model geometry of this release (the input size it was trained on)."""
        preset = SIZES[canonical_size(self.model_size)]
        return ModelConfig(
            **preset, model_size=self.model_size, fshape=self.fshape, tshape=self.tshape,
            fstride=self.fstride, tstride=self.tstride, input_fdim=self.input_fdim,
            input_tdim=self.input_tdim, stage=self.stage, label_dim=self.label_dim or 527,
            default_task="ft_cls" if self.family == "ast" else "ft_avgtok",
        )

    def feature_config(self) -> FeatureConfig:
        """Feature settings the model was trained with (16 kHz Kaldi fbank, its mean and std)."""
        return FeatureConfig(num_mel_bins=self.input_fdim, mean=self.mean, std=self.std,
                             target_length=self.input_tdim)

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.config())

    @property
    def path(self) -> Path:
        """Where the file lives in the cache (whether or not it is there)."""
        return cache_dir() / self.file

    @property
    def is_cached(self) -> bool:
        return self.path.is_file()

    def labels(self) -> tuple[list[str], list[str]] | None:
        """(ids, display names) of the label set, or None for a pretrained encoder."""
        return None if self.label_set is None else label_names(self.label_set)


# ---------------------------------------------------------------------------- the table
_SSAST_DATA = "AudioSet-2M + Librispeech960"
_AUDIO_SPEECH = "avg. audio {} / avg. speech {} (SSAST paper)"


def _ssast(name: str, file: str, url: str, size: str, patch: str, mask_patch: int, purpose: str, *,
           data: str = _SSAST_DATA, result: str | None = None, aliases: tuple[str, ...] = ()) -> Release:
    fshape, tshape = (16, 16) if patch == "patch" else (128, 2)
    return Release(
        name=name, file=file, url=url, family="ssast", model_size=size, fshape=fshape, tshape=tshape,
        fstride=fshape, tstride=tshape, input_tdim=1024, input_fdim=128, mask_patch=mask_patch,
        label_set=None, mean=presets.get("pretrain").mean, std=presets.get("pretrain").std, purpose=purpose,
        data=data, result=result,
        aliases=aliases,
    )


def _ast(file: str, url: str, stride: int, purpose: str, result: str, hub_id: str, *,
         speech: bool = False) -> Release:
    recipe = presets.get("speechcommands" if speech else "audioset")
    return Release(
        name=file.removesuffix(".pth"), file=file, url=url, family="ast", model_size="base384",
        fshape=16, tshape=16, fstride=stride, tstride=stride, input_tdim=recipe.target_length,
        input_fdim=128, mask_patch=None, label_set=recipe.label_set, mean=recipe.mean, std=recipe.std,
        purpose=purpose,
        data="Speech Commands V2-35" if speech else "AudioSet-2M (full)", result=result, hub_id=hub_id,
    )


_DB = "https://www.dropbox.com/s/"

RELEASES: tuple[Release, ...] = (
    # SSAST, best models
    _ssast("SSAST-Base-Patch-400", "SSAST-Base-Patch-400.pth", _DB + "ewrzpco95n9jdz6/SSAST-Base-Patch-400.pth?dl=1",
           "base", "patch", 400, "self-supervised encoder; the best start for fine-tuning on audio tasks",
           result=_AUDIO_SPEECH.format(59.9, 79.5)),
    _ssast("SSAST-Base-Frame-400", "SSAST-Base-Frame-400.pth", _DB + "nx6nl4d4bl71sm8/SSAST-Base-Frame-400.pth?dl=1",
           "base", "frame", 400, "self-supervised encoder; the best start for fine-tuning on speech tasks",
           result=_AUDIO_SPEECH.format(57.6, 84.0)),
    # SSAST, for analysis and small devices
    _ssast("SSAST-Base-Patch-250", "SSAST-Base-Patch-250.pth", _DB + "mxrm9qog6aj8hif/SSAST-Base-Patch-250.pth?dl=1",
           "base", "patch", 250, "self-supervised encoder pretrained with 250 masked patches (for analysis)",
           result=_AUDIO_SPEECH.format(58.6, 79.5)),
    _ssast("SSAST-Base-Frame-250", "SSAST-Base-Frame-250.pth", _DB + "4e6l7ulhwrfoana/SSAST-Base-Frame-250.pth?dl=1",
           "base", "frame", 250, "self-supervised encoder pretrained with 250 masked patches (for analysis)",
           result=_AUDIO_SPEECH.format(55.6, 81.6)),
    _ssast("SSAST-Small-Patch-400", "SSAST-Small-Patch-400.pth",
           _DB + "i24w446rl9pkf05/SSAST-Small-Patch-400.pth?dl=1",
           "small", "patch", 400, "smaller self-supervised encoder, for low-resource devices",
           result=_AUDIO_SPEECH.format(58.1, 78.2)),
    _ssast("SSAST-Tiny-Patch-400", "SSAST-Tiny-Patch-400.pth", _DB + "fkbtf78y94113wz/SSAST-Tiny-Patch-400.pth?dl=1",
           "tiny", "patch", 400, "tiny self-supervised encoder, for low-resource devices",
           result=_AUDIO_SPEECH.format(53.3, 75.7)),
    _ssast("SSAST-Tiny-Frame-400", "SSAST-Tiny-Frame-400.pth", _DB + "rx7g60ruzawffzv/SSAST-Tiny-Frame-400.pth?dl=1",
           "tiny", "frame", 400, "tiny self-supervised frame encoder, for low-resource devices",
           result="avg. audio 47.8 / avg. speech untested (SSAST paper)"),
    # SSAST ablation models of Table 2: the Base-Patch-400 recipe with one factor changed
    _ssast("audio_model_100m", "audio_model_100m.pth", _DB + "0oyrtfbjzkwho2p/audio_model_100m.pth?dl=1",
           "base", "patch", 100, "Table 2 ablation 1: 100 masked patches (for analysis)",
           aliases=("ablation-1", "100 Masked Patches")),
    _ssast("audio_model_dis", "audio_model_dis.pth", _DB + "znuzgwf2zvrpjkr/audio_model_dis.pth?dl=1",
           "base", "patch", 400, "Table 2 ablation 2: only the discriminative objective (for analysis)",
           aliases=("ablation-2", "Only Discriminative Objective")),
    _ssast("audio_model_gen", "audio_model_gen.pth", _DB + "u6ws5fjrid10x4p/audio_model_gen.pth?dl=1",
           "base", "patch", 400, "Table 2 ablation 3: only the generative objective (for analysis)",
           aliases=("ablation-3", "Only Generative Objective")),
    _ssast("audio_model_as20k", "audio_model_as20k.pth", _DB + "y6x2ck2ca3tb7d9/audio_model_as20k.pth?dl=1",
           "base", "patch", 400, "Table 2 ablation 4: pretrained on AudioSet-20K only (for analysis)",
           data="AudioSet-20K", aliases=("ablation-4", "Pretrained w/ AudioSet-20K")),
    _ssast("audio_model_as", "audio_model_as.pth", _DB + "m9p782df3faql1q/audio_model_as.pth?dl=1",
           "base", "patch", 400, "Table 2 ablation 5: pretrained on AudioSet-2M only (for analysis)",
           data="AudioSet-2M", aliases=("ablation-5", "Pretrained w/ AudioSet-2M")),
    _ssast("audio_model_librispeech", "audio_model_librispeech.pth",
           _DB + "f4bn2qelu3m8ksu/audio_model_librispeech.pth?dl=1",
           "base", "patch", 400, "Table 2 ablation 6: pretrained on Librispeech960 only (for analysis)",
           data="Librispeech960", aliases=("ablation-6", "Pretrained Librispeech960")),
    # AST, fine-tuned
    _ast("audioset_10_10_0.4593.pth", _DB + "ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1", 10,
         "AudioSet tagging, the best single model (weight averaging); AST's audioset_pretrain start",
         "mAP 0.4593", "MIT/ast-finetuned-audioset-10-10-0.4593"),
    _ast("audioset_10_10_0.4495.pth", _DB + "1tv0hovue1bxupk/audioset_10_10_0.4495.pth?dl=1", 10,
         "AudioSet tagging, stride-10 run 1 without weight averaging (ensemble member)",
         "mAP 0.4495", "MIT/ast-finetuned-audioset-10-10-0.450"),
    _ast("audioset_10_10_0.4483.pth", _DB + "6u5sikl4b9wo4u5/audioset_10_10_0.4483.pth?dl=1", 10,
         "AudioSet tagging, stride-10 run 2 without weight averaging (ensemble member)",
         "mAP 0.4483", "MIT/ast-finetuned-audioset-10-10-0.448"),
    _ast("audioset_10_10_0.4475.pth", _DB + "kt6i0v9fvfm1mbq/audioset_10_10_0.4475.pth?dl=1", 10,
         "AudioSet tagging, stride-10 run 3 without weight averaging (ensemble member)",
         "mAP 0.4475", "MIT/ast-finetuned-audioset-10-10-0.448-v2"),
    _ast("audioset_12_12_0.4467.pth", _DB + "snfhx3tizr4nuc8/audioset_12_12_0.4467.pth?dl=1", 12,
         "AudioSet tagging at stride 12 (fewer patches, faster; ensemble member)",
         "mAP 0.4467", "MIT/ast-finetuned-audioset-12-12-0.447"),
    _ast("audioset_14_14_0.4431.pth", _DB + "z18s6pemtnxm4k7/audioset_14_14_0.4431.pth?dl=1", 14,
         "AudioSet tagging at stride 14 (fewer patches, faster; ensemble member)",
         "mAP 0.4431", "MIT/ast-finetuned-audioset-14-14-0.443"),
    _ast("audioset_16_16_0.4422.pth", _DB + "mdsa4t1xmcimia6/audioset_16_16_0.4422.pth?dl=1", 16,
         "AudioSet tagging at stride 16, no patch overlap (fastest; ensemble member)",
         "mAP 0.4422", "MIT/ast-finetuned-audioset-16-16-0.442"),
    _ast("speechcommands_10_10_0.9812.pth", _DB + "q0tbqpwv44pquwy/speechcommands_10_10_0.9812.pth?dl=1", 10,
         "keyword spotting: the 35 words of Speech Commands V2 in 1 s clips",
         "accuracy 0.9812 (evaluation set)", "MIT/ast-finetuned-speech-commands-v2", speech=True),
)


# ---------------------------------------------------------------------------- lookup
def _key(s: str) -> str:
    s = s.strip().lower()
    return s[: -len(".pth")] if s.endswith(".pth") else s


def _spellings(r: Release) -> list[str]:
    names = [r.name, r.file, r.url, *r.aliases]
    if r.hub_id:
        names += [r.hub_id, r.hub_id.split("/", 1)[-1]]
    return names


def _index() -> dict[str, Release]:
    out: dict[str, Release] = {}
    for r in RELEASES:
        for s in _spellings(r):
            out.setdefault(_key(s), r)
    return out


_INDEX = _index()


def releases(family: str | None = None) -> list[Release]:
    """All releases, or those of one family (``"ssast"`` or ``"ast"``), in table order."""
    return [r for r in RELEASES if family is None or r.family == family]


def find(name: str | os.PathLike) -> Release | None:
    """The release with this name, file name, alias, hub id or URL (any case, ``.pth`` optional)."""
    return _INDEX.get(_key(os.fspath(name)))


def by_file(path: str | os.PathLike) -> Release | None:
    """The release a local file is named after (``~/models/SSAST-Base-Patch-400.pth``), or None."""
    name = Path(os.fspath(path)).name.strip().lower()
    return next((r for r in RELEASES if r.file.lower() == name), None)


def resolve(name: str | os.PathLike | Release) -> Release:
    """Like :func:`find`, but an unknown name raises :class:`UnknownModelError` with close matches."""
    if isinstance(name, Release):
        return name
    r = find(name)
    if r is not None:
        return r
    key = _key(os.fspath(name))
    close = difflib.get_close_matches(key, list(_INDEX), n=8, cutoff=0.6)
    suggestions: list[str] = []
    for k in close:
        if _INDEX[k].name not in suggestions:
            suggestions.append(_INDEX[k].name)
    hint = f"; did you mean {', '.join(suggestions[:4])}?" if suggestions else ""
    raise UnknownModelError(f"unknown model {os.fspath(name)!r}{hint} (`ssast models` lists every released model)")


# ---------------------------------------------------------------------------- files
def check_release(release: Release, ckpt: Checkpoint) -> None:
    """Raise :class:`CheckpointError` if a checkpoint's weights do not fit the release's geometry."""
    want, got = release.config(), ckpt.config
    problems = []
    if (got.embed_dim, got.num_prefix_tokens) != (want.embed_dim, want.num_prefix_tokens):
        problems.append(f"width {got.embed_dim} with {got.num_prefix_tokens} prefix tokens, the release is "
                        f"{release.model_size} (width {want.embed_dim}, {want.num_prefix_tokens} prefix tokens)")
    if (got.fshape, got.tshape) != (release.fshape, release.tshape):
        problems.append(f"{got.fshape}x{got.tshape} patches, the release has {release.fshape}x{release.tshape}")
    if got.stage != release.stage:
        problems.append(f"a {got.stage} checkpoint, the release is a {release.stage} one")
    elif release.label_dim is not None and got.label_dim != release.label_dim:
        problems.append(f"{got.label_dim} labels, the release has {release.label_dim}")
    if problems:
        raise CheckpointError(ckpt.path, f"does not match the release {release.name}: " + "; ".join(problems))


def fetch(name: str | Release, *, progress: bool = True) -> Path:
    """The release's file in the cache, downloaded (from ``$SSAST_MIRROR`` when set) and verified
    first if it is not there: the size where the release states it, and that it is an SSAST/AST
    checkpoint of the release's size, patch shape, stage and label count."""
    r = resolve(name)

    def verify(path: Path) -> None:
        check_release(r, read_checkpoint(path))

    return download(source_url(r.url, r.file), r.path, size=r.size_bytes, verify=verify, progress=progress)


def cached(name: str | Release) -> Path | None:
    """The release's file in the cache, or None if it has not been downloaded."""
    r = resolve(name)
    return r.path if r.is_cached else None


# ---------------------------------------------------------------------------- labels
def label_csv(label_set: str) -> Path:
    """Path of a label set's ``class_labels_indices.csv`` (index,mid,display_name) in the package."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"unknown label set {label_set!r}; expected one of {', '.join(LABEL_SETS)}")
    return Path(str(resources.files(__package__).joinpath("data", LABEL_SETS[label_set][1])))


def label_names(label_set: str | Release) -> tuple[list[str], list[str]]:
    """(ids, display names) of a label set, in the order of the model's outputs.

    ``"audioset"``: the 527 classes of the AudioSet ontology (ids are the ontology's mids);
    ``"speechcommands"``: the 35 words of Speech Commands V2 in the order of the AST release's
    classifier (ids ``/m/spcmd00`` ...).
    """
    if isinstance(label_set, Release):
        if label_set.label_set is None:
            raise ValueError(f"{label_set.name} is a pretrained encoder without labels")
        label_set = label_set.label_set
    path = label_csv(label_set)
    ids, names = read_label_csv(path)
    if len(ids) != LABEL_SETS[label_set][0] or len(set(ids)) != len(ids):
        raise SourceError(path, f"expected {LABEL_SETS[label_set][0]} labels with distinct ids, found {len(ids)}")
    return ids, names


# ---------------------------------------------------------------------------- sizes
def num_parameters(cfg: ModelConfig) -> int:
    """Parameters of a model of this geometry, by arithmetic (timm ViT blocks with qkv bias)."""
    d, k, p = cfg.embed_dim, cfg.patch_dim, cfg.num_prefix_tokens
    hidden = int(d * cfg.mlp_ratio)
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)
    encoder = (d * k + d) + p * d + (p + cfg.num_patches) * d + cfg.depth * block + 2 * d
    if cfg.stage == "pretrain":
        heads = d + 2 * ((d * d + d) + (d * k + k))  # mask token, cpredlayer, gpredlayer
    else:
        heads = 2 * d + d * cfg.label_dim + cfg.label_dim  # LayerNorm + Linear
    return encoder + heads


__all__ = [
    "LABEL_SETS", "RELEASES", "Release", "UnknownModelError", "by_file", "cached", "check_release", "fetch",
    "find", "label_csv", "label_names", "num_parameters", "releases", "resolve",
]

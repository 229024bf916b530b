"""One way to load a model: a name, a checkpoint, a run folder or an exported folder -> :class:`Loaded`.

:func:`load` takes a released model's name (``SSAST-Base-Frame-400``, ``audioset_10_10_0.4593``:
:mod:`ssast.registry`, downloaded into the cache on first use), a Hugging Face hub id of an AST
model (``MIT/ast-finetuned-audioset-10-10-0.4593``, through ``huggingface_hub``), a project
checkpoint (``ssast.pt``, ``best.pt``), a released SSAST or AST file, a pretraining run folder
(its newest complete checkpoint), a fine-tuning run folder (its ``best.pt``) or a Hugging Face
folder (``ssast export --format hf``, or an AST model saved from the hub) and returns the model
with everything needed to run it: its feature settings, its
label names (display names), whether it is multi-label, its default task, and where it came
from. Every command and module that needs a model goes through it (predict, evaluate, embed,
info, export, fine-tuning initialisation, the s3prl upstream); ``ASTModel(...,
load_pretrained_mdl_path=...)`` is a facade over :func:`initialize`.

What a file does not store is filled in from what is known about it: released fine-tuned files
keep neither strides, input length, normalization nor label names. A file named like a release
(:func:`ssast.registry.by_file`) gets the release's. Any other released fine-tuned file gets its
strides from the AST file name pattern (``<data>_10_10_<score>.pth``: 10 x 10) or AST's 10;
its label count names the recipe (527: AudioSet, 35: Speech Commands, 50: ESC-50;
:mod:`ssast.presets`), whose input length (when the positional grid agrees), normalization and
shipped label names it gets. Each such guess is listed in :attr:`Loaded.assumed`, which the
commands print once.
Overrides (``fstride``, ``tstride``, ``target_length``, ``preset``, ``mean``, ``std``,
``label_csv``) replace what the file says or what was assumed.

Reading the weights into a model of another geometry (:func:`init_from`) resamples the
positional grid (:mod:`ssast.posembed`) and checks every key and shape: a wrong file raises
:class:`~ssast.checkpoint.CheckpointError` naming it, never a partial load.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import hf, presets, pretrained, registry
from .checkpoint import Checkpoint, CheckpointError, infer_grid, read_checkpoint
from .config import ModelConfig, grid_size, size_from_width
from .engine.checkpointing import export_source
from .features import FeatureConfig
from .model import ASTModel
from .posembed import resample_pos_embed
from .sources import read_label_csv

# A fine-tuning run folder holds its best model under this name (ssast finetune).
BEST_MODEL = "best.pt"
# AST's release names its fine-tuned files <dataset>_<fstride>_<tstride>_<metric>.pth.
_AST_NAME = re.compile(r"_(\d+)_(\d+)_[0-9.]+\.pth$")
DEFAULT_RELEASED_STRIDE = 10  # AST's fine-tuning strides


@dataclass
class Loaded:
    """A model with what it takes to run it.

    ``labels``: the display names of the outputs, in order (None when unknown: a fine-tuned file
    without names, or a pretraining model); ``label_ids``: their ids where they differ (AudioSet
    mids, ``/m/spcmd08``); ``multilabel``: whether outputs are independent (sigmoid) or exclusive
    (softmax), None when nothing says; ``task``: the pooling the head was trained with;
    ``format``: ``ssast``, ``released`` or ``hf``; ``assumed``: what was filled in.
    """

    model: ASTModel
    features: FeatureConfig
    source: str
    format: str = "ssast"
    labels: list[str] | None = None
    label_ids: list[str] | None = None
    multilabel: bool | None = None
    has_head: bool = False
    meta: dict = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def stage(self) -> str:
        return self.model.config.stage

    @property
    def task(self) -> str:
        return self.model.config.default_task

    @property
    def name(self) -> str:
        return self.source

    def label_names(self) -> list[str]:
        """``labels``, or ``LABEL_i`` for a model that has none."""
        return list(self.labels) if self.labels is not None else [f"LABEL_{i}" for i in range(self.config.label_dim)]

    def require_classifier(self) -> "Loaded":
        """Self, or CheckpointError when the model has no trained classification head."""
        if self.stage != "finetune" or not self.has_head:
            raise CheckpointError(
                self.source, "not a fine-tuned model: it has no classification head 'mlp_head' (a pretraining "
                "checkpoint is fine-tuned with ssast finetune --init, or used through ssast embed)")
        return self


def from_model(model: ASTModel, *, features: FeatureConfig | dict | None = None, labels=None,
               multilabel: bool | None = None, source: str = "model") -> Loaded:
    """A :class:`Loaded` around a model built in memory (e.g. for :func:`ssast.evaluate.evaluate`)."""
    cfg = model.config
    return Loaded(model, FeatureConfig.for_model(cfg, features), source,
                  labels=[str(x) for x in labels] if labels is not None else None,
                  multilabel=multilabel, has_head=cfg.stage == "finetune")


# ----------------------------------------------------------------------------- reading

def is_hf_folder(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == hf.MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _hub_folder(repo_id: str) -> str:
    """A Hugging Face hub model in the local hub cache (downloaded there when missing)."""
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(f"{repo_id}: loading from the Hugging Face hub needs huggingface_hub "
                                "(pip install huggingface_hub)") from None
    try:
        return huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    except Exception as e:  # offline, unknown repository, ...: the hub's own error types
        raise FileNotFoundError(
            f"{repo_id}: not a file or folder here, and the Hugging Face hub did not give it ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline, download it elsewhere with "
            f"huggingface-cli download {repo_id} and copy the hub cache, or give the folder's path") from None


def resolve(source: str | os.PathLike) -> tuple[str, str]:
    """(path, kind) of what ``source`` names: ``file``, ``hf`` (a folder) or a run folder's model file.

    A path that does not exist is looked up as a released model's name (downloaded into the
    cache) and, in the ``owner/name`` form, as a Hugging Face hub id.
    """
    p = Path(source)
    if not p.exists():
        text = os.fspath(source)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith((".pt", ".pth")):
            return _hub_folder(text), "hf"
        release = registry.find(text)
        if release is None:
            raise FileNotFoundError(f"{source}: no such checkpoint file or folder, and no released model of that "
                                    f"name{_suggest(text)}")
        return str(registry.fetch(release)), "file"
    if not p.is_dir():
        return str(p), "file"
    if is_hf_folder(p):
        return str(p), "hf"
    if (p / BEST_MODEL).is_file():
        return str(p / BEST_MODEL), "file"
    try:
        return export_source(p), "file"
    except FileNotFoundError:
        raise CheckpointError(source, "is a folder, but neither a run folder (ssast pretrain or finetune --out) nor "
                                      f"a Hugging Face model folder (config.json of model_type {hf.MODEL_TYPE!r})") from None


def read(source: str | os.PathLike, *, fstride: int | None = None, tstride: int | None = None,
         num_mel_bins: int | None = None) -> Checkpoint:
    """The checkpoint ``source`` names (see :func:`resolve`), with what the file lacks filled in.

    ``fstride``/``tstride``/``num_mel_bins``: what a released fine-tuned file was trained with
    (files that store their geometry ignore them here; :func:`load` re-grids to the strides).
    """
    path, kind = resolve(source)
    if kind == "hf":
        return hf.read_folder(path)
    ckpt = read_checkpoint(path, input_fdim=num_mel_bins)
    if ckpt.format == "released" and ckpt.pretrain_input is None:
        _fill_released(ckpt, fstride, tstride)
    elif ckpt.format == "released":
        # SSAST pretraining used AudioSet's statistics; the file stores its input size.
        ckpt.features = FeatureConfig(num_mel_bins=ckpt.config.input_fdim, target_length=ckpt.config.input_tdim).to_dict()
    return ckpt


def _suggest(text: str) -> str:
    try:
        registry.resolve(text)
    except registry.UnknownModelError as e:
        hint = str(e).split(";", 1)
        return f" ({hint[1].split('(')[0].strip()})" if len(hint) > 1 else " (`ssast models` lists them)"
    return ""


def _fill_release(ckpt: Checkpoint, release: registry.Release) -> None:
    """Everything a released fine-tuned file does not store, from the release table."""
    ckpt.config = ckpt.config.replace(fstride=release.fstride, tstride=release.tstride,
                                      input_tdim=release.input_tdim, default_task="ft_cls")
    ckpt.features = release.feature_config().to_dict()
    ids, names = release.labels()
    ckpt.labels = names
    ckpt.meta.update(label_ids=ids, multilabel=presets.get(release.label_set).multilabel, release=release.name)


def _fill_released(ckpt: Checkpoint, fstride: int | None, tstride: int | None) -> None:
    """Strides, input length, normalization, labels and task of a released fine-tuned file (see the
    module docstring)."""
    cfg, notes = ckpt.config, ckpt.assumed
    name = Path(ckpt.path).name
    release = registry.by_file(name)
    if release is not None and fstride is None and tstride is None:
        try:
            registry.check_release(release, ckpt)
        except CheckpointError as e:
            notes.append(f"nothing from the release {release.name} ({e.problem})")
        else:
            return _fill_release(ckpt, release)
    m = _AST_NAME.search(name)
    if fstride is None or tstride is None:
        if m:
            fs, ts = int(m.group(1)), int(m.group(2))
        else:
            fs = ts = DEFAULT_RELEASED_STRIDE
            notes.append(f"strides {fs}x{ts} (AST's fine-tuning strides)")
        fstride, tstride = fstride or fs, tstride or ts
    cfg = cfg.replace(fstride=fstride, tstride=tstride)
    positions = ckpt.state["v.pos_embed"].shape[1]
    _, t_dim = infer_grid(cfg, positions, ckpt.path)
    preset = presets.for_labels(cfg.label_dim)
    frames = (t_dim - 1) * tstride + cfg.tshape  # the fewest frames that give the trained time grid
    span = f"{frames} to {frames + tstride - 1} frames give its {t_dim} time patches"
    if preset is not None and grid_size(preset.target_length, cfg.tshape, tstride) == t_dim:
        frames, span = preset.target_length, f"the {preset.name} recipe's input length"
    if preset is not None:
        notes.append(f"{frames} frames ({span}) and the {preset.name} normalization (mean {preset.mean}, std "
                     f"{preset.std}), as its {cfg.label_dim} outputs are the {preset.name} recipe's")
        features = preset.features(num_mel_bins=cfg.input_fdim, target_length=frames)
        ckpt.meta.setdefault("multilabel", preset.multilabel)
        if preset.label_set in registry.LABEL_SETS:
            ids, ckpt.labels = registry.label_names(preset.label_set)
            ckpt.meta.setdefault("label_ids", ids)
            notes.append(f"the {preset.name} label names")
    else:
        features = FeatureConfig(num_mel_bins=cfg.input_fdim, target_length=frames)
        notes.append(f"{frames} frames ({span}) and AudioSet's normalization (mean {features.mean}, std {features.std})")
    ckpt.config = cfg.replace(input_tdim=frames, default_task="ft_cls")
    ckpt.features = features.to_dict()


# ----------------------------------------------------------------------------- weights

def _load_strict(model: ASTModel, state: dict[str, torch.Tensor], source, keep) -> None:
    own = {k: v for k, v in model.state_dict().items() if keep(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected))
        raise CheckpointError(source, "; ".join(parts))
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(source, "shape mismatch: " + "; ".join(bad))
    model.load_state_dict(state, strict=False)


def load_encoder(model: ASTModel, state: dict[str, torch.Tensor], src_grid: tuple[int, int], source) -> None:
    """Encoder weights (keys without ``v.``) into ``model``, the positional grid resampled to the model's."""
    state = dict(state)
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"].float(), model.num_prefix_tokens, src_grid,
                                                model.config.grid)
    _load_strict(model, {f"v.{k}": v for k, v in state.items()}, source, keep=lambda k: k.startswith("v."))


def _source_grid(ckpt: Checkpoint) -> tuple[int, int]:
    src = ckpt.config
    pos = ckpt.state.get("v.pos_embed")
    if pos is None:
        raise CheckpointError(ckpt.path, "missing keys: v.pos_embed")
    grid = src.grid
    if pos.shape[1] != src.num_prefix_tokens + grid[0] * grid[1]:
        raise CheckpointError(ckpt.path, f"v.pos_embed has {pos.shape[1]} positions, but its config describes a "
                                         f"{grid[0]}x{grid[1]} grid")
    return grid


def init_from(model: ASTModel, ckpt: Checkpoint, *, keep_head: bool = False) -> None:
    """Initialise ``model`` from a checkpoint, adapting its positional grid to the model's.

    A pretraining model takes the encoder, mask token and heads (the file must be a pretraining
    checkpoint); a fine-tuning model takes the encoder, and with ``keep_head`` the file's
    classification head too (which must then be there and fit).
    """
    cfg, src = model.config, ckpt.config
    if (src.fshape, src.tshape) != (cfg.fshape, cfg.tshape):
        raise CheckpointError(ckpt.path, f"patch shape mismatch: the checkpoint has {src.fshape}x{src.tshape} patches, "
                                         f"the model asks for fshape={cfg.fshape}, tshape={cfg.tshape}")
    if (src.embed_dim, src.num_prefix_tokens, src.depth) != (cfg.embed_dim, cfg.num_prefix_tokens, cfg.depth):
        have = size_from_width(src.embed_dim, src.num_prefix_tokens) or "custom"
        raise CheckpointError(
            ckpt.path, f"model size mismatch: the checkpoint holds a {have!r} model (width {src.embed_dim}, {src.depth} "
            f"blocks, {src.num_prefix_tokens} prefix tokens), the model asks for {cfg.model_size!r} (width "
            f"{cfg.embed_dim}, {cfg.depth} blocks, {cfg.num_prefix_tokens} prefix tokens)")
    if cfg.stage == "pretrain" and ckpt.stage != "pretrain":
        raise CheckpointError(ckpt.path, "continuing pretraining needs a pretraining checkpoint; this one has no "
                                         "pretraining heads")
    src_grid = _source_grid(ckpt)
    state = dict(ckpt.state)
    extra = {}
    if cfg.stage == "pretrain":
        extra = {k: state.pop(k) for k in list(state) if not k.startswith("v.")}
    else:
        head = {k: state.pop(k) for k in list(state) if k.startswith("mlp_head.")}
        for k in [k for k in state if k.startswith(("mask_embed", "cpredlayer.", "gpredlayer."))]:
            del state[k]  # pretraining heads: not part of a fine-tuning model
        if keep_head:
            extra = head
    unexpected = [k for k in state if not k.startswith("v.")]
    if unexpected:
        raise CheckpointError(ckpt.path, f"unexpected keys: {', '.join(sorted(unexpected))}")
    load_encoder(model, {k[2:]: v for k, v in state.items()}, src_grid, ckpt.path)
    if cfg.stage == "pretrain" or keep_head:
        _load_strict(model, extra, ckpt.path, keep=lambda k: not k.startswith("v."))


def initialize(model: ASTModel, source: str | os.PathLike | Checkpoint | None = None, *, imagenet: bool = False,
               audioset: bool = False) -> str:
    """Initialise a freshly built model from a checkpoint, run folder or exported folder
    (``source``), from ImageNet DeiT weights or from AST's AudioSet model; returns a description."""
    if sum([source is not None, imagenet, audioset]) != 1:
        raise ValueError("choose one of a checkpoint, imagenet and audioset")
    if imagenet:
        state, src_grid, path = pretrained.imagenet_encoder_state(model.config.model_size, model.config)
        load_encoder(model, state, src_grid, path)
        return f"ImageNet DeiT weights ({path})"
    ckpt = source if isinstance(source, Checkpoint) else read(pretrained.audioset_file() if audioset else source)
    if audioset and ckpt.stage != "finetune":
        raise CheckpointError(ckpt.path, "expected AST's fine-tuned AudioSet model, found a pretraining checkpoint")
    init_from(model, ckpt)
    return f"{ckpt.path} ({ckpt.format} format, {ckpt.stage} stage)"


# ----------------------------------------------------------------------------- the loader

def _features(ckpt: Checkpoint, cfg: ModelConfig, preset: str | None, mean, std) -> FeatureConfig:
    # Settings the file does not give follow the model: its mel bins, and AudioSet's normalization.
    fields = FeatureConfig.from_dict({"num_mel_bins": cfg.input_fdim, **(ckpt.features or {})}).to_dict()
    if preset is not None:
        p = presets.get(preset)
        fields.update(mean=p.mean, std=p.std, target_length=p.target_length)
    if mean is not None:
        fields["mean"] = mean
    if std is not None:
        fields["std"] = std
    fields["target_length"] = cfg.input_tdim
    try:
        return FeatureConfig.for_model(cfg, fields)
    except ValueError as e:
        raise CheckpointError(ckpt.path, str(e)) from None


def load(source: str | os.PathLike | Checkpoint, *, stage: str | None = None, fstride: int | None = None,
         tstride: int | None = None, target_length: int | None = None, num_mel_bins: int | None = None,
         preset: str | None = None, mean: float | None = None, std: float | None = None,
         label_csv: str | os.PathLike | None = None) -> Loaded:
    """The model ``source`` holds, ready to run (in eval mode); see the module docstring.

    ``stage``: None for the model as saved; ``"finetune"`` for a fine-tuning-stage model (a
    pretraining file's encoder gets an untrained head: for embeddings and upstreams).
    ``fstride``/``tstride``: strides (of a released fine-tuned file, which does not store
    them; of the model to build for files that do: the positional grid is resampled).
    ``target_length``: frames per input (model input_tdim and features), default the file's,
    or the preset's when ``preset`` is given. ``num_mel_bins``: those of a released fine-tuned
    file (128 unless given; other files store theirs). ``preset`` (``audioset``, ``esc50``,
    ``speechcommands``), ``mean``, ``std``: normalization. ``label_csv``: label names (the
    official ``index,mid,display_name`` CSV, display names in index order).
    """
    ckpt = source if isinstance(source, Checkpoint) else read(source, fstride=fstride, tstride=tstride,
                                                              num_mel_bins=num_mel_bins)
    if stage not in (None, "pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    src = ckpt.config
    stage = stage or src.stage
    if stage == "pretrain" and src.stage != "pretrain":
        raise CheckpointError(ckpt.path, "a fine-tuned model has no pretraining heads; load it without stage='pretrain'")
    geo = {}
    if target_length is not None or preset is not None:
        geo["input_tdim"] = target_length if target_length is not None else presets.get(preset).target_length
    if stage == "finetune" and src.stage == "pretrain":
        geo.update(stage="finetune", fstride=src.fshape, tstride=src.tshape)
    if fstride is not None:
        geo["fstride"] = fstride
    if tstride is not None:
        geo["tstride"] = tstride
    cfg = src.replace(**geo)
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(ckpt.path, str(e)) from None
    model = ASTModel(config=cfg)
    keep_head = cfg.stage == "finetune" and ckpt.has_head
    init_from(model, ckpt, keep_head=keep_head)
    labels, ids = ckpt.labels, ckpt.meta.get("label_ids")
    if label_csv is not None:
        ids, labels = read_label_csv(label_csv)
        if len(labels) != cfg.label_dim:
            raise CheckpointError(ckpt.path, f"{label_csv} names {len(labels)} labels, the model has {cfg.label_dim} outputs")
    multilabel = ckpt.meta.get("multilabel")
    if not isinstance(multilabel, bool):
        act = ckpt.meta.get("activation")
        multilabel = {"sigmoid": True, "softmax": False}.get(act)
    return Loaded(model.eval(), _features(ckpt, cfg, preset, mean, std), ckpt.path, ckpt.format,
                  labels=[str(x) for x in labels] if labels is not None else None,
                  label_ids=[str(x) for x in ids] if ids is not None else None,
                  multilabel=multilabel, has_head=keep_head, meta=dict(ckpt.meta), assumed=list(ckpt.assumed))


def describe(loaded: Loaded) -> str:
    """What ``ssast info`` prints."""
    c, f = loaded.config, loaded.features
    lines = [
        f"source:      {loaded.source}",
        f"format:      {loaded.format}",
        f"stage:       {c.stage}" + (f", task {c.default_task}" if c.stage == "finetune" else ""),
        f"model size:  {c.model_size} (width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, "
        f"{c.num_prefix_tokens} prefix token{'s' if c.num_prefix_tokens > 1 else ''}, "
        f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}M parameters)",
        f"patch:       {c.fshape}x{c.tshape} ({'frame' if c.is_frame_model else 'patch'} model), stride "
        f"{c.fstride}x{c.tstride}",
        f"input:       {c.input_fdim} mel bins x {c.input_tdim} frames ({c.f_dim}x{c.t_dim} patches)",
        f"features:    {f.sample_rate} Hz, mean {f.mean}, std {f.std}",
    ]
    if c.stage == "finetune" and loaded.has_head:
        names = loaded.labels
        kind = {True: ", multi-label", False: ", single-label"}.get(loaded.multilabel, "")
        lines.append(f"labels:      {c.label_dim}{kind}" + (f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                                                          if names else " (no names stored)"))
    lines += [f"assumed:     {a}" for a in loaded.assumed]
    return "\n".join(lines)

"""Evaluating fine-tuned models, alone or as an ensemble, on a labelled dataset.

Each model sees the data as its own checkpoint describes it: the clips are read at the
sample rate of its feature settings, cropped to their beginning or zero-padded to the model's
input length (no augmentation), and turned into normalized log-mel features on the device
(:class:`ssast.features.FeatureExtractor`), exactly as the recipes' evaluation loaders do.
Models that share feature settings share one pass over the data.

Scores are probabilities: sigmoid for multi-label evaluation, softmax for single-label. The
ensemble of several models is the mean of their probabilities; its metrics are reported with
each model's own (:func:`ssast.metrics.compute_metrics`).

Labels are matched by name (:func:`ssast.sources.match_labels`): every label of the data must
be one of the model's labels (by id, e.g. an AudioSet mid or a class-folder name, or by display
name). Metrics are computed over the model's label set, in the model's order; a model label the
data never uses simply has no positive clip (see :mod:`ssast.metrics` for how such classes
count). All models of an ensemble must have the same label set (in any order). A model without
label names is matched by position, and must then have as many outputs as the data has labels.

Entries that are missing, carry unknown labels or have unreadable headers are listed and
skipped before the run; a clip that fails to decode during the run is skipped too. Every
skipped clip is in the result's ``skipped``.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import torch
from tqdm import tqdm

from .audio import AudioError
from .datasets import AudioDataset, collate, frames_to_samples
from .device import default_device
from .features import FeatureConfig, FeatureExtractor
from .loading import Loaded, from_model, load
from .metrics import compute_metrics, probabilities
from .model import ASTModel
from .sources import Source, SourceError, match_labels, read_source
from .sources import validate as validate_source

TASKS = ("ft_avgtok", "ft_cls")


def _members(models, load_options: dict) -> list[tuple[Loaded, bool]]:
    """(loaded model, handed in as an object) for each model of the evaluation."""
    if isinstance(models, (str, os.PathLike, torch.nn.Module, Loaded)):
        models = [models]
    if not models:
        raise ValueError("no checkpoint or model to evaluate")
    out = []
    for i, m in enumerate(models):
        if isinstance(m, ASTModel):
            loaded, given = from_model(m, source=f"model {i + 1}"), True
        elif isinstance(m, Loaded):
            loaded, given = m, True
        else:
            loaded, given = load(m, **load_options), False
        out.append((loaded.require_classifier(), given))
    return out


def _columns(loaded: Loaded, source: Source) -> list[int]:
    """The model output of each label of the data (by name, or by position without names)."""
    label_dim = loaded.config.label_dim
    if loaded.labels is None:
        if len(source.labels or []) != label_dim:
            raise SourceError(source.name, f"{loaded.name} has no label names and {label_dim} outputs, but the data "
                                           f"has {len(source.labels or [])} labels: they cannot be matched")
        return list(range(label_dim))
    return match_labels(source, loaded.label_ids or loaded.labels, loaded.labels, what=loaded.name)


def _space(members: list[Loaded], source: Source) -> tuple[list[str], list[list[int]], list[int]]:
    """The common label space (the first model's), each model's column order in it, and the
    position in it of each data label."""
    first = members[0]
    label_dim = first.config.label_dim
    space = first.labels if first.labels is not None else list(source.display_names or source.labels or [])
    data_cols = _columns(first, source)
    columns = []
    for m in members:
        dim = m.config.label_dim
        if dim != label_dim:
            raise ValueError(f"{m.name} has {dim} outputs, {first.name} has {label_dim}: an ensemble needs one label set")
        if m.labels is None or first.labels is None:
            _columns(m, source)  # checks the count against the data
            columns.append(list(range(dim)))
            continue
        if set(m.labels) != set(first.labels):
            diff = sorted(set(m.labels) ^ set(first.labels))
            raise ValueError(f"{m.name} and {first.name} have different labels ({', '.join(diff[:10])} in one only): "
                             "an ensemble needs one label set")
        pos = {name: i for i, name in enumerate(m.labels)}
        columns.append([pos[name] for name in first.labels])
    return list(space), columns, data_cols


def _resolve_multilabel(multilabel: bool | None, members: Sequence[Loaded], items) -> bool:
    """Explicit choice, else what the models say (:attr:`Loaded.multilabel`), else the data:
    multi-label when some clip has no label or several."""
    if multilabel is not None:
        return bool(multilabel)
    said = {m.multilabel for m in members if m.multilabel is not None}
    if len(said) == 2:
        raise ValueError("the checkpoints disagree on multi-label or single-label: choose with multilabel=True/False")
    if said:
        return said.pop()
    return any(len(it.labels) != 1 for it in items)


class _EvalDataset(AudioDataset):
    """Clips in order, each at most once: a clip that fails to decode comes back as an error
    (the training dataset would replace it by the next clip, which would count that one twice)."""

    def __getitem__(self, index: int) -> dict:
        try:
            item = self._load(index)
        except AudioError as e:
            return {"index": index, "error": str(e)}
        item["index"] = index
        return item


def _collate(samples: list[dict]) -> dict:
    good = [s for s in samples if "error" not in s]
    batch = collate(good) if good else {}
    batch["errors"] = [(s["index"], s["error"]) for s in samples if "error" in s]
    return batch


@torch.inference_mode()
def _run_group(members: list[Loaded], source: Source, features: FeatureConfig, device, *, task, multilabel,
               batch_size, num_workers, progress) -> tuple[dict[int, list[torch.Tensor]], dict[int, str]]:
    """Scores of each member for each clip index, and the clips that failed to decode."""
    num_samples = frames_to_samples(features.target_length, features.sample_rate, features.frame_length_ms,
                                    features.frame_shift_ms)
    ds = _EvalDataset(source, sample_rate=features.sample_rate, num_samples=num_samples, train=False, validate=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    extractor = FeatureExtractor(features)
    scores: dict[int, list[torch.Tensor]] = {}
    errors: dict[int, str] = {}
    for batch in tqdm(loader, desc="evaluate", unit="batch", file=sys.stderr, disable=not progress):
        errors.update(batch["errors"])
        if "wave" not in batch:
            continue
        x = extractor(batch["wave"].to(device, non_blocking=True), lengths=batch["length"])  # (B, T, F)
        outs = [probabilities(m.model(x, task=task), multilabel).cpu() for m in members]  # each (B, C)
        for row, idx in enumerate(batch["index"]):
            scores[idx] = [o[row] for o in outs]
    return scores, errors


def evaluate(models, data, *, label_csv: str | os.PathLike | None = None, batch_size: int = 16,
             device: str | torch.device | None = None, task: str | None = None, multilabel: bool | None = None,
             threshold: float = 0.5, num_workers: int = 0, progress: bool = False,
             return_predictions: bool = False, **load_options) -> dict:
    """Metrics of one model or an ensemble on a labelled dataset (see the module docstring).

    ``models``: one or a list of: anything :func:`ssast.load` takes (loaded with
    ``load_options``: strides, target length, normalization, label names), a
    :class:`~ssast.loading.Loaded`, or an :class:`~ssast.ASTModel` (used as it is, with
    AudioSet's normalization, and put back in its training mode afterwards). ``data``: a folder
    per class, a CSV with a label column, a JSON datafile (with ``label_csv`` or a
    ``class_labels_indices.csv`` beside it), or a :class:`~ssast.sources.Source`. ``task``:
    ``ft_avgtok`` or ``ft_cls`` (default: each model's own). ``multilabel``: True (sigmoid
    scores, multi-label metrics) or False (softmax, one label per clip); None: what the models
    say (:attr:`ssast.loading.Loaded.multilabel`), else multi-label when some clip has no label
    or several. ``device``: default cuda when available (for model objects: their own device).

    Returns a dict: ``metrics`` (of the ensemble, or of the single model), ``models`` (a list of
    ``{"name", "metrics"}``), ``multilabel``, ``task``, ``labels`` (the label space),
    ``num_clips``, ``skipped`` (``{"path", "error"}`` of every clip left out), ``data``. With
    ``return_predictions``: also ``paths`` (N,), ``targets`` (N, C) and ``scores`` (N, C) of the
    ensemble and ``model_scores`` (one (N, C) array per model), as numpy arrays.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    entries = _members(models, load_options)
    members = [m for m, _ in entries]
    source = data if isinstance(data, Source) else read_source(data, label_csv=label_csv, labeled=True)
    if not source.labeled:
        raise SourceError(source.name, "no labels: evaluation needs a folder per class, a CSV with a label "
                                       "column, or a JSON datafile with its label CSV")
    space, columns, data_cols = _space(members, source)

    report = validate_source(source, check_audio=True)
    skipped = [{"path": p, "error": e} for p, e in report.bad]
    items = report.good
    if not items:
        raise SourceError(source.name, "no usable clips:\n" + report.summary())
    multilabel = _resolve_multilabel(multilabel, members, items)
    if not multilabel:
        bad = [it.path for it in items if len(it.labels) != 1]
        if bad:
            raise ValueError(f"single-label evaluation needs one label per clip; {len(bad)} clip(s) have none or "
                             f"several, e.g. {bad[0]} (evaluate with multilabel=True)")
    clips = Source(source.name, source.kind, items, source.labels, source.display_names)

    # Each model goes to the device; model objects handed in go back to their training mode after.
    modes = [m.model.training for m in members]
    for m, given in entries:
        dev = next(m.model.parameters()).device if device is None and given else default_device(device)
        m.model.to(dev).eval()
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(tuple(sorted(m.features.to_dict().items())), []).append(i)

    per_model: list[dict[int, torch.Tensor]] = [{} for _ in members]
    failed: dict[int, str] = {}
    try:
        for ids in groups.values():
            group = [members[i] for i in ids]
            dev = next(group[0].model.parameters()).device
            if any(next(m.model.parameters()).device != dev for m in group):
                raise ValueError("models evaluated together must be on one device: pass device=")
            scores, errors = _run_group(group, clips, group[0].features, dev, task=task, multilabel=multilabel,
                                        batch_size=batch_size, num_workers=num_workers, progress=progress)
            failed.update(errors)
            for idx, per in scores.items():
                for i, s in zip(ids, per):
                    per_model[i][idx] = s
    finally:
        for m, mode in zip(members, modes):
            m.model.train(mode)

    keep = [i for i in range(len(items)) if i not in failed and all(i in pm for pm in per_model)]
    skipped += [{"path": items[i].path, "error": failed[i]} for i in sorted(failed)]
    if not keep:
        raise SourceError(source.name, "no clip could be read:\n" + "\n".join(f"  {s['path']}: {s['error']}" for s in skipped[:20]))
    targets = torch.zeros(len(keep), len(space), dtype=torch.float64)
    label_pos = {name: data_cols[j] for j, name in enumerate(source.labels)}
    for row, i in enumerate(keep):
        targets[row, [label_pos[lab] for lab in items[i].labels]] = 1.0
    model_scores = [torch.stack([pm[i] for i in keep])[:, cols] for pm, cols in zip(per_model, columns)]  # each (N, C)
    ensemble = torch.stack(model_scores).mean(dim=0)  # (N, C)

    out = {
        "data": source.name,
        "num_clips": len(keep),
        "multilabel": multilabel,
        "task": task,
        "labels": space,
        "metrics": compute_metrics(ensemble, targets, multilabel, threshold=threshold),
        "models": [{"name": m.name, "metrics": compute_metrics(s, targets, multilabel, threshold=threshold)}
                   for m, s in zip(members, model_scores)],
        "skipped": skipped,
    }
    if return_predictions:
        out.update(paths=[items[i].path for i in keep], targets=targets.numpy(), scores=ensemble.numpy(),
                   model_scores=[s.numpy() for s in model_scores])
    return out


def format_results(result: dict, keys: Sequence[str] = ("acc", "mAP", "mAUC", "d_prime", "precision", "recall")) -> str:
    """A table of the metrics: one row per model, and the ensemble's last when there are several."""
    rows = [(os.path.basename(m["name"]) or m["name"], m["metrics"]) for m in result["models"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)}", result["metrics"]))
    width = max(12, *(len(r[0]) for r in rows))
    lines = [f"{'model':<{width}}  " + "  ".join(f"{k:>9}" for k in keys)]
    for name, met in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{met[k]:>9.4f}" for k in keys))
    kind = "multi-label" if result["multilabel"] else "single-label"
    lines.append(f"{result['num_clips']} clips, {len(result['labels'])} labels, {kind}"
                 + (f"; {len(result['skipped'])} skipped" if result["skipped"] else ""))
    return "\n".join(lines)


def to_json(result: dict) -> dict:
    """The result without its numpy arrays (for ``json.dump``)."""
    return {k: v for k, v in result.items() if k not in ("paths", "targets", "scores", "model_scores")}


__all__ = ["evaluate", "format_results", "to_json"]

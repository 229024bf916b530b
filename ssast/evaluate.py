"""Evaluating fine-tuned models, alone or as an ensemble, on a labelled dataset.

Each model sees the data as its own checkpoint describes it: the clips are read at the
sample rate of its feature settings, cropped to their beginning or zero-padded to the model's
input length (no augmentation), and turned into normalized log-mel features on the device
(:class:`ssast.features.FeatureExtractor`), exactly as the recipes' evaluation loaders do.
Models that share feature settings share one pass over the data.

Scores are probabilities: sigmoid for multi-label evaluation, softmax for single-label. The
ensemble of several models is the mean of their probabilities; its metrics are reported with
each model's own (:func:`ssast.metrics.compute_metrics`).

Labels are matched by name: every label of the data must be one of the model's labels (by id,
e.g. an AudioSet mid or a class-folder name, or else by display name). Metrics are computed
over the model's label set, in the model's order; a model label the data never uses simply has
no positive clip (see :mod:`ssast.metrics` for how such classes count). All models of an
ensemble must have the same label set (in any order). A model without label names (a released
checkpoint) is matched by position, and must then have as many outputs as the data has labels.

Entries that are missing, carry unknown labels or have unreadable headers are listed and
skipped before the run; a clip that fails to decode during the run is skipped too. Every
skipped clip is in the result's ``skipped``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from .audio import AudioError
from .datasets import AudioDataset, collate, frames_to_samples
from .features import FeatureConfig, FeatureExtractor
from .metrics import compute_metrics
from .sources import Source, SourceError, read_source
from .sources import validate as validate_source

TASKS = ("ft_avgtok", "ft_cls")


@dataclass
class _Member:
    """One model of the evaluation, with what it needs to see the data."""

    name: str
    model: torch.nn.Module
    features: FeatureConfig
    labels: list[str] | None
    meta: dict
    given: bool  # a model object handed in (not read from a file)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _members(checkpoints, geometry: dict | None) -> list[_Member]:
    from .model import ASTModel, load_finetuned

    if isinstance(checkpoints, (str, os.PathLike, torch.nn.Module)):
        checkpoints = [checkpoints]
    if not checkpoints:
        raise ValueError("no checkpoint or model to evaluate")
    out = []
    for i, c in enumerate(checkpoints):
        if isinstance(c, torch.nn.Module):
            model, name = c, f"model {i + 1}"
        else:
            model, name = load_finetuned(c, **(geometry or {})), str(c)
        if not isinstance(model, ASTModel) or model.config.stage != "finetune":
            raise ValueError(f"{name}: evaluation needs a fine-tuned model with a classification head")
        labels = getattr(model, "labels", None)
        out.append(_Member(name, model, FeatureConfig.for_model(model.config, getattr(model, "features", None)),
                           [str(x) for x in labels] if labels is not None else None,
                           dict(getattr(model, "meta", None) or {}), isinstance(c, torch.nn.Module)))
    return out


def _show(names: Sequence[str], limit: int = 10) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def match_labels(model_labels: Sequence[str] | None, label_dim: int, source: Source, model_name: str = "model") -> list[int]:
    """For each label of ``source`` (in its order), the index of the model output with that name.

    Names are compared with the source's label ids first, then with its display names. A model
    without names is matched by position. Raises ValueError naming both vocabularies.
    """
    data = list(source.labels or [])
    if model_labels is None:
        if len(data) != label_dim:
            raise ValueError(f"{model_name} has no label names and {label_dim} outputs, but the data "
                             f"({source.name}) has {len(data)} labels ({_show(data)}): they cannot be matched")
        return list(range(len(data)))
    if len(model_labels) != label_dim:
        raise ValueError(f"{model_name}: {len(model_labels)} label names for {label_dim} outputs")
    index = {name: i for i, name in enumerate(model_labels)}
    for names in (data, list(source.display_names or [])):
        if names and all(n in index for n in names):
            return [index[n] for n in names]
    missing = [n for n in data if n not in index]
    raise ValueError(f"the labels of the data ({source.name}) are not all labels of {model_name}: "
                     f"{_show(missing)} missing. Data labels: {_show(data)}. Model labels: {_show(model_labels)}")


def _space(members: list[_Member], source: Source) -> tuple[list[str], list[list[int]], list[int]]:
    """The common label space (the first model's), each model's column order in it, and the
    position in it of each data label."""
    first = members[0]
    label_dim = first.model.config.label_dim
    space = first.labels if first.labels is not None else list(source.labels or [])
    data_cols = match_labels(first.labels, label_dim, source, first.name)
    columns = []
    for m in members:
        dim = m.model.config.label_dim
        if dim != label_dim:
            raise ValueError(f"{m.name} has {dim} outputs, {first.name} has {label_dim}: an ensemble needs one label set")
        if m.labels is None or first.labels is None:
            match_labels(m.labels, dim, source, m.name)  # checks the count against the data
            columns.append(list(range(dim)))
            continue
        if set(m.labels) != set(first.labels):
            raise ValueError(f"{m.name} and {first.name} have different labels ({_show(sorted(set(m.labels) ^ set(first.labels)))} "
                             "in one only): an ensemble needs one label set")
        pos = {name: i for i, name in enumerate(m.labels)}
        columns.append([pos[name] for name in first.labels])
    return list(space), columns, data_cols


def _resolve_multilabel(multilabel: bool | None, members: Sequence[_Member], items) -> bool:
    """Explicit choice, else the checkpoints' meta (``multilabel`` or ``activation``), else the
    data: multi-label when some clip has no label or several, or when the model has AudioSet's
    527 outputs."""
    if multilabel is not None:
        return bool(multilabel)
    said = set()
    for m in members:
        if isinstance(m.meta.get("multilabel"), bool):
            said.add(m.meta["multilabel"])
        elif m.meta.get("activation") in ("sigmoid", "softmax"):
            said.add(m.meta["activation"] == "sigmoid")
    if len(said) == 2:
        raise ValueError("the checkpoints disagree on multi-label or single-label: choose with multilabel=True/False")
    if said:
        return said.pop()
    if any(len(it.labels) != 1 for it in items):
        return True
    return members[0].model.config.label_dim == 527


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


def _activate(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    logits = logits.float()
    return logits.sigmoid() if multilabel else logits.softmax(dim=-1)


@torch.inference_mode()
def _run_group(members: list[_Member], source: Source, features: FeatureConfig, device, *, task, multilabel,
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
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="evaluate", unit="batch", file=sys.stderr)
    for batch in loader:
        errors.update(batch["errors"])
        if "wave" not in batch:
            continue
        x = extractor(batch["wave"].to(device, non_blocking=True), lengths=batch["length"])  # (B, T, F)
        outs = [_activate(m.model(x, task=task), multilabel).cpu() for m in members]  # each (B, C)
        for row, idx in enumerate(batch["index"]):
            scores[idx] = [o[row] for o in outs]
    return scores, errors


def evaluate(checkpoints, data, *, label_csv: str | os.PathLike | None = None, batch_size: int = 16,
             device: str | torch.device | None = None, task: str | None = None, multilabel: bool | None = None,
             threshold: float = 0.5, num_workers: int = 0, geometry: dict | None = None, progress: bool = False,
             return_predictions: bool = False) -> dict:
    """Metrics of one model or an ensemble on a labelled dataset (see the module docstring).

    ``checkpoints``: a path or model, or a list of them (fine-tuned checkpoints are read with
    :func:`ssast.load_finetuned`, with ``geometry`` for released files; a model object is used as
    it is, with its ``labels``/``features``/``meta`` attributes where set, and is put back in its
    training mode afterwards). ``data``: a folder per class, a CSV with a label column, a JSON
    datafile (with ``label_csv`` or a ``class_labels_indices.csv`` beside it), or a
    :class:`~ssast.sources.Source`. ``task``: ``ft_avgtok`` or ``ft_cls`` (default: each model's
    own). ``multilabel``: True (sigmoid scores, multi-label metrics) or False (softmax, one label
    per clip); None: the checkpoints' meta (``multilabel`` or ``activation``) when recorded, else
    multi-label when some clip has no label or several, or the model has AudioSet's 527 outputs.
    ``device``: default cuda when available (for model objects: their own device).

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
    members = _members(checkpoints, geometry)
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
    for m in members:
        if device is None and m.given:
            dev = next(m.model.parameters()).device
        else:
            dev = torch.device(device) if device is not None else _default_device()
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


__all__ = ["evaluate", "format_results", "match_labels", "to_json"]

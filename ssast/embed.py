"""Clip-level and frame-level embeddings of audio files, for training your own heads.

The encoder comes from anything :func:`ssast.load` takes with ``stage="finetune"``: a
pretraining checkpoint (its encoder only, at the checkpoint's patch shape, with non-overlapping
patches unless strides are given) or a fine-tuned one (its head is not used). Features follow the
checkpoint's feature settings (SSAST pretraining used AudioSet's normalization).

Each file is read as a stream and cut into windows (:mod:`ssast.stream`). A window of ``window`` seconds holds
``window / frame shift`` analysis frames (its audio spans one frame length minus one shift more,
15 ms with the recipe's framing); by default it is the model's input length, and windows start
every ``hop`` seconds (default: the window), so that consecutive windows continue one grid of
10 ms frames without overlap. The last window is the first that reaches the end of the file;
its missing audio is zero-padded as the recipes pad short clips. A file shorter than one window
gives a single padded window.

Per window, from the encoder's output after its final norm (``layer=-1``) or from the output of
block ``layer`` (0-based; a forward hook on ``model.v.blocks``):

- ``avgtok``: the mean of all patch tokens (the ``ft_avgtok`` pooling; padded patches included,
  as the model sees them);
- ``cls``: the mean of the prefix tokens (the ``ft_cls`` pooling);
- frames: for each time step of the patch grid, the mean of its frequency patches, (steps, D).
  Steps that start in the zero padding past the end of the file are dropped, and so are, when
  windows overlap (hop < window), the steps of a window that start at or after the next window's
  start, so that frame times increase without repeats.

Output, in ``out_dir``: one ``.npz`` per audio file at the file's path relative to the input
folder (``a/b.wav`` -> ``a/b.npz``; files differing only in extension keep it: ``b.wav.npz``),
holding

- ``clip_avgtok``, ``clip_cls`` (D,): the file's embedding, the mean of its windows' embeddings
  weighted by the seconds of audio each window holds;
- ``window_avgtok``, ``window_cls`` (W, D): each window's;
- ``frames`` (S, D) and ``frame_times`` (S,): the frame-level embeddings and the start time in
  seconds of each step's first analysis frame (a step spans ``tshape`` frames);
- ``window_starts``, ``window_durations`` (W,): seconds.

(``level='clip'`` leaves out the frame arrays, ``level='frame'`` the clip and window ones.)
``index.csv`` lists the files written (path, npz, duration, windows, and labels when the source
has them), ``settings.json`` the model and settings, and ``skipped.csv`` the files that could
not be read (each also reported on stderr); the others go on.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .audio import is_audio_file
from .device import default_device
from .features import FeatureExtractor, frame_geometry, num_frames
from .files import atomic_write, json_text
from .loading import Loaded, load
from .sources import Item, read_source
from .stream import FileEnd, FileFailed, FileStart, Rows, run_windows

LEVELS = ("clip", "frame", "both")
OUTPUT_KEYS = {
    "clip_avgtok": "(D,) the file's embedding: mean of the patch tokens, windows weighted by their audio",
    "clip_cls": "(D,) the same for the prefix tokens (cls, and distillation token)",
    "window_avgtok": "(W, D) each window's mean of the patch tokens",
    "window_cls": "(W, D) each window's mean of the prefix tokens",
    "frames": "(S, D) one embedding per time step of the patch grid (mean of its frequency patches)",
    "frame_times": "(S,) start in seconds of each step's first analysis frame",
    "window_starts": "(W,) window starts in seconds",
    "window_durations": "(W,) seconds of audio in each window",
}


class _Stop(Exception):
    """Raised by the layer hook once the wanted block has run: the later blocks are not needed."""


class Embedder:
    """Pooled and frame-level embeddings of batches of windows.

    ``layer``: -1 for the encoder output after its final norm, or a block index in
    [0, depth) for that block's output (before any norm).
    """

    def __init__(self, loaded: Loaded, *, layer: int = -1, device: str | torch.device | None = None):
        model = loaded.model
        depth = len(model.v.blocks)
        if layer != -1 and not 0 <= layer < depth:
            raise ValueError(f"layer must be -1 (the final output) or a block index in [0, {depth}), got {layer}")
        self.layer = layer
        self.features = loaded.features
        self.extractor = FeatureExtractor(loaded.features)
        self.device = default_device(device)
        self.model = model.eval().to(self.device)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) model input -> (B, P + N, D) tokens of the chosen layer."""
        if self.layer == -1:
            return self.model.encode(x)
        got = {}

        def hook(module, args, output):
            got["h"] = output
            raise _Stop

        handle = self.model.v.blocks[self.layer].register_forward_hook(hook)
        try:
            self.model.encode(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got["h"]

    @torch.inference_mode()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, samples) windows -> ``avgtok`` (B, D), ``cls`` (B, D), ``frames`` (B, t, D), float32 on CPU."""
        cfg = self.model.config
        x = self.extractor(waves.to(self.device), lengths=lengths)  # (B, T, F)
        h = self.tokens(x).float()  # (B, P + N, D)
        p = cfg.num_prefix_tokens
        patches = h[:, p:].unflatten(1, cfg.grid)  # (B, f, t, D): the patch order is frequency-major
        return {
            "avgtok": h[:, p:].mean(dim=1).cpu(),  # (B, D)
            "cls": h[:, :p].mean(dim=1).cpu(),  # (B, D)
            "frames": patches.mean(dim=1).cpu(),  # (B, t, D)
        }


@dataclass
class _File:
    path: str
    npz: Path
    labels: tuple[str, ...]
    starts: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    avgtok: list[torch.Tensor] = field(default_factory=list)
    cls: list[torch.Tensor] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)

    def add(self, rows: Rows) -> None:
        self.starts.append(rows.starts)
        self.lengths.append(rows.lengths)
        self.avgtok.append(rows.outputs["avgtok"])
        self.cls.append(rows.outputs["cls"])
        self.frames.append(rows.outputs["frames"])


def _inputs(src, label_csv) -> tuple[list[Item], Path, bool]:
    """(items, folder the output mirrors, whether the items carry labels)."""
    p = Path(src)
    if p.is_file() and is_audio_file(p):
        return [Item(str(p))], p.parent, False
    source = read_source(src, label_csv=label_csv)
    if p.is_dir():
        base = p
    else:
        dirs = [os.path.dirname(os.path.abspath(it.path)) for it in source.items]
        base = Path(os.path.commonpath(dirs)) if dirs else p.parent
    return list(source.items), base, source.labeled


def output_names(paths: list[str], base: Path) -> list[Path]:
    """Relative ``.npz`` names mirroring ``paths`` under ``base`` (see the module docstring)."""
    rels = []
    for path in paths:
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base)))
        if rel.parts and rel.parts[0] == "..":  # outside the base: the absolute path, without its root
            rel = Path(*Path(os.path.abspath(path)).parts[1:])
        rels.append(rel)
    stems = [r.with_suffix(".npz") for r in rels]
    taken: dict[Path, int] = {}
    for s in stems:
        taken[s] = taken.get(s, 0) + 1
    return [r.with_name(r.name + ".npz") if taken[s] > 1 else s for r, s in zip(rels, stems)]


def embed(model: Loaded | str | os.PathLike, src, out_dir: str | os.PathLike, *, level: str = "both",
          layer: int = -1, window: float | None = None, hop: float | None = None, batch_size: int = 8,
          device: str | torch.device | None = None, label_csv: str | os.PathLike | None = None,
          progress: bool = False, block_seconds: float = 60.0, **load_options) -> dict:
    """Write the embeddings of every audio file of ``src`` to ``out_dir`` (see the module docstring).

    ``model``: a :class:`~ssast.loading.Loaded` model, or anything :func:`ssast.load` takes (loaded
    with ``stage="finetune"`` and ``load_options``: strides, target length, normalization).
    ``src``: a folder (searched recursively), one audio file, a CSV or a JSON datafile.
    ``window``/``hop``: seconds (default: the model's input length, and the window).

    Returns ``{"files": [{"path", "npz", "duration", "windows"}], "skipped": [{"path", "error"}],
    "settings": {...}}``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    loaded = model if isinstance(model, Loaded) else load(model, stage="finetune", **load_options)
    emb = Embedder(loaded, layer=layer, device=device)
    cfg, f = loaded.config, loaded.features
    sr = f.sample_rate
    size, shift, _ = frame_geometry(sr, f.frame_length_ms, f.frame_shift_ms)
    shift_s = shift / sr
    window_s = f.target_length * shift_s if window is None else float(window)
    hop_s = window_s if hop is None else float(hop)
    n_frames = round(window_s / shift_s)
    if n_frames < 1:
        raise ValueError(f"a window of {window_s} s holds no {f.frame_shift_ms} ms frame")
    if n_frames > f.target_length:
        raise ValueError(f"a window of {window_s} s holds {n_frames} frames, but the model takes {f.target_length} "
                         f"({f.target_length * shift_s:g} s): use a window of at most {f.target_length * shift_s:g} s")
    win = (n_frames - 1) * shift + size  # samples giving exactly n_frames frames
    hp = round(hop_s * sr)
    if hp < 1:
        raise ValueError(f"hop must be positive, got {hop_s} s")
    step_samples = cfg.tstride * shift  # samples between two time steps of the patch grid
    t_steps = torch.arange(cfg.t_dim)  # (t,)

    items, base, labeled = _inputs(src, label_csv)
    out_dir = Path(out_dir)
    names = output_names([it.path for it in items], base)
    paths = [it.path for it in items]
    skipped: list[dict] = []
    written: list[dict] = []
    files: dict[int, _File] = {}
    bar = tqdm(total=len(paths), unit="file", desc="embed", file=sys.stderr, disable=not progress)

    def report(path: str, problem: str) -> None:
        skipped.append({"path": path, "error": problem})
        bar.write(f"skipped {path}: {problem}", file=sys.stderr)

    def finish(st: _File, end: FileEnd) -> None:
        starts, lengths = np.concatenate(st.starts), np.concatenate(st.lengths)
        arrays: dict[str, np.ndarray] = {"window_starts": starts / sr, "window_durations": lengths / sr}
        if level in ("clip", "both"):
            w = torch.as_tensor(lengths, dtype=torch.float64)[:, None] / float(lengths.sum())  # (W, 1)
            for key, vals in (("avgtok", st.avgtok), ("cls", st.cls)):
                per_window = torch.cat(vals)  # (W, D)
                arrays[f"window_{key}"] = per_window.numpy()
                arrays[f"clip_{key}"] = (per_window.double() * w).sum(dim=0).float().numpy()  # (D,)
        if level in ("frame", "both"):
            frames = torch.cat(st.frames)  # (W, t, D)
            keep_frames, keep_times = [], []
            for k, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
                real = num_frames(n, sr, f.frame_length_ms, f.frame_shift_ms)
                keep = t_steps * cfg.tstride < real  # the step starts in real audio
                if k + 1 < len(starts):
                    keep &= s + t_steps * step_samples < int(starts[k + 1])  # the next window takes over
                keep_frames.append(frames[k][keep])
                keep_times.append((s + t_steps[keep].numpy() * step_samples) / sr)
            arrays["frames"] = torch.cat(keep_frames).numpy()  # (S, D)
            arrays["frame_times"] = np.concatenate(keep_times)  # (S,)
        atomic_write(out_dir / st.npz, lambda fh: np.savez(fh, **arrays))
        row = {"path": st.path, "npz": st.npz.as_posix(), "duration": round(end.num_samples / sr, 6),
               "windows": len(starts)}
        if labeled:
            row["labels"] = ";".join(st.labels)
        written.append(row)

    try:
        for ev in run_windows(paths, emb, sample_rate=sr, window=win, hop=hp, min_samples=size,
                              batch_size=batch_size, block_seconds=block_seconds):
            if isinstance(ev, FileStart):
                files[ev.index] = _File(ev.path, names[ev.index], items[ev.index].labels)
            elif isinstance(ev, Rows):
                files[ev.index].add(ev)
            elif isinstance(ev, FileEnd):
                st = files.pop(ev.index)
                if ev.error is not None:  # a file that fails part-way is skipped whole
                    report(ev.path, ev.error)
                else:
                    finish(st, ev)
                bar.update(1)
            elif isinstance(ev, FileFailed):
                report(ev.path, ev.problem)
                bar.update(1)
    finally:
        bar.close()

    order = {p: j for j, p in enumerate(paths)}
    written.sort(key=lambda r: order[r["path"]])
    columns = ["path", "npz", "duration", "windows"] + (["labels"] if labeled else [])
    atomic_write(out_dir / "index.csv", _csv_text(columns, written))
    if skipped:
        atomic_write(out_dir / "skipped.csv", _csv_text(["path", "error"], skipped))
    settings = {
        "checkpoint": loaded.source, "level": level, "layer": layer, "window": window_s, "hop": hop_s,
        "window_samples": win, "hop_samples": hp, "frame_step": step_samples / sr, "embed_dim": cfg.embed_dim,
        "grid": list(cfg.grid), "model": cfg.to_dict(), "features": f.to_dict(), "device": str(emb.device),
    }
    atomic_write(out_dir / "settings.json", json_text(settings, indent=2))
    return {"files": written, "skipped": skipped, "settings": settings}


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


__all__ = ["Embedder", "LEVELS", "OUTPUT_KEYS", "embed", "output_names"]

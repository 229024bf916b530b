"""Clip-level and frame-level embeddings of audio files, for training your own heads.

The encoder comes from a pretraining checkpoint (released or project format; its encoder only,
built as a fine-tuning-stage model at the checkpoint's patch shape, with non-overlapping patches
unless strides are given) or from a fine-tuned one (its head is not used). Features follow the
checkpoint's feature settings (for files that store none: AudioSet's normalization, the one
SSAST pretraining used, with the model's mel bins and input length).

Each file is read as a stream and cut into windows. A window of ``window`` seconds holds
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
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import is_audio_file
from .features import FeatureConfig, FeatureExtractor, frame_geometry, num_frames
from .sources import Item, read_source

LEVELS = ("clip", "frame", "both")


def load_encoder(path: str | os.PathLike, *, fshape: int | None = None, tshape: int | None = None,
                 fstride: int | None = None, tstride: int | None = None, input_fdim: int | None = None,
                 input_tdim: int | None = None):
    """A fine-tuning-stage model (eval mode) and its :class:`FeatureConfig` from any checkpoint.

    Fine-tuned checkpoints are read with :func:`ssast.load_finetuned` (the geometry arguments
    are its own). For pretraining checkpoints the strides default to the patch shape and the
    input size to the pretraining input; a different input size resamples the positional grid.
    """
    from .checkpoint import CheckpointError, read_checkpoint
    from .model import ASTModel, load_finetuned

    geometry = dict(fshape=fshape, tshape=tshape, fstride=fstride, tstride=tstride, input_fdim=input_fdim,
                    input_tdim=input_tdim)
    ckpt = read_checkpoint(path, fstride=fstride or 10, tstride=tstride or 10, input_fdim=input_fdim or 128)
    if ckpt.stage == "finetune" and any(k.startswith("mlp_head.") for k in ckpt.state):
        model = load_finetuned(path, **geometry)
        features = model.features
    else:
        src = ckpt.config
        if (fshape or src.fshape, tshape or src.tshape) != (src.fshape, src.tshape):
            raise CheckpointError(path, f"patch shape mismatch: the checkpoint has {src.fshape}x{src.tshape} patches, "
                                        f"fshape={fshape}, tshape={tshape} were asked for")
        cfg = src.replace(stage="finetune", fstride=fstride or src.fshape, tstride=tstride or src.tshape,
                          input_fdim=input_fdim or src.input_fdim, input_tdim=input_tdim or src.input_tdim)
        cfg.validate()
        model = ASTModel(config=cfg)
        model.load_from(ckpt)  # encoder only, positional grid adapted to cfg
        model.labels, model.features, model.meta = None, ckpt.features, ckpt.meta
        features = ckpt.features
    cfg = model.config
    try:
        features = FeatureConfig.for_model(cfg, features)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    return model.eval(), features


class _Stop(Exception):
    """Raised by the layer hook once the wanted block has run: the later blocks are not needed."""


class Embedder:
    """Pooled and frame-level embeddings of batches of windows.

    ``layer``: -1 for the encoder output after its final norm, or a block index in
    [0, depth) for that block's output (before any norm).
    """

    def __init__(self, model: torch.nn.Module, features: FeatureConfig, *, layer: int = -1,
                 device: str | torch.device | None = None):
        depth = len(model.v.blocks)
        if layer != -1 and not 0 <= layer < depth:
            raise ValueError(f"layer must be -1 (the final output) or a block index in [0, {depth}), got {layer}")
        self.layer = layer
        self.features = features
        self.extractor = FeatureExtractor(features)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
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
    starts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    avgtok: list[torch.Tensor] = field(default_factory=list)
    cls: list[torch.Tensor] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)
    expected: int | None = None
    num_samples: int = 0


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


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # no half-written file under the final name
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embed(checkpoint, src, out_dir: str | os.PathLike, *, level: str = "both", layer: int = -1,
          window: float | None = None, hop: float | None = None, batch_size: int = 8,
          device: str | torch.device | None = None, label_csv: str | os.PathLike | None = None,
          geometry: dict | None = None, progress: bool = False, block_seconds: float = 60.0) -> dict:
    """Write the embeddings of every audio file of ``src`` to ``out_dir`` (see the module docstring).

    ``checkpoint``: a checkpoint path, or a ``(model, FeatureConfig)`` pair. ``src``: a folder
    (searched recursively), one audio file, a CSV or a JSON datafile. ``window``/``hop``: seconds
    (default: the model's input length, and the window). ``geometry``: strides and input size
    (see :func:`load_encoder`).

    Returns ``{"files": [{"path", "npz", "duration", "windows"}], "skipped": [{"path", "error"}],
    "settings": {...}}``.
    """
    from .predict import _events, _prefetch

    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(checkpoint, (str, os.PathLike)):
        model, features = load_encoder(checkpoint, **(geometry or {}))
        name = str(checkpoint)
    else:
        model, features = checkpoint
        name = "model"
    emb = Embedder(model, features, layer=layer, device=device)
    cfg = model.config
    f = features
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
    states: dict[int, _File] = {}
    pending: list = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="file", desc="embed", file=sys.stderr)

    def report(path: str, problem: str) -> None:
        skipped.append({"path": path, "error": problem})
        msg = f"skipped {path}: {problem}"
        (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=sys.stderr))
        if bar is not None:
            bar.update(1)

    def run_batch() -> None:
        waves = torch.stack([b[4] for b in pending])  # (B, win)
        lens = torch.tensor([b[3] for b in pending])
        out = emb(waves, lens if int(lens.min()) < win else None)
        for row, (i, k, start, length, _) in enumerate(pending):
            st = states[i]
            st.starts.append(start)
            st.lengths.append(length)
            st.avgtok.append(out["avgtok"][row])
            st.cls.append(out["cls"][row])
            st.frames.append(out["frames"][row])
        pending.clear()

    def finish(i: int) -> None:
        st = states.pop(i)
        starts = np.asarray(st.starts, dtype=np.int64)
        lengths = np.asarray(st.lengths, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {"window_starts": starts / sr, "window_durations": lengths / sr}
        if level in ("clip", "both"):
            w = torch.as_tensor(lengths, dtype=torch.float64)[:, None] / float(lengths.sum())  # (W, 1)
            for key, vals in (("avgtok", st.avgtok), ("cls", st.cls)):
                per_window = torch.stack(vals)  # (W, D)
                arrays[f"window_{key}"] = per_window.numpy()
                arrays[f"clip_{key}"] = (per_window.double() * w).sum(dim=0).float().numpy()  # (D,)
        if level in ("frame", "both"):
            keep_frames, keep_times = [], []
            for k, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
                real = num_frames(n, sr, f.frame_length_ms, f.frame_shift_ms)
                keep = t_steps * cfg.tstride < real  # the step starts in real audio
                if k + 1 < len(starts):
                    keep &= s + t_steps * step_samples < int(starts[k + 1])  # the next window takes over
                keep_frames.append(st.frames[k][keep])
                keep_times.append((s + t_steps[keep].numpy() * step_samples) / sr)
            arrays["frames"] = torch.cat(keep_frames).numpy()  # (S, D)
            arrays["frame_times"] = np.concatenate(keep_times)  # (S,)
        _save_npz(out_dir / st.npz, arrays)
        row = {"path": st.path, "npz": st.npz.as_posix(), "duration": round(st.num_samples / sr, 6),
               "windows": len(starts)}
        if labeled:
            row["labels"] = ";".join(st.labels)
        written.append(row)
        if bar is not None:
            bar.update(1)

    def flush_ready() -> None:
        for i in [i for i, st in states.items() if st.expected is not None and len(st.starts) == st.expected]:
            finish(i)

    events = _prefetch(_events(paths, sr, win, hp, size, block_seconds), depth=2 * batch_size + 4)
    try:
        for kind, i, payload in events:
            if kind == "start":
                states[i] = _File(paths[i], names[i], items[i].labels)
            elif kind == "window":
                pending.append((i, *payload))
                if len(pending) == batch_size:
                    run_batch()
                    flush_ready()
            elif kind == "end":
                st = states[i]
                st.expected = len(st.starts) + sum(1 for b in pending if b[0] == i)
                st.num_samples = payload
                flush_ready()
            else:  # a file that cannot be read, or fails part-way: skipped whole
                states.pop(i, None)
                pending[:] = [b for b in pending if b[0] != i]
                report(paths[i], payload)
        if pending:
            run_batch()
        flush_ready()
    finally:
        if bar is not None:
            bar.close()

    order = {p: j for j, p in enumerate(paths)}
    written.sort(key=lambda r: order[r["path"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["path", "npz", "duration", "windows"] + (["labels"] if labeled else [])
    with open(out_dir / "index.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=columns)
        wr.writeheader()
        wr.writerows(written)
    if skipped:
        with open(out_dir / "skipped.csv", "w", newline="", encoding="utf-8") as fh:
            wr = csv.DictWriter(fh, fieldnames=["path", "error"])
            wr.writeheader()
            wr.writerows(skipped)
    settings = {
        "checkpoint": name, "level": level, "layer": layer, "window": window_s, "hop": hop_s,
        "window_samples": win, "hop_samples": hp, "frame_step": step_samples / sr, "embed_dim": cfg.embed_dim,
        "grid": list(cfg.grid), "model": cfg.to_dict(), "features": f.to_dict(), "device": str(emb.device),
    }
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return {"files": written, "skipped": skipped, "settings": settings}


__all__ = ["Embedder", "LEVELS", "embed", "load_encoder", "output_names"]

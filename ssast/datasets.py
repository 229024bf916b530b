"""Clip datasets: waveforms of a fixed length and multi-hot label targets.

Items are mono float32 waveforms at the model's sample rate (16 kHz by default), cropped or
zero-padded to ``num_samples``; log-mel features are computed later, a batch at a time, on the
training device (:mod:`ssast.features`). A labeled source gives a multi-hot ``target`` over its
label vocabulary; an unlabeled one (pretraining) gives none and needs no label file.

:class:`AudioDataset` reads any form :func:`ssast.sources.read_source` accepts, validates it on
construction and reports bad entries up front; a clip that becomes unreadable later is skipped,
counted in a :class:`SkipCounter` and reported, and the epoch goes on.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import torch

from . import seeds
from .audio import DEFAULT_SAMPLE_RATE, AudioError, load_audio
from .features import FeatureConfig, fbank
from .features import num_frames as frames_in
from .sources import Source, SourceError, read_source
from .sources import validate as validate_source

log = logging.getLogger(__name__)

# Kaldi fbank framing of the official recipes: 25 ms windows every 10 ms.
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


def frames_to_samples(frames: int, sample_rate: int = DEFAULT_SAMPLE_RATE,
                      frame_length_ms: float = FRAME_LENGTH_MS, frame_shift_ms: float = FRAME_SHIFT_MS) -> int:
    """Fewest samples that give ``frames`` fbank frames: (T - 1) * shift + length.

    1024 frames at 16 kHz -> 1023 * 160 + 400 = 164080 samples (10.255 s).
    """
    shift = int(sample_rate * frame_shift_ms / 1000)
    length = int(sample_rate * frame_length_ms / 1000)
    return (frames - 1) * shift + length


def crop_or_pad(wave: torch.Tensor, num_samples: int, train: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(samples,) -> (num_samples,): a random window (train) or the beginning (eval) of a longer
    clip; a shorter one zero-padded at the end, as the official recipes pad their fbank."""
    n = wave.shape[-1]
    if n > num_samples:
        start = int(torch.randint(0, n - num_samples + 1, (1,), generator=generator)) if train else 0
        return wave[..., start:start + num_samples]
    if n < num_samples:
        return torch.nn.functional.pad(wave, (0, num_samples - n))
    return wave


def multi_hot(labels, index: dict[str, int]) -> torch.Tensor:
    """Label ids -> float (len(index),) vector with ones at their indices; KeyError on an unknown one."""
    target = torch.zeros(len(index))
    idx = [index[lab] for lab in labels]
    if idx:
        target[idx] = 1.0
    return target


PCM16_SCALE = 1 / 32768  # int16 samples to [-1, 1), as libsndfile reads 16-bit audio


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor to collate a batch into; in shared memory inside a DataLoader
    worker, so that the batch is written once there instead of being copied into shared memory
    again when it is sent to the training process."""
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if torch.utils.data.get_worker_info() is not None else out


def _collate_waves(samples: list[dict], num_samples: int | None, shared: bool = True,
                   wave_dtype: torch.dtype = torch.float32) -> dict:
    waves = [s["wave"] for s in samples]
    width = max(max(w.shape[-1] for w in waves), num_samples or 0)
    shape = (len(waves), width)
    out = batch_tensor(shape, wave_dtype) if shared else torch.empty(shape, dtype=wave_dtype)  # (B, N)
    pcm_out = wave_dtype == torch.int16
    if not pcm_out and wave_dtype != torch.float32:
        raise ValueError(f"collate: waves are batched as float32 or int16, not {wave_dtype}")
    for i, w in enumerate(waves):
        n = w.shape[-1]
        if pcm_out and w.dtype != torch.int16:  # e.g. a resampled clip: rounded as the writer rounds
            w = w.mul(32768).round_().clamp_(-32768, 32767)
        row = out[i, :n].copy_(w)  # int16 rows into float32 are converted here, and scaled while in cache
        if not pcm_out and w.dtype == torch.int16:
            row.mul_(PCM16_SCALE)
        if n < width:
            out[i, n:].zero_()
    lengths = torch.tensor([int(s.get("length", w.shape[-1])) for s, w in zip(samples, waves)])
    return {"wave": out, "length": lengths}


def _collate_fbank(samples: list[dict], num_frames: int | None, features: FeatureConfig | None) -> dict:
    feats = [s.get("fbank") for s in samples]
    bins = {f.shape[-1] for f in feats if f is not None}
    waves = [i for i, f in enumerate(feats) if f is None]
    if waves:
        # Waveforms in a batch of precomputed features (a mixture of formats): their fbank is
        # computed here, a batch at a time, with the settings the precomputed ones were made with.
        c = features or FeatureConfig()
        if bins and bins != {c.num_mel_bins}:
            raise ValueError(f"collate: precomputed fbank with {sorted(bins)} mel bins, waveforms to be "
                             f"computed with {c.num_mel_bins}")
        wb = _collate_waves([samples[i] for i in waves], None, shared=False)
        computed = fbank(wb["wave"], c.sample_rate, c.num_mel_bins, lengths=wb["length"],
                         frame_length_ms=c.frame_length_ms, frame_shift_ms=c.frame_shift_ms,
                         window=c.window)  # (b, T, F), zero past each clip's frames
        counts = frames_in(wb["length"], c.sample_rate, c.frame_length_ms, c.frame_shift_ms)  # (b,)
        for j, i in enumerate(waves):
            keep = min(int(counts[j]), num_frames or int(counts[j]))
            feats[i] = computed[j, :keep].to(torch.float16)
            samples[i] = dict(samples[i], frames=keep)
        bins.add(c.num_mel_bins)
    if len(bins) != 1:
        raise ValueError(f"collate: precomputed fbank with different mel bins in one batch: {sorted(bins)}")
    width = max(max(f.shape[0] for f in feats), num_frames or 0)
    out = batch_tensor((len(feats), width, bins.pop()), torch.float16)  # (B, T, F)
    for i, f in enumerate(feats):
        out[i, :f.shape[0]].copy_(f)
        if f.shape[0] < width:
            out[i, f.shape[0]:].zero_()  # the recipes pad the unnormalized fbank with zeros
    frames = torch.tensor([int(s.get("frames", f.shape[0])) for s, f in zip(samples, feats)])
    return {"fbank": out, "frames": frames}


def collate(samples: list[dict], num_samples: int | None = None, num_frames: int | None = None,
            features: FeatureConfig | None = None, fbank_batches: bool | None = None,
            wave_dtype: torch.dtype = torch.float32) -> dict:
    """Stack per-clip dicts into a batch.

    ``wave`` -> (B, N) float32, clips of different lengths zero-padded to the longest (or to
    ``num_samples``, if longer); int16 waves (16-bit PCM as stored) are scaled to [-1, 1) here,
    in the same pass. ``length`` -> (B,) samples of real audio in each row (a clip's own
    ``length`` if it was padded before), to pass as ``lengths=`` to the feature extractor so
    that padded clips get the recipes' features. ``wave_dtype=torch.int16`` keeps 16-bit
    samples as they are (float rows are rounded to them), for the device to scale by 1 / 32768:
    half the bytes to move and no conversion on the CPU.

    Clips with precomputed features (``fbank``: (frames, F) unnormalized log-mel) give
    ``fbank`` -> (B, T, F) float16, zero-padded to the longest (or ``num_frames``), and
    ``frames`` -> (B,) real frames per row; a waveform in such a batch has its fbank computed
    here with ``features`` (a :class:`ssast.features.FeatureConfig`; default settings if None).
    ``fbank_batches``: True makes every batch such a batch (waves and all), False refuses
    precomputed features, None decides per batch.

    ``target`` -> (B, C) where every clip has one; any other key -> a list. Inside a DataLoader
    worker the batch tensors are made in shared memory.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    with_fbank = any("fbank" in s for s in samples)
    if with_fbank and fbank_batches is False:
        raise ValueError("collate: a clip holds precomputed fbank, but batches of waveforms were asked for")
    if with_fbank or fbank_batches:
        batch = _collate_fbank(list(samples), num_frames, features)
    else:
        batch = _collate_waves(samples, num_samples, wave_dtype=wave_dtype)
    with_target = sum("target" in s for s in samples)
    if with_target not in (0, len(samples)):
        raise ValueError(f"collate: {with_target} of {len(samples)} clips have a target; mix labeled and "
                         "unlabeled clips only without targets")
    if with_target:
        batch["target"] = torch.stack([s["target"] for s in samples])  # (B, C)
    for key in samples[0]:
        if key not in batch and key not in ("wave", "fbank", "length", "frames"):
            batch[key] = [s.get(key) for s in samples]
    return batch


class SkipCounter:
    """Clips skipped while reading, by reason, summed over DataLoader worker processes.

    Reasons: ``tar`` (a shard missing or unreadable, truncated, or with a bad member: counted per
    error), ``sample`` (a shard sample without audio or with bad JSON), ``audio`` (a file or
    member that does not decode), ``label`` (a label outside the vocabulary). The counts live in shared memory created with the object, so workers started from it (by
    fork or spawn) add to the same totals the training process reads. Each skip is logged in
    full for the first ``log_first`` of them, then once every ``log_every``; ``max_consecutive``
    skips in a row with nothing read between them raise, since then nothing usable is left.
    """

    REASONS = ("tar", "sample", "audio", "label")

    def __init__(self, name: str = "data", log_first: int = 10, log_every: int = 100,
                 max_consecutive: int = 1000):
        self.name = name
        self.log_first, self.log_every, self.max_consecutive = log_first, log_every, max_consecutive
        # A spawn-context lock also works in forked workers; a fork-context one cannot go to spawned ones.
        self._counts = multiprocessing.get_context("spawn").Array("q", len(self.REASONS))
        self.recent: list[tuple[str, str]] = []  # (reason, message), this process only
        self._consecutive = 0

    def skip(self, reason: str, message: str) -> None:
        """Count one skipped clip (or tar error) and log it."""
        i = self.REASONS.index(reason)
        with self._counts.get_lock():
            self._counts[i] += 1
            total = sum(self._counts)
        self.recent = (self.recent + [(reason, message)])[-20:]
        if total <= self.log_first or total % self.log_every == 0:
            log.warning("%s: skipped %s (%s); %s so far", self.name, message, reason, self.describe())
        self._consecutive += 1
        if self._consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.name}: {self._consecutive} items in a row could not be read "
                               f"(last: {message}); {self.describe()}")

    def ok(self) -> None:
        """Note a clip read successfully."""
        self._consecutive = 0

    def handler(self, exn: BaseException) -> bool:
        """A webdataset exception handler: count a tar-level error, log it, and go on.

        webdataset's own ``warn_and_continue`` sleeps half a second per error; this one doesn't.
        """
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a != str(exn.args[0])), None)
        text = str(exn.args[0]) if exn.args else ""
        if isinstance(exn, OSError) and exn.strerror:
            text = exn.strerror
        self.skip("tar", f"{url + ': ' if url else ''}{type(exn).__name__}: {text}")
        return True

    def counts(self) -> dict[str, int]:
        with self._counts.get_lock():
            return dict(zip(self.REASONS, self._counts[:]))

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def describe(self) -> str:
        counts = self.counts()
        parts = [f"{n} {reason}" for reason, n in counts.items() if n]
        return f"{sum(counts.values())} skipped" + (f" ({', '.join(parts)})" if parts else "")


class AudioDataset(torch.utils.data.Dataset):
    """Fixed-length waveforms (and multi-hot targets) from a datafile, CSV or folder.

    Args:
        source_or_path: a :class:`ssast.sources.Source`, or a JSON datafile, CSV or folder
            (per class, or of unlabeled audio) read with :func:`ssast.sources.read_source`.
        sample_rate: rate of the waveforms returned (files are resampled to it).
        num_samples: length of every waveform; None keeps each clip's own length.
        label_csv: the official label CSV (``index,mid,display_name``) for a JSON datafile or CSV.
        train: random crop of longer clips (train) or their beginning (eval).
        validate: check every entry now (missing files, unknown labels, unreadable audio headers)
            and drop the bad ones with a logged list; ``strict=True`` raises instead.
        check_audio: with ``validate``, also read each file's header.
        seed: crops drawn from (seed, epoch, index), independent of the worker layout; None draws
            from torch's global generator (seeded per worker by the DataLoader).
        labeled: force a folder to be read as per-class (True) or unlabeled (False).
        skipped: a :class:`SkipCounter` to count clips unreadable at load time (one is made if None).

    Items are dicts: ``wave`` (num_samples,) float32, ``length`` int (samples of real audio
    before zero padding), ``target`` (num_labels,) float (labeled sources only), ``path`` str.
    """

    def __init__(self, source_or_path: Source | str | os.PathLike, sample_rate: int = DEFAULT_SAMPLE_RATE,
                 num_samples: int | None = None, label_csv: str | os.PathLike | None = None, train: bool = True,
                 validate: bool = True, check_audio: bool = True, strict: bool = False, seed: int | None = None,
                 labeled: bool | None = None, skipped: SkipCounter | None = None, max_retries: int = 10):
        if isinstance(source_or_path, Source):
            self.source = source_or_path
        else:
            self.source = read_source(source_or_path, label_csv=label_csv, labeled=labeled)
        self.sample_rate, self.num_samples, self.train = sample_rate, num_samples, train
        self.seed, self.epoch, self.max_retries = seed, 0, max_retries
        self.skipped = skipped or SkipCounter(name=Path(self.source.name).name)
        self.report = None
        items = list(self.source.items)
        if validate:
            self.report = validate_source(self.source, check_audio=check_audio)
            if self.report.bad:
                if strict:
                    raise SourceError(self.source.name, "bad entries:\n" + self.report.summary())
                log.warning("%s: skipping bad entries: %s", self.source.name, self.report.summary())
            items = self.report.good
        if not items:
            raise SourceError(self.source.name, "no usable clips" +
                              (":\n" + self.report.summary() if self.report and self.report.bad else ""))
        self.items = items
        self._index = self.source.label_index()

    @property
    def labels(self) -> list[str] | None:
        return self.source.labels

    @property
    def display_names(self) -> list[str] | None:
        return self.source.display_names

    @property
    def num_labels(self) -> int:
        return len(self.source.labels or [])

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's crops (with a seed, crops depend on (seed, epoch, index))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return seeds.generator(self.seed, "crop", self.epoch, index)

    def _load(self, index: int) -> dict:
        item = self.items[index]
        wave = load_audio(item.path, self.sample_rate)
        length = wave.shape[-1]
        if self.num_samples is not None:
            length = min(length, self.num_samples)
            wave = crop_or_pad(wave, self.num_samples, self.train, self._generator(index))
        out = {"wave": wave, "length": length, "path": item.path}
        if self.source.labeled:
            out["target"] = multi_hot(item.labels, self._index)
        return out

    def __getitem__(self, index: int) -> dict:
        # A clip that can no longer be read (deleted, corrupt) is replaced by the next one, so a
        # long run does not die on one file; the skip is counted and logged.
        for attempt in range(self.max_retries + 1):
            j = (index + attempt) % len(self.items)
            try:
                item = self._load(j)
            except AudioError as e:
                self.skipped.skip("audio", str(e))
                continue
            except KeyError as e:
                self.skipped.skip("label", f"{self.items[j].path}: unknown label {e.args[0]}")
                continue
            self.skipped.ok()
            return item
        raise RuntimeError(f"{self.source.name}: {self.max_retries + 1} clips in a row from index {index} "
                           f"could not be read; {self.skipped.describe()}")

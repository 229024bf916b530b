"""Batches for the training loop: resumable training streams, fixed evaluation sets, features.

Pretraining (:class:`TrainStream`, :class:`ValidSet`) reads the sources with :func:`ssast.shards.shard_pipeline` in its endless, resampled
mode, so every rank takes the same number of steps whatever the shard sizes. The stream is
cut into *data epochs* of ``epoch_steps`` optimizer steps (the checkpoint interval): epoch ``e``
is a fresh pipeline seeded with ``(seed, e)``, whose shard draws, shuffle buffer and crops
depend only on ``(seed, e, rank, DataLoader worker)``. The data position of a run is therefore
just its step: a run resumed at step ``s`` rebuilds epoch ``s // epoch_steps`` and skips the
micro-batches of its first ``s % epoch_steps`` steps (none when the checkpoint was written at
an epoch boundary, which is where periodic checkpoints fall), and reads exactly what the
uninterrupted run read, as long as the world size and ``num_workers`` are the same.

Validation reads its source once per validation, in order, without shuffling and from the
start of each clip, split across ranks: a fixed set.

Fine-tuning (:class:`EpochStream`, :class:`EvalSet`) reads a labelled dataset in epochs: every
process reads ``ceil(N / (micro batch x accumulation x processes))`` steps per epoch, the
epoch's clip order (a permutation, or with balanced sampling ``N`` draws with replacement by
weight) wrapped around to fill the last step, and split across the processes. The order and the
augmentation of every batch depend only on (seed, epoch, position), so a resumed run reads and
augments what an uninterrupted run would.

:class:`DeviceFeatures` turns a batch into model input on the training device (from the
waveforms and their true lengths), augmenting training batches when augmentation is on.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import torch

from .. import seeds
from ..augment import AugmentConfig, augment_batch
from ..datasets import PCM16_SCALE, AudioDataset, SkipCounter, collate, frames_to_samples
from ..features import FeatureConfig, FeatureExtractor, frame_geometry
from ..shards import shard_pipeline
from .config import DataSettings

log = logging.getLogger(__name__)


def make_loader(data, num_workers: int, pin: bool, batches: list[list[int]] | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over a batching pipeline (``batches`` None) or a dataset read in ``batches`` of indices.

    A pipeline batches itself; the DataLoader only runs it in workers (and round-robins over them
    in a fixed order, which keeps the stream deterministic).
    """
    if batches is None:
        return torch.utils.data.DataLoader(data, batch_size=None, num_workers=num_workers, pin_memory=pin,
                                           persistent_workers=False, prefetch_factor=4 if num_workers else None)
    return torch.utils.data.DataLoader(data, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                       pin_memory=pin, persistent_workers=False)


class TrainStream:
    """Micro-batches of training clips from a position (an optimizer step), for ever.

    ``epoch_steps`` optimizer steps of ``accumulation`` micro-batches make one data epoch.
    """

    def __init__(self, data: DataSettings, features: FeatureConfig, micro_batch: int, accumulation: int,
                 epoch_steps: int, seed: int, num_workers: int = 0, pin_memory: bool = False,
                 skipped: SkipCounter | None = None):
        self.data, self.features = data, features
        self.micro_batch, self.accumulation, self.epoch_steps = micro_batch, accumulation, epoch_steps
        self.seed, self.num_workers, self.pin_memory = seed, num_workers, pin_memory
        self.num_samples = frames_to_samples(features.target_length, features.sample_rate,
                                             features.frame_length_ms, features.frame_shift_ms)
        self.skipped = skipped or SkipCounter(name="train")
        self.sources = data.sources()
        self.pipeline(0)  # fail now, naming the source, if a source is missing or empty

    def pipeline(self, epoch: int):
        # Waves travel from the workers as int16 to a GPU (half the bytes; scaled on the device).
        p = shard_pipeline(self.sources, sample_rate=self.features.sample_rate, num_samples=self.num_samples,
                           batch_size=self.micro_batch, train=True, shuffle_buffer=self.data.shuffle_buffer,
                           resampled=True, epoch_length=self.epoch_steps * self.accumulation, seed=self.seed,
                           skipped=self.skipped, features=self.features,
                           wave_dtype=torch.int16 if self.pin_memory else torch.float32)
        p.set_epoch(epoch)
        return p

    def batches(self, step: int) -> Iterator[dict]:
        """The micro-batches of step ``step`` onwards (skipping those of the epoch's earlier steps)."""
        epoch, done = divmod(step, self.epoch_steps)
        skip = done * self.accumulation
        if skip:
            log.info("data: restarting epoch %d and skipping its first %d micro-batches", epoch, skip)
        while True:
            it = iter(make_loader(self.pipeline(epoch), self.num_workers, self.pin_memory))
            for _ in range(skip):
                next(it)
            skip = 0
            yield from it
            epoch += 1


class ValidSet:
    """The fixed validation clips, split across ranks, read from the start each time."""

    def __init__(self, source: str, features: FeatureConfig, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, skipped: SkipCounter | None = None):
        self.skipped = skipped or SkipCounter(name="valid")
        num_samples = frames_to_samples(features.target_length, features.sample_rate,
                                        features.frame_length_ms, features.frame_shift_ms)
        self.pipeline = shard_pipeline(source, sample_rate=features.sample_rate, num_samples=num_samples,
                                       batch_size=batch_size, train=False, shuffle_buffer=0, resampled=False,
                                       seed=0, skipped=self.skipped, features=features)
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __iter__(self) -> Iterator[dict]:
        return iter(make_loader(self.pipeline, self.num_workers, self.pin_memory))


class _Indexed(torch.utils.data.Dataset):
    """Items of a dataset with their position and the dataset's size (for pooling across ranks)."""

    def __init__(self, dataset: AudioDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        item["index"], item["size"] = i, len(self.dataset)
        return item


class EpochStream:
    """Fine-tuning micro-batches, epoch after epoch, from any step (see the module docstring)."""

    def __init__(self, dataset: AudioDataset, micro_batch: int, accumulation: int, world: int, rank: int, seed: int,
                 weights: torch.Tensor | None = None, num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.micro, self.accum, self.world, self.rank = dataset, micro_batch, accumulation, world, rank
        self.seed, self.weights, self.num_workers, self.pin = seed, weights, num_workers, pin_memory
        self.per_step = micro_batch * accumulation * world
        self.steps_per_epoch = max(1, math.ceil(len(dataset) / self.per_step))

    def order(self, epoch: int) -> torch.Tensor:
        """All processes' clip indices of epoch ``epoch`` (steps_per_epoch x clips per step,)."""
        n = len(self.dataset)
        g = seeds.generator(self.seed, "order", epoch)
        if self.weights is None:
            idx = torch.randperm(n, generator=g)
        else:  # WeightedRandomSampler(weights, n, replacement=True)
            idx = torch.multinomial(self.weights.to(torch.float64), n, replacement=True, generator=g)
        total = self.steps_per_epoch * self.per_step
        return idx.repeat(math.ceil(total / n))[:total]

    def batches(self, step: int) -> Iterator[dict]:
        epoch, done = divmod(step, self.steps_per_epoch)
        while True:
            mine = self.order(epoch).view(-1, self.world, self.micro)[:, self.rank]  # (micro-batches, micro)
            first = done * self.accum
            self.dataset.set_epoch(epoch)  # crops of longer clips depend on (seed, epoch, index)
            loader = make_loader(self.dataset, self.num_workers, self.pin, mine[first:].tolist())
            for i, batch in enumerate(loader, start=first):
                batch["train"], batch["seed"] = True, seeds.derive_seed(self.seed, "augment", epoch, self.rank, i)
                yield batch
            epoch, done = epoch + 1, 0


class EvalSet:
    """A fixed labelled set, read in order from the start of each clip, split across ranks."""

    def __init__(self, dataset: AudioDataset, batch_size: int, world: int, rank: int, num_workers: int = 0,
                 pin_memory: bool = False):
        idx = list(range(rank, len(dataset), world))
        self.batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
        self.dataset, self.num_workers, self.pin = _Indexed(dataset), num_workers, pin_memory

    def __iter__(self):
        return iter(make_loader(self.dataset, self.num_workers, self.pin, self.batches))


class DeviceFeatures:
    """A batch -> normalized model input (B, frames, mel bins) on the training device.

    Training batches (``batch["train"]``) are augmented when ``augment`` is active, with a
    generator seeded by ``batch["seed"]``; mixup replaces ``batch["target"]`` by the mixed one.
    """

    def __init__(self, config: FeatureConfig, device: torch.device, dtype: torch.dtype = torch.float32,
                 augment: AugmentConfig | None = None):
        self.config, self.device, self.dtype = config, device, dtype
        self.augment = augment or AugmentConfig()
        self.extractor = FeatureExtractor(config)
        # A clip shorter than one analysis window would stop the batch; its zero padding is used
        # as audio instead (such clips are a few milliseconds long and rare).
        self.min_length = frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)[0]

    def __call__(self, batch: dict) -> torch.Tensor:
        if "fbank" in batch:  # shards of precomputed features: (B, T, F) float16, unnormalized
            if batch.get("train") is True and self.augment.active:
                raise ValueError("augmentation (mixup, SpecAugment, noise) needs waveforms; these shards hold "
                                 "precomputed fbank (write them with --format flac or pcm16)")
            fb = batch["fbank"].to(self.device, non_blocking=True).float()
            return self.extractor.normalize(fb).to(self.dtype)  # (B, T, F)
        wave = batch["wave"].to(self.device, non_blocking=True)  # (B, S)
        if wave.dtype == torch.int16:  # 16-bit samples as the shards store them
            wave = wave.float().mul_(PCM16_SCALE)
        # (B,) counts, clamped and checked on the host (the batch's), then copied to the device
        lengths = batch["length"].clamp(min=self.min_length, max=wave.shape[-1])
        if batch.get("train") is True and self.augment.active:
            g = torch.Generator().manual_seed(batch["seed"])
            feats, target = augment_batch(wave, batch["target"].to(self.device), self.extractor, self.augment, g,
                                          lengths=lengths)
            batch["target"] = target  # mixed by mixup
        else:
            feats = self.extractor(wave, lengths=lengths)
        return feats.to(self.dtype)  # (B, T, F)

    def dummy(self, batch_size: int) -> torch.Tensor:
        """An all-zero input, for a rank that has run out of evaluation clips while others have not."""
        c = self.config
        return torch.zeros(batch_size, c.target_length, c.num_mel_bins, device=self.device, dtype=self.dtype)

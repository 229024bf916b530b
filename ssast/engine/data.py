"""Batches for the training loop: a resumable training stream, a fixed validation set, features.

Training reads the sources with :func:`ssast.shards.shard_pipeline` in its endless, resampled
mode, so every rank takes the same number of steps whatever the shard sizes. The stream is
cut into *data epochs* of ``epoch_steps`` optimizer steps (the checkpoint interval): epoch ``e``
is a fresh pipeline seeded with ``(seed, e)``, whose shard draws, shuffle buffer and crops
depend only on ``(seed, e, rank, DataLoader worker)``. The data position of a run is therefore
just its step: a run resumed at step ``s`` rebuilds epoch ``s // epoch_steps`` and skips the
micro-batches of its first ``s % epoch_steps`` steps (none when the checkpoint was written at
an epoch boundary, which is where periodic checkpoints fall), and reads exactly what the
uninterrupted run read, as long as the world size and ``num_workers`` are the same.

Validation reads its source once per validation, in order, without shuffling and from the
start of each clip, split across ranks: a fixed set. Features are computed on the training
device from the waveforms and their true lengths.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch

from ..datasets import SkipCounter, frames_to_samples
from ..features import FeatureConfig, FeatureExtractor, frame_geometry
from ..shards import shard_pipeline
from .config import DataSettings

log = logging.getLogger(__name__)


def _loader(pipeline, num_workers: int, pin: bool) -> torch.utils.data.DataLoader:
    # The pipeline batches; the DataLoader only runs it in workers (and round-robins over them
    # in a fixed order, which keeps the stream deterministic).
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin,
                                       persistent_workers=False, prefetch_factor=4 if num_workers else None)


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
        p = shard_pipeline(self.sources, sample_rate=self.features.sample_rate, num_samples=self.num_samples,
                           batch_size=self.micro_batch, train=True, shuffle_buffer=self.data.shuffle_buffer,
                           resampled=True, epoch_length=self.epoch_steps * self.accumulation, seed=self.seed,
                           skipped=self.skipped)
        p.set_epoch(epoch)
        return p

    def batches(self, step: int) -> Iterator[dict]:
        """The micro-batches of step ``step`` onwards (skipping those of the epoch's earlier steps)."""
        epoch, done = divmod(step, self.epoch_steps)
        skip = done * self.accumulation
        if skip:
            log.info("data: restarting epoch %d and skipping its first %d micro-batches", epoch, skip)
        while True:
            it = iter(_loader(self.pipeline(epoch), self.num_workers, self.pin_memory))
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
                                       seed=0, skipped=self.skipped)
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __iter__(self) -> Iterator[dict]:
        return iter(_loader(self.pipeline, self.num_workers, self.pin_memory))


class Features:
    """A batch of waveforms -> normalized model input (B, frames, mel bins) on the training device."""

    def __init__(self, config: FeatureConfig, device: torch.device, dtype: torch.dtype = torch.float32):
        self.config, self.device, self.dtype = config, device, dtype
        self.extractor = FeatureExtractor(config)
        # A clip shorter than one analysis window would stop the batch; its zero padding is used
        # as audio instead (such clips are a few milliseconds long and rare).
        self.min_length = frame_geometry(config.sample_rate, config.frame_length_ms, config.frame_shift_ms)[0]

    def __call__(self, batch: dict) -> torch.Tensor:
        wave = batch["wave"].to(self.device, non_blocking=True)  # (B, S)
        lengths = batch["length"].to(self.device).clamp(min=self.min_length, max=wave.shape[-1])  # (B,)
        return self.extractor(wave, lengths=lengths).to(self.dtype)  # (B, T, F)

    def dummy(self, batch_size: int) -> torch.Tensor:
        """An all-zero input, for a rank that has run out of validation clips while others have not."""
        c = self.config
        return torch.zeros(batch_size, c.target_length, c.num_mel_bins, device=self.device, dtype=self.dtype)

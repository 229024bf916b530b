"""Data-preparation recipes: raw datasets in, official-style JSON datafiles and label CSVs out.

Each recipe is a function returning a :class:`Prepared` and a ``ssast prep NAME`` subcommand:

- :func:`prepare_esc50`: ESC-50, resampled to 16 kHz, 5 folds;
- :func:`prepare_speechcommands`: Speech Commands V2-35, train/valid/test from the official lists;
- :func:`prepare_librispeech`: Librispeech subsets, unlabeled, for pretraining;
- :func:`prepare_audioset`: AudioSet from the user's audio and the official segment CSVs;
- :func:`prepare_fsd50k`: FSD50K, train/valid/eval;
- :func:`write_mixture`: a weighted pretraining mixture of sources (AudioSet with Librispeech).

:func:`synth_speech` generates a Speech-Commands-like keyword set with espeak-ng, and
:func:`safe_extract` unpacks zip and tar archives without writing outside the target folder.
"""
from .audioset import prepare_audioset
from .common import Prepared, PrepError
from .esc50 import prepare_esc50
from .extract import ArchiveError, safe_extract
from .fsd50k import prepare_fsd50k
from .librispeech import prepare_librispeech
from .mix import write_mixture
from .speechcommands import prepare_speechcommands, which_set
from .synth import synth_speech

__all__ = ["ArchiveError", "Prepared", "PrepError", "prepare_audioset", "prepare_esc50", "prepare_fsd50k",
           "prepare_librispeech", "prepare_speechcommands", "safe_extract", "synth_speech", "which_set",
           "write_mixture"]

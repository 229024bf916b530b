"""Librispeech as unlabeled speech for pretraining (SSAST pretrains on AudioSet + Librispeech 960 h).

The OpenSLR archives unpack to ``LibriSpeech/<subset>/<speaker>/<chapter>/*.flac`` (16 kHz, so
nothing is resampled). The recipe writes one datafile per subset, ``librispeech_<subset>.json``,
and ``librispeech_data.json`` with all the subsets asked for; every entry has empty labels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .common import Prepared, PrepError, default_cache, download, ensure_extracted, find_dir, write_datafile

LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
LIBRISPEECH_SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500",
                       "dev-clean", "dev-other", "test-clean", "test-other")
TRAIN_960H = ("train-clean-100", "train-clean-360", "train-other-500")


def prepare_librispeech(out: str | os.PathLike, *, subsets: Sequence[str] = TRAIN_960H,
                        root: str | os.PathLike | None = None, archives: Sequence[str | os.PathLike] = (),
                        cache: str | os.PathLike | None = None, url: str = LIBRISPEECH_URL) -> Prepared:
    """Prepare the Librispeech ``subsets`` in ``out``.

    The tree comes from ``root`` (a folder holding ``LibriSpeech/`` or ``LibriSpeech`` itself),
    else from ``out/LibriSpeech``; subsets missing there are extracted from ``archives`` or
    downloaded from ``url`` (``{subset}`` replaced) into ``cache`` (default ``out/downloads``).
    """
    unknown = [s for s in subsets if s not in LIBRISPEECH_SUBSETS]
    if unknown:
        raise PrepError(f"unknown Librispeech subset(s) {', '.join(unknown)}: "
                        f"choose from {', '.join(LIBRISPEECH_SUBSETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if root is not None:
        base = find_dir(Path(root), "LibriSpeech")
        if base is None:
            raise PrepError(f"{root}: no LibriSpeech folder")
    else:
        for a in archives:
            ensure_extracted(out, Path(a).name, lambda a=a: Path(a), present=False, given=True)
        base = out / "LibriSpeech"
        for s in subsets:
            local = Path(cache or default_cache(out)) / f"{s}.tar.gz"
            ensure_extracted(out, local.name, lambda s=s, local=local: download(url.format(subset=s), local),
                             present=(base / s).is_dir())
    missing = [s for s in subsets if not (base / s).is_dir()]
    if missing:
        raise PrepError(f"{base}: subset folder(s) {', '.join(missing)} not found")

    result = Prepared("librispeech", out)
    everything = []
    for s in subsets:
        files = sorted((base / s).glob("*/*/*.flac"))
        if not files:
            result.problems.append((str(base / s), "no .flac files under <speaker>/<chapter>/"))
        path = out / f"librispeech_{s}.json"
        result.counts[s] = write_datafile(path, [(f, ()) for f in files])
        result.datafiles[s] = path
        everything += files
    path = out / "librispeech_data.json"
    result.counts["all"] = write_datafile(path, [(f, ()) for f in everything])
    result.datafiles["all"] = path
    return result

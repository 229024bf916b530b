"""``ssast prep NAME ...`` (data-preparation recipes) and ``ssast synth-speech OUTDIR``."""
from __future__ import annotations

import argparse
import sys

RESAMPLERS = ("auto", "sox", "torchaudio")


def _report(prepared) -> int:
    print(prepared.summary())
    return 0


def _esc50(a) -> int:
    from ..prep import prepare_esc50

    return _report(prepare_esc50(a.out, root=a.root, archive=a.archive, cache=a.cache, resampler=a.resampler,
                                 workers=a.workers))


def _speechcommands(a) -> int:
    from ..prep import prepare_speechcommands

    return _report(prepare_speechcommands(a.out, root=a.root, archive=a.archive, cache=a.cache))


def _librispeech(a) -> int:
    from ..prep import prepare_librispeech

    return _report(prepare_librispeech(a.out, subsets=a.subsets, root=a.root, archives=a.archive or (),
                                       cache=a.cache))


def _audioset(a) -> int:
    from ..prep import prepare_audioset

    return _report(prepare_audioset(a.out, a.audio, splits=a.splits, csv_dir=a.csv_dir, label_csv=a.label_csv,
                                    cache=a.cache, check_audio=a.check_audio, resample=a.resample,
                                    resampler=a.resampler, workers=a.workers))


def _fsd50k(a) -> int:
    from ..prep import prepare_fsd50k

    return _report(prepare_fsd50k(a.out, root=a.root, cache=a.cache, resample=a.resample, resampler=a.resampler,
                                  workers=a.workers))


def _pairs(values, what: str, convert=str) -> dict:
    out = {}
    for v in values or ():
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{what} {v!r}: expected NAME={'WEIGHT' if convert is float else 'PATH'}")
        try:
            out[name] = convert(rest)
        except ValueError:
            raise ValueError(f"{what} {v!r}: {rest!r} is not a number") from None
    return out


def _mix(a) -> int:
    from ..prep import write_mixture

    sources = _pairs(a.source, "--source")
    mixture = write_mixture(a.out, sources, weights=_pairs(a.weight, "--weight", float), by=a.by)
    print(f"wrote {a.out}")
    for s in mixture["sources"]:
        print(f"  {s['name']:<14} weight {s['weight']:.4f}  {s['shards']}")
    return 0


def _extract(a) -> int:
    from ..prep import safe_extract

    n = safe_extract(a.archive, a.dest)
    print(f"extracted {n} members of {a.archive} into {a.dest}")
    return 0


def _synth(a) -> int:
    from ..prep.speechcommands import SPEECHCOMMANDS_V2_WORDS
    from ..prep.synth import synth_speech

    words = SPEECHCOMMANDS_V2_WORDS if a.all_words else a.words
    result = synth_speech(a.outdir, words=words, per_word=a.per_word, repeats=a.repeats, seed=a.seed,
                          workers=a.workers, snr_db=tuple(a.snr), noise_prob=a.noise_prob, silence_clips=a.silence,
                          unknown_clips=a.unknown, unlabeled_clips=a.unlabeled)
    print(result.summary())
    print(f"next: ssast prep speechcommands OUT --root {a.outdir}")
    return 0


def _run(func):
    """Run a recipe, printing its errors (named file, problem) instead of a traceback."""
    def run(args) -> int:
        from ..prep import ArchiveError, PrepError
        from ..sources import SourceError

        try:
            return func(args)
        except (ArchiveError, PrepError, SourceError) as e:
            name = f"ssast {args.command}" + (f" {args.recipe}" if getattr(args, "recipe", None) else "")
            print(f"{name}: error: {e}", file=sys.stderr)
            return 2
    return run


def _common(p: argparse.ArgumentParser, root_help: str, archive: bool = True, resample: bool = False) -> None:
    p.add_argument("out", help="output folder (datafiles, label CSV, extracted and resampled audio)")
    p.add_argument("--root", help=root_help)
    if archive:
        p.add_argument("--archive", help="the dataset archive, already downloaded (skips the download)")
    p.add_argument("--cache", help="folder for downloads (default: OUT/downloads)")
    if resample:
        p.add_argument("--resampler", choices=RESAMPLERS, default="auto",
                       help="auto: sox when installed, as the official recipes do; else torchaudio")
        p.add_argument("--num-workers", "--workers", dest="workers", type=int, default=2,
                       help="parallel resampling jobs (default 2)")


def register(subparsers) -> None:
    from ..prep.audioset import AUDIOSET_SPLITS
    from ..prep.librispeech import LIBRISPEECH_SUBSETS, TRAIN_960H
    from ..prep.synth import DEFAULT_WORDS

    p = subparsers.add_parser("prep", help="prepare a dataset: datafiles and label CSV (ESC-50, Speech Commands, "
                                           "Librispeech, AudioSet, FSD50K, pretraining mixture)",
                              description="Data-preparation recipes; see prep_data/README.md.")
    sub = p.add_subparsers(dest="recipe", required=True, metavar="NAME")

    r = sub.add_parser("esc50", help="ESC-50: download, resample to 16 kHz, 5 folds")
    _common(r, "an extracted ESC-50-master folder (or its parent)", resample=True)
    r.set_defaults(func=_run(_esc50))

    r = sub.add_parser("speechcommands", help="Speech Commands V2-35: train/valid/test from the official lists")
    _common(r, "an extracted Speech Commands tree (word folders, validation_list.txt, testing_list.txt), "
               "e.g. the output of ssast synth-speech")
    r.set_defaults(func=_run(_speechcommands))

    r = sub.add_parser("librispeech", help="Librispeech subsets as unlabeled pretraining data")
    _common(r, "a folder holding LibriSpeech/ (or LibriSpeech itself)", archive=False)
    r.add_argument("--subsets", nargs="+", choices=LIBRISPEECH_SUBSETS, default=list(TRAIN_960H),
                   help="default: the 960 h of training data")
    r.add_argument("--archive", action="append", help="a subset's .tar.gz, already downloaded (repeatable)")
    r.set_defaults(func=_run(_librispeech))

    r = sub.add_parser("audioset", help="AudioSet from your audio files and the official segment CSVs")
    r.add_argument("out", help="output folder (datafiles, label CSV, reports of missing segments)")
    r.add_argument("--audio", nargs="+", required=True,
                   help="folder(s) of your AudioSet audio, files named by YouTube id")
    r.add_argument("--splits", nargs="+", choices=tuple(AUDIOSET_SPLITS), default=list(AUDIOSET_SPLITS))
    r.add_argument("--csv-dir", help="folder with the official segment CSVs and class_labels_indices.csv "
                                     "(default: download them)")
    r.add_argument("--label-csv", help="the official class_labels_indices.csv")
    r.add_argument("--cache", help="folder for downloads (default: OUT/downloads)")
    r.add_argument("--check-audio", action=argparse.BooleanOptionalAction, default=False,
                   help="read every file's header and skip unreadable ones")
    r.add_argument("--resample", action=argparse.BooleanOptionalAction, default=False,
                   help="write 16 kHz mono copies into OUT/audio_16k")
    r.add_argument("--resampler", choices=RESAMPLERS, default="auto")
    r.add_argument("--num-workers", "--workers", dest="workers", type=int, default=2,
                   help="parallel resampling jobs (default 2)")
    r.set_defaults(func=_run(_audioset))

    r = sub.add_parser("fsd50k", help="FSD50K: train/valid/eval, resampled to 16 kHz")
    _common(r, "a folder holding FSD50K.dev_audio, FSD50K.eval_audio and FSD50K.ground_truth", archive=False,
            resample=True)
    r.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True,
                   help="write 16 kHz copies into OUT/audio_16k (default: yes)")
    r.set_defaults(func=_run(_fsd50k))

    r = sub.add_parser("mix", help="a weighted pretraining mixture of sources (AudioSet with Librispeech)")
    r.add_argument("out", help="the mixture JSON to write")
    r.add_argument("--source", action="append", required=True, metavar="NAME=PATH",
                   help="a JSON datafile or a shard pattern, e.g. audioset=as/full_train_data.json (repeatable)")
    r.add_argument("--weight", action="append", metavar="NAME=WEIGHT", help="override a source's weight")
    r.add_argument("--by", choices=("clips", "hours"), default="clips",
                   help="default weights proportional to clips (the official concatenation) or hours")
    r.set_defaults(func=_run(_mix))

    r = sub.add_parser("extract", help="extract a zip or tar archive, refusing members that escape DEST")
    r.add_argument("archive")
    r.add_argument("dest")
    r.set_defaults(func=_run(_extract))

    s = subparsers.add_parser("synth-speech", help="generate a Speech-Commands-like keyword set with espeak-ng",
                              description="Generate a keyword dataset laid out like Speech Commands V2.")
    s.add_argument("outdir", help="new or empty folder")
    s.add_argument("--words", nargs="+", default=list(DEFAULT_WORDS), help="default: the 10 command words")
    s.add_argument("--all-words", action="store_true", help="the 35 words of Speech Commands V2")
    s.add_argument("--per-word", type=int, default=40, help="clips per word (default 40)")
    s.add_argument("--repeats", type=int, default=2, help="clips per speaker and word (default 2)")
    s.add_argument("--silence", type=int, default=0, metavar="N",
                   help="N clips of background noise alone, class _silence_ (default 0)")
    s.add_argument("--unknown", type=int, default=0, metavar="N",
                   help="N clips of other words by the same speakers, class _unknown_ (default 0)")
    s.add_argument("--unlabeled", type=int, default=0, metavar="N",
                   help="N clips of unlabeled audio for pretraining in OUTDIR/_unlabeled_: other words, sentences "
                        "and other voices, and noises (default 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-workers", "--workers", dest="workers", type=int, default=2,
                   help="parallel espeak-ng jobs (default 2)")
    s.add_argument("--snr", type=float, nargs=2, default=(5.0, 30.0), metavar=("MIN", "MAX"),
                   help="background-noise SNR range in dB (default 5 30)")
    s.add_argument("--noise-prob", type=float, default=0.8, help="fraction of clips with background noise")
    s.set_defaults(func=_run(_synth))

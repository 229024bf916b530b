"""A built-in keyword dataset, generated with espeak-ng, laid out exactly like Speech Commands V2.

For CPU runs, CI and the README demo: a handful of command words spoken by many synthetic
speakers. A speaker is one espeak-ng voice (an English accent with a voice variant such as
``en-us+m3`` or ``en-gb-scotland+f2``) at one base pitch and speaking rate; its id is 8 hex digits
of the SHA-1 of that setting. Each speaker says each word up to ``repeats`` times, each time with
a little jitter in rate and pitch, placed at a random offset in a one-second clip, at a random
level, with background noise at a random SNR. Clips are 16 kHz mono 16-bit wavs named
``<speaker>_nohash_<n>.wav`` in one folder per word; ``validation_list.txt`` and
``testing_list.txt`` assign whole speakers by the official Speech Commands hashing rule
(:func:`ssast.prep.speechcommands.which_set`); ``_background_noise_/`` holds longer generated
noises. So :func:`ssast.prep.speechcommands.prepare_speechcommands` ingests the tree unchanged.

As in real keyword spotting, two optional classes make a detector usable on a recording:
``_silence_/`` (background noise alone, at any level, no word) and ``_unknown_/`` (words that are
not keywords, said by the same speakers). And as in real corpora, labels are scarce and audio is
not: ``_unlabeled_/`` is a pool of clips for self-supervised pretraining (other words, short
sentences and the keywords said by voices outside the labelled speakers, and noises alone),
one to four seconds long, named ``pool_<n>.wav``; the recipe leaves it out of the datafiles.

The output depends only on the arguments and the installed espeak-ng (its version and voices).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .common import PrepError
from .speechcommands import (
    BACKGROUND_NOISE,
    SILENCE,
    SPEECHCOMMANDS_V2_WORDS,
    TESTING_LIST,
    UNKNOWN,
    UNLABELED,
    VALIDATION_LIST,
    which_set,
)

SAMPLE_RATE = 16000
DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# English voices of espeak-ng (accents) and its voice variants (timbre); those missing from the
# installed espeak-ng are left out.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak", "grandma", "grandpa", "Andy", "Annie", "max", "steph")
PITCH_RANGE = (25, 75)   # espeak-ng -p, 0..99 (default 50)
RATE_RANGE = (130, 210)  # espeak-ng -s, words per minute (default 175)
NOISES = ("white_noise", "pink_noise", "brown_noise", "running_tap", "hum")
# Non-keywords: the unknown class and the unlabeled pool draw from these (less the keywords).
OTHER_WORDS = SPEECHCOMMANDS_V2_WORDS + (
    "apple", "water", "window", "morning", "yellow", "garden", "table", "music", "paper", "river", "coffee",
    "number", "people", "little", "open", "close", "start", "again", "maybe", "later", "never", "always",
    "today", "night", "green", "black", "white", "seven", "hello", "thanks", "please", "sorry", "money",
    "phone", "doctor", "window", "summer", "winter", "light", "sound", "voice", "yesterday", "hundred")
POOL_SECONDS = (1.0, 4.0)


class EspeakNotFound(PrepError):
    pass


def espeak_binary() -> str:
    """The espeak-ng executable; a clear error when it is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakNotFound("espeak-ng is not installed: the generated speech dataset needs it "
                             "(apt-get install espeak-ng)")
    return exe


@dataclass(frozen=True)
class Speaker:
    voice: str  # e.g. "en-us+m3"
    pitch: int
    rate: int

    @property
    def id(self) -> str:
        return hashlib.sha1(f"{self.voice}|{self.pitch}|{self.rate}".encode()).hexdigest()[:8]


def available_voices(exe: str | None = None) -> tuple[list[str], list[str]]:
    """(accents, variants) of :data:`ACCENTS` and :data:`VARIANTS` the installed espeak-ng has."""
    exe = exe or espeak_binary()

    def listing(arg):
        r = subprocess.run([exe, arg], capture_output=True, text=True)
        return [ln.split() for ln in r.stdout.splitlines()[1:] if ln.split()]

    langs = {row[1] for row in listing("--voices=en") if len(row) > 1}
    files = {row[4].rsplit("/", 1)[-1] for row in listing("--voices=variant") if len(row) > 4}
    accents = [a for a in ACCENTS if a in langs]
    variants = [v for v in VARIANTS if v in files]
    if not accents:
        raise PrepError(f"{exe}: none of the English voices {', '.join(ACCENTS)} is installed")
    return accents, variants or [""]


def choose_speakers(n: int, rng: np.random.Generator, accents: Sequence[str], variants: Sequence[str],
                    valid_percent: float = 10.0, test_percent: float = 10.0) -> list[Speaker]:
    """``n`` distinct speakers, about ``valid_percent``/``test_percent`` of them (at least one
    each) falling in validation/testing by the official hashing rule."""
    if n < 3:
        raise PrepError(f"{n} speaker(s): at least 3 are needed (one each for train, valid and test); "
                        "raise --per-word or lower --repeats")
    quota = {"validation": max(1, round(n * valid_percent / 100)), "testing": max(1, round(n * test_percent / 100))}
    quota["training"] = n - quota["validation"] - quota["testing"]
    chosen: list[Speaker] = []
    seen = set()
    for _ in range(200 * n + 10000):
        variant = variants[rng.integers(len(variants))]
        voice = accents[rng.integers(len(accents))] + (f"+{variant}" if variant else "")
        s = Speaker(voice, int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                    int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)))
        split = which_set(f"{s.id}_nohash_0.wav", valid_percent, test_percent)
        if s.id in seen or quota[split] == 0:
            continue
        seen.add(s.id)
        quota[split] -= 1
        chosen.append(s)
        if len(chosen) == n:
            return chosen
    raise PrepError(f"could not draw {n} distinct speakers from the installed voices")


def speak(exe: str, text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of ``text``: (float32 samples, sample rate)."""
    cmd = [exe, "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", text]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0 or not r.stdout:
        raise PrepError(f"espeak-ng failed for {text!r} with voice {voice}: "
                        f"{r.stderr.decode(errors='replace').strip()}")
    data, sr = sf.read(io.BytesIO(r.stdout), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, slope: float, band=(0.0, None)) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**slope, limited to ``band`` (Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    gain = np.zeros_like(f)
    gain[1:] = f[1:] ** (-slope / 2)
    gain[(f < band[0]) | (f > (band[1] or sr))] = 0
    x = np.fft.irfft(spec * gain, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def make_noise(kind: str, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A background noise of unit RMS: white, pink, brown, running tap (band-limited, fluttering)
    or mains hum (50 Hz and harmonics over faint pink noise)."""
    n = int(seconds * sr)
    if kind == "white_noise":
        x = rng.standard_normal(n)
    elif kind == "pink_noise":
        x = _shaped_noise(rng, n, sr, 1.0)
    elif kind == "brown_noise":
        x = _shaped_noise(rng, n, sr, 2.0, band=(20.0, None))
    elif kind == "running_tap":
        flutter = 1 + 0.5 * _shaped_noise(rng, n, sr, 0.0, band=(2.0, 12.0))
        x = _shaped_noise(rng, n, sr, 0.5, band=(400.0, 6000.0)) * np.clip(flutter, 0.1, None)
    elif kind == "hum":
        t = np.arange(n) / sr
        x = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
        x = x / np.sqrt(np.mean(x ** 2)) + 0.2 * _shaped_noise(rng, n, sr, 1.0)
    else:
        raise ValueError(f"unknown noise {kind!r}: expected one of {', '.join(NOISES)}")
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def _trim(x: np.ndarray, sr: int, rel_threshold: float = 0.02, margin_s: float = 0.02) -> np.ndarray:
    """Cut the leading and trailing silence espeak-ng leaves, keeping a short margin."""
    loud = np.flatnonzero(np.abs(x) > rel_threshold * (np.abs(x).max() + 1e-12))
    if loud.size == 0:
        return x
    m = int(margin_s * sr)
    return x[max(0, loud[0] - m): loud[-1] + m + 1]


@dataclass
class SynthResult:
    out: Path
    words: list[str]
    speakers: list[Speaker]
    split_of: dict[str, str]  # speaker id -> "training" / "validation" / "testing"
    clips: dict[str, int] = field(default_factory=dict)  # split -> labelled clip count
    classes: dict[str, int] = field(default_factory=dict)  # class folder -> clip count
    unlabeled: int = 0  # clips in the unlabeled pool

    def summary(self) -> str:
        n_spk = {s: sum(1 for v in self.split_of.values() if v == s) for s in ("training", "validation", "testing")}
        extra = [f"{self.classes[c]} {c}" for c in (SILENCE, UNKNOWN) if self.classes.get(c)]
        return (f"wrote {sum(self.clips.values())} clips of {len(self.words)} words"
                + (f" ({', '.join(extra)})" if extra else "") + f" by {len(self.speakers)} speakers to {self.out}"
                + (f", and {self.unlabeled} unlabeled clips in {self.out / UNLABELED}" if self.unlabeled else "")
                + "\n" + "\n".join(f"  {s:<10} {n_spk[s]:>4} speakers {self.clips.get(s, 0):>6} clips"
                                    for s in ("training", "validation", "testing")))


def synth_speech(out: str | os.PathLike, words: Sequence[str] = DEFAULT_WORDS, per_word: int = 40,
                 repeats: int = 2, seed: int = 0, workers: int = 2, snr_db: tuple[float, float] = (5.0, 30.0),
                 noise_prob: float = 0.8, noise_seconds: float = 15.0, silence_clips: int = 0,
                 unknown_clips: int = 0, unlabeled_clips: int = 0) -> SynthResult:
    """Generate the keyword dataset in ``out`` (which must be new or empty).

    ``per_word`` clips per word from ``ceil(per_word / repeats)`` speakers; ``noise_prob`` of
    the clips get background noise at an SNR drawn uniformly from ``snr_db``. Optionally
    ``silence_clips`` clips of ``_silence_``, ``unknown_clips`` of ``_unknown_`` (other words by
    the same speakers) and an unlabeled pool of ``unlabeled_clips`` clips in ``_unlabeled_/``.
    """
    exe = espeak_binary()
    words = [w.strip().lower() for w in words if w.strip()]
    if len(set(words)) != len(words) or not words:
        raise PrepError(f"words must be distinct and non-empty: {words}")
    if bad := [w for w in words if not w.replace("-", "").replace("'", "").isalpha()]:
        raise PrepError(f"words must be letters only (they name folders): {', '.join(bad)}")
    if per_word < 1 or repeats < 1:
        raise PrepError("--per-word and --repeats must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PrepError(f"{out}: folder is not empty; choose a new folder or remove it")

    if min(silence_clips, unknown_clips, unlabeled_clips) < 0:
        raise PrepError("--silence, --unknown and --unlabeled must be 0 or more")
    rng = np.random.default_rng(seed)
    accents, variants = available_voices(exe)
    speakers = choose_speakers(math.ceil(per_word / repeats), rng, accents, variants)
    split_of = {s.id: which_set(f"{s.id}_nohash_0.wav") for s in speakers}
    result = SynthResult(out, words, speakers, split_of)

    noise_dir = out / BACKGROUND_NOISE
    noise_dir.mkdir(parents=True)
    bank = {}
    for i, kind in enumerate(NOISES):
        bank[kind] = make_noise(kind, noise_seconds, np.random.default_rng([seed, 1_000_003, i]))
        sf.write(str(noise_dir / f"{kind}.wav"), 0.1 * bank[kind], SAMPLE_RATE, subtype="PCM_16")
    (noise_dir / "README.md").write_text(
        "Generated background noises (16 kHz, 16-bit), mixed into the clips at random SNRs:\n"
        + "".join(f"- {k}.wav\n" for k in NOISES), encoding="utf-8")
    # espeak-ng renders at its own rate (22050 Hz); one resampler, built once, serves all clips.
    _, espeak_sr = speak(exe, words[0], speakers[0].voice, speakers[0].pitch, speakers[0].rate)
    resample = torchaudio.transforms.Resample(espeak_sr, SAMPLE_RATE) if espeak_sr != SAMPLE_RATE else None

    def say(text: str, speaker: Speaker, r: np.random.Generator, jitter: bool, seconds: float | None = 1.0):
        """``text`` by ``speaker`` (a little off their usual pitch and rate when ``jitter``) at a random
        offset and level in a clip of ``seconds`` (None: the speech's own length plus a margin, within
        :data:`POOL_SECONDS`), with background noise at a random SNR and a recording's noise floor."""
        pitch = int(np.clip(speaker.pitch + (r.integers(-4, 5) if jitter else 0), 0, 99))
        rate = int(speaker.rate + (r.integers(-12, 13) if jitter else 0))
        x, sr = speak(exe, text, speaker.voice, pitch, rate)
        if sr != espeak_sr:
            raise PrepError(f"espeak-ng changed its sample rate ({espeak_sr} -> {sr} Hz) for voice {speaker.voice}")
        if resample is not None:
            with torch.no_grad():
                x = resample(torch.from_numpy(x)).numpy()
        if seconds is None:
            seconds = float(np.clip(len(x) / SAMPLE_RATE + r.uniform(0.1, 0.6), *POOL_SECONDS))
        n = int(seconds * SAMPLE_RATE)
        x = _trim(x, SAMPLE_RATE)[:n]
        x = x * (r.uniform(0.25, 0.9) / (np.abs(x).max() + 1e-12))
        clip = np.zeros(n, dtype=np.float64)
        offset = int(r.integers(0, n - len(x) + 1))
        clip[offset: offset + len(x)] = x
        if r.random() < noise_prob:
            speech_rms = np.sqrt(np.mean(x ** 2)) + 1e-12
            clip += background(r, n) * (speech_rms / 10 ** (r.uniform(*snr_db) / 20))
        return finish(clip, r)

    def background(r: np.random.Generator, n: int) -> np.ndarray:
        noise = bank[NOISES[r.integers(len(NOISES))]]
        start = int(r.integers(0, len(noise) - n + 1))
        return noise[start: start + n]

    def finish(clip: np.ndarray, r: np.random.Generator) -> np.ndarray:
        clip = clip + r.standard_normal(len(clip)) * 10 ** (-r.uniform(60, 75) / 20)  # a recording's noise floor
        return (clip / max(1.0, np.abs(clip).max() / 0.99)).astype(np.float32)

    def quiet(r: np.random.Generator, n: int = SAMPLE_RATE) -> np.ndarray:
        """Background noise alone at a level from faint to loud (a tenth of the clips: the floor only)."""
        level = 0.0 if r.random() < 0.1 else 10 ** (r.uniform(-50, -12) / 20)
        return finish(background(r, n).astype(np.float64) * level, r)

    def write(name: str, clip: np.ndarray) -> None:
        sf.write(str(out / name), clip, SAMPLE_RATE, subtype="PCM_16")

    def keyword(job):
        wi, word, j = job
        speaker, rep = speakers[j // repeats], j % repeats
        # Repetitions of a word by one speaker differ a little, as a person's do.
        name = f"{word}/{speaker.id}_nohash_{rep}.wav"
        write(name, say(word, speaker, np.random.default_rng([seed, wi, j]), jitter=rep > 0))
        return name, split_of[speaker.id]

    def silence(i):
        r = np.random.default_rng([seed, 2_000_003, i])
        # No speaker here: a pseudo-speaker id per clip spreads the clips over the splits by the same rule.
        name = f"{SILENCE}/{hashlib.sha1(f'silence|{seed}|{i}'.encode()).hexdigest()[:8]}_nohash_0.wav"
        write(name, quiet(r))
        return name, which_set(name)

    def unknown(i):
        r = np.random.default_rng([seed, 3_000_017, i])
        speaker = speakers[i % len(speakers)]
        name = f"{UNKNOWN}/{speaker.id}_nohash_{i // len(speakers)}.wav"
        write(name, say(others[r.integers(len(others))], speaker, r, jitter=True))
        return name, split_of[speaker.id]

    def pool(i):
        r = np.random.default_rng([seed, 4_000_037, i])
        kind = r.random()
        if kind < 0.1:  # noise alone
            clip = quiet(r, int(r.uniform(*POOL_SECONDS) * SAMPLE_RATE))
        else:
            variant = variants[r.integers(len(variants))]
            voice = Speaker(accents[r.integers(len(accents))] + (f"+{variant}" if variant else ""),
                            int(r.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                            int(r.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)))
            vocab = others + words
            text = " ".join(vocab[k] for k in r.integers(len(vocab), size=1 if kind < 0.55 else int(r.integers(2, 7))))
            clip = say(text, voice, r, jitter=False, seconds=None)
        name = f"{UNLABELED}/pool_{i:05d}.wav"
        write(name, clip)
        return name, None

    others = [w for w in dict.fromkeys(OTHER_WORDS) if w not in words]
    for folder, wanted in [(w, True) for w in words] + [(SILENCE, silence_clips), (UNKNOWN, unknown_clips),
                                                       (UNLABELED, unlabeled_clips)]:
        if wanted:
            (out / folder).mkdir()
    jobs = [(keyword, (wi, w, j)) for wi, w in enumerate(words) for j in range(per_word)]
    jobs += [(silence, i) for i in range(silence_clips)] + [(unknown, i) for i in range(unknown_clips)]
    jobs += [(pool, i) for i in range(unlabeled_clips)]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        made = list(ex.map(lambda job: job[0](job[1]), jobs))
    result.unlabeled = sum(1 for _, s in made if s is None)
    made = [(n, s) for n, s in made if s is not None]

    for split, listfile in (("validation", VALIDATION_LIST), ("testing", TESTING_LIST)):
        names = sorted(n for n, s in made if s == split)
        (out / listfile).write_text("".join(n + "\n" for n in names), encoding="utf-8")
    for n, s in made:
        result.clips[s] = result.clips.get(s, 0) + 1
        result.classes[n.split("/")[0]] = result.classes.get(n.split("/")[0], 0) + 1
    table = "".join(f"| {s.id} | {s.voice} | {s.pitch} | {s.rate} | {split_of[s.id]} |\n" for s in speakers)
    (out / "README.md").write_text(
        "# Generated speech commands\n\n"
        f"Made by `ssast synth-speech` (seed {seed}) with espeak-ng, laid out like Speech Commands V2: "
        f"{len(words)} words x {per_word} clips, one-second 16 kHz mono 16-bit wavs, "
        f"background noise in {noise_prob:.0%} of them at {snr_db[0]:g}-{snr_db[1]:g} dB SNR"
        + (f"; {silence_clips} clips of background noise alone in {SILENCE}/" if silence_clips else "")
        + (f"; {unknown_clips} clips of other words in {UNKNOWN}/" if unknown_clips else "")
        + (f"; an unlabeled pool of {result.unlabeled} clips in {UNLABELED}/" if result.unlabeled else "")
        + ".\n\n"
        "| speaker | voice | pitch | rate (wpm) | split |\n|---|---|---|---|---|\n" + table,
        encoding="utf-8")
    return result

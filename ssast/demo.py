"""``ssast demo``: the toolkit's main job, end to end, on built-in data, in a few CPU minutes.

Every stage is the real command, run as a user would run it (so the demo is also the smoke test
of the whole path):

1. ``ssast synth-speech``: a small keyword set spoken by espeak-ng voices in noise, with a
   ``_silence_`` class, an ``_unknown_`` class of other words, and a pool of unlabeled audio;
2. ``ssast prep speechcommands``: the official-style datafiles and label CSV;
3. ``ssast shards``: webdataset shards of the training clips and of the unlabeled pool;
4. ``ssast pretrain``: masked-patch pretraining of a small frame model on the DeepSpeed engine,
   from the shards (labels unused);
5. ``ssast finetune``: a keyword classifier from the pretrained model, tested on unseen speakers;
6. ``ssast predict``: over a generated recording with keywords at known times, in sliding
   windows, with the timeline picture; the detections are scored against the known times
   (a detection is right when it has an event's label and overlaps it; precision: right
   detections / detections; recall: events found / events).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .prep.synth import make_noise
from .presets import get as preset
from .sources import read_label_csv, read_source

SAMPLE_RATE = 16000
# The path's settings: a 4-block, 192-wide frame model (128x2 patches: SSAST's choice for speech)
# on 1 s clips, pretrained on the unlabeled pool and the training clips, then fine-tuned.
MODEL = {"embed_dim": 192, "depth": 4, "num_heads": 3, "num_prefix_tokens": 2}
NORMALIZATION = preset("speechcommands")  # mean and std of the Speech Commands recipe


@dataclass
class DemoSize:
    words: tuple[str, ...] = ("yes", "no", "up", "down")
    per_word: int = 60
    silence: int = 60
    unknown: int = 60
    unlabeled: int = 400
    pretrain_steps: int = 250
    finetune_epochs: int = 40
    recording_seconds: float = 40.0
    events: int = 10


def _cli(*args: str, log: Path, threads: int = 1) -> None:
    """Run ``ssast ARGS`` in its own process (``threads`` torch threads, unless OMP_NUM_THREADS is
    set), its output appended to ``log``; raise on failure."""
    cmd = [sys.executable, "-m", "ssast.cli", *map(str, args)]
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ ssast {' '.join(map(str, args))}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"ssast {args[0]} failed (exit {p.returncode}); the end of {log}:\n{tail}")


def make_recording(clips: list[tuple[str, str]], out: Path, seconds: float, events: int,
                   seed: int = 0) -> list[dict]:
    """A recording of ``seconds`` of background noise with ``events`` clips (path, label) laid in at
    random, non-overlapping times; writes ``out`` and returns the events (label, start, end)."""
    rng = np.random.default_rng(seed)
    wave = 0.01 * make_noise("pink_noise", seconds, rng)
    slots = np.sort(rng.choice(int(seconds) - 1, size=min(events, int(seconds) - 1), replace=False))
    picks = rng.choice(len(clips), size=len(slots), replace=False)
    truth = []
    for slot, k in zip(slots, picks):
        path, label = clips[k]
        clip, _ = sf.read(path, dtype="float32")
        start = int((slot + rng.uniform(0, 0.2)) * SAMPLE_RATE)
        clip = clip[: len(wave) - start]
        wave[start:start + len(clip)] += clip
        truth.append({"label": label, "start": start / SAMPLE_RATE, "end": (start + len(clip)) / SAMPLE_RATE})
    sf.write(out, np.clip(wave, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    return truth


def score_detections(detections: list[dict], truth: list[dict], ignore: tuple[str, ...] = ()) -> dict:
    """Precision and recall of detections (label, start, end) against events (label, start, end)."""
    dets = [d for d in detections if d["label"] not in ignore]
    hit = lambda d, e: d["label"] == e["label"] and d["start"] < e["end"] and e["start"] < d["end"]  # noqa: E731
    right = sum(any(hit(d, e) for e in truth) for d in dets)
    found = sum(any(hit(d, e) for d in dets) for e in truth)
    return {"detections": len(dets), "events": len(truth), "precision": right / len(dets) if dets else 0.0,
            "recall": found / len(truth) if truth else 0.0}


def run(out: str | Path = "demo_out", size: DemoSize = DemoSize(), seed: int = 0, threads: int = 2) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    t0 = time.perf_counter()
    times = {}

    def stage(name: str, text: str):
        print(f"[{len(times) + 1}/6] {text}", flush=True)
        times[name] = time.perf_counter()

    def done(name: str) -> None:
        times[name] = time.perf_counter() - times[name]
        print(f"      {times[name]:.0f} s", flush=True)

    raw, data, shards = out / "raw", out / "data", out / "shards"
    stage("data", f"built-in speech: {len(size.words)} keywords x {size.per_word} clips, _silence_, _unknown_, "
                  f"{size.unlabeled} unlabeled clips (ssast synth-speech, prep speechcommands, shards)")
    if not (data / "speechcommand_train_data.json").exists():
        _cli("synth-speech", raw, "--words", *size.words, "--per-word", size.per_word, "--repeats", 1,
             "--silence", size.silence,
             "--unknown", size.unknown, "--unlabeled", size.unlabeled, "--seed", seed, "--num-workers", threads,
             log=log)
        _cli("prep", "speechcommands", data, "--root", raw, log=log)
        _cli("shards", data / "speechcommand_train_data.json", shards / "train", "--max-count", 256,
             "--overwrite", "--no-progress", log=log)
        _cli("shards", raw / "_unlabeled_", shards / "unlabeled", "--no-labeled", "--max-count", 256,
             "--overwrite", "--no-progress", log=log)
    done("data")

    model_json = out / "model.json"
    model_json.write_text(json.dumps(MODEL))
    frames = ["--target-length", 100, "--mean", NORMALIZATION.mean, "--std", NORMALIZATION.std]
    engine = ["--device", "cpu", "--num-workers", 1, "--no-progress", "--seed", seed]
    model_threads = max(1, threads - 1)  # one core for the data-loading process

    stage("pretrain", f"masked-patch pretraining on the engine: frame model {MODEL['depth']} blocks x "
                      f"{MODEL['embed_dim']}, {size.pretrain_steps} steps (ssast pretrain)")
    _cli("pretrain", "--train", shards / "train", shards / "unlabeled", "--valid", data / "speechcommand_valid_data.json",
         "--out", out / "pretrain", "--model-config", model_json, "--fshape", 128, "--tshape", 2, *frames,
         "--mask-patch", 30, "--max-steps", size.pretrain_steps, "--batch-size", 32, "--lr", 1e-3,
         "--warmup-steps", max(1, size.pretrain_steps // 10), "--valid-every", max(1, size.pretrain_steps // 3),
         "--save-every", size.pretrain_steps, "--log-every", max(1, size.pretrain_steps // 6), "--resume", *engine,
         log=log, threads=model_threads)
    done("pretrain")

    stage("finetune", f"keyword classifier from the pretrained model, {size.finetune_epochs} epochs (ssast finetune)")
    _cli("finetune", "--init", out / "pretrain", "--train", data / "speechcommand_train_data.json",
         "--valid", data / "speechcommand_valid_data.json", "--test", data / "speechcommand_eval_data.json",
         "--out", out / "finetune", "--fshape", 128, "--tshape", 2, "--fstride", 128, "--tstride", 2, *frames,
         "--task", "ft_avgtok", "--loss", "ce", "--epochs", size.finetune_epochs, "--batch-size", 16,
         "--lr", 1e-3, "--warmup", "--warmup-steps", 50,
         "--freqm", 24, "--timem", 20, "--noise", "--lr-scheduler", "cosine", "--resume", *engine, log=log,
         threads=model_threads)
    done("finetune")
    rows = list(csv.DictReader(open(out / "finetune" / "results.csv", newline="")))
    test = next(r for r in rows if r["split"] == "test")

    stage("recording", f"a {size.recording_seconds:g} s recording with {size.events} keywords at known times")
    name_of = dict(zip(*read_label_csv(data / "class_labels_indices.csv")))  # label id -> display name
    test_clips = [(it.path, name_of[it.labels[0]]) for it in read_source(data / "speechcommand_eval_data.json").items
                  if it.labels and name_of.get(it.labels[0]) in size.words]
    recording = out / "recording.wav"
    truth = make_recording(test_clips, recording, size.recording_seconds, size.events, seed)
    (out / "recording_events.json").write_text(json.dumps(truth, indent=1) + "\n")
    done("recording")

    stage("predict", "sliding windows over the recording, detections and timeline (ssast predict)")
    detections = out / "detections.json"
    _cli("predict", out / "finetune", recording, "--out", detections, "--window", 1.0, "--hop", 0.25,
         "--threshold", 0.5, "--plot-dir", out / "plots", "--device", "cpu", "--no-progress", log=log)
    done("predict")
    result = json.loads(detections.read_text())
    dets = result["files"][0]["detections"] if result["files"] else []
    scores = score_detections(dets, truth, ignore=("_silence_", "_unknown_"))

    minutes = (time.perf_counter() - t0) / 60
    summary = {"test_acc": float(test["acc"]), "chance": 1 / (len(size.words) + 2),
               "detection": scores, "minutes": round(minutes, 2), "stages_s": {k: round(v) for k, v in times.items()},
               "timeline": str(out / "plots" / "recording.png"), "log": str(log)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[6/6] test accuracy {summary['test_acc']:.3f} on unseen speakers ({len(size.words)} keywords, "
          f"_silence_, _unknown_; chance {summary['chance']:.2f})")
    print(f"      keyword detection in the recording: precision {scores['precision']:.2f}, recall "
          f"{scores['recall']:.2f} ({scores['detections']} detections, {scores['events']} keywords)")
    print(f"      timeline: {summary['timeline']}; every command's output: {log}; {minutes:.1f} min in all")
    return summary

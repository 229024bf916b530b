"""Real-time factor of ``ssast predict`` on a generated one-hour recording.

The recording (16 kHz mono 16-bit WAV: tone bursts, a slow chirp and noise) is written once to
a temporary folder and reused. The model has random weights with the AST geometry (16x16
patches, stride 10, 128 x 1024 input, 527 labels), tiny by default or base; the whole
``predict`` call is timed: streaming the file, features, model, detections.

    python benchmarks/predict_rtf.py                       # tiny, one hour
    python benchmarks/predict_rtf.py --size base --device cuda --bf16
    python benchmarks/predict_rtf.py --minutes 5           # a brief run

RTF = compute seconds / audio seconds (below 1: faster than real time).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ssast import ASTModel, ModelConfig, save_checkpoint
from ssast.features import FeatureConfig
from ssast.predict import Predictor, predict

SR = 16000


def make_recording(path: Path, seconds: int, seed: int = 0) -> None:
    """Tone bursts, a slow chirp and noise, written a minute at a time."""
    g = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".part")
    with sf.SoundFile(tmp, "w", SR, 1, subtype="PCM_16", format="WAV") as f:
        for m0 in range(0, seconds, 60):
            n = min(60, seconds - m0) * SR
            t = (m0 * SR + np.arange(n)) / SR
            burst = (t % 7.0) < 1.5  # a 1.5 s call every 7 s
            x = 0.05 * g.standard_normal(n)
            x += 0.3 * burst * np.sin(2 * np.pi * 1200 * t)
            x += 0.1 * np.sin(2 * np.pi * (300 + 50 * np.sin(2 * np.pi * t / 600)) * t)
            f.write(x.astype(np.float32))
    os.replace(tmp, path)


def recording(seconds: int, folder: Path) -> Path:
    path = folder / f"ssast_rtf_{seconds}s_16k.wav"
    if not path.exists() or sf.info(str(path)).frames != seconds * SR:
        print(f"writing {seconds} s of audio to {path} (once)")
        make_recording(path, seconds)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    p.add_argument("--minutes", type=float, default=60.0, help="length of the recording (default: 60)")
    p.add_argument("--hop", type=float, help="seconds between windows (default: half the 10.24 s window)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--audio-dir", default=tempfile.gettempdir(), help="where the recording is kept")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    seconds = round(args.minutes * 60)
    audio = recording(seconds, Path(args.audio_dir))
    torch.manual_seed(0)
    cfg = ModelConfig.from_size(args.size, fshape=16, tshape=16, fstride=10, tstride=10, input_fdim=128,
                                input_tdim=1024, label_dim=527, stage="finetune", default_task="ft_cls")
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "model.pt"
        save_checkpoint(ASTModel(config=cfg), ckpt, features=FeatureConfig().to_dict())
        predictor = Predictor.from_checkpoint(ckpt, device=args.device, bf16=args.bf16)

    # Warm-up on a few windows (kernel selection, allocator), not timed.
    warm = Path(tempfile.gettempdir()) / "ssast_rtf_warmup.wav"
    sf.write(warm, np.zeros(SR * 12, dtype=np.float32), SR)
    predict(predictor, [warm], batch_size=args.batch_size, progress=False)

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run = predict(predictor, [audio], hop=args.hop, batch_size=args.batch_size, progress=args.progress)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    res = run.files[0]
    print(f"predict, AST {args.size} (random weights), {args.device}{' bf16' if args.bf16 else ''}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} CPU threads")
    print(f"audio:    {res.duration:.0f} s, {len(res.starts)} windows of {run.settings['window']:g} s "
          f"every {run.settings['hop']:g} s")
    print(f"compute:  {elapsed:.1f} s ({len(res.starts) / elapsed:.1f} windows/s)")
    print(f"speed:    {res.duration / elapsed:.1f} s of audio per second of compute")
    print(f"RTF:      {elapsed / res.duration:.4f}")


if __name__ == "__main__":
    main()

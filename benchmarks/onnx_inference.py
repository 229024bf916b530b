"""CPU inference clips/s: ONNX Runtime against PyTorch, on the same model and the same batch.

A base-size fine-tuned model with random weights (16x16 patches, stride 10, 1024 frames, 527
labels, ``ft_cls``), exported with :func:`ssast.onnx.export_onnx` in both variants:

- ``spectrogram``: normalized fbank in; PyTorch runs ``model(x)`` under ``torch.inference_mode``.
- ``waveform``: 16 kHz clips in, the fbank inside the ONNX graph; PyTorch runs
  ``FeatureExtractor`` then the model.

fp32, the same number of threads for both; the two runtimes are timed in turns (median of
``--steps`` calls each, after ``--warmup``), and the largest relative difference of their logits
is reported alongside.

    python benchmarks/onnx_inference.py --size base --batch 4 --frames 1024 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from ssast import ASTModel
from ssast.features import FeatureConfig, FeatureExtractor
from ssast.onnx import export_onnx


def timed_pair(fn_a, fn_b, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of each function, the two timed in turns so that both see the same machine."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times = ([], [])
    for _ in range(steps):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--labels", type=int, default=527)
    p.add_argument("--task", default="ft_cls", choices=["ft_avgtok", "ft_cls"])
    p.add_argument("--seconds", type=float, default=10.0, help="clip length of the waveform variant (default: 10)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="threads of both runtimes (default: torch's choice)")
    p.add_argument("--variants", default="spectrogram,waveform")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    import onnxruntime as ort

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = ASTModel(label_dim=args.labels, fshape=16, tshape=16, fstride=10, tstride=10, input_tdim=args.frames,
                     model_size=args.size, pretrain_stage=False).eval()
    model.config.default_task = args.task
    features = FeatureConfig(target_length=args.frames)
    extractor = FeatureExtractor(features)
    g = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(args.batch, int(args.seconds * features.sample_rate), generator=g)).clamp(-1, 1)
    spec = extractor(wave)  # (B, frames, 128)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ONNX Runtime's pool spins after each run by default, which would steal the cores from the
    # PyTorch call timed next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

    print(f"onnx inference, {args.size}, {args.task}, batch {args.batch}, {args.frames} frames, stride 10 "
          f"({model.config.num_patches} patches), fp32; {threads} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}")
    print(f"  before: {load()}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for variant in args.variants.split(","):
            with_features = variant == "waveform"
            t0 = time.perf_counter()
            path = export_onnx(model, os.path.join(d, f"{variant}.onnx"), features=features,
                               with_features=with_features)
            export_s = time.perf_counter() - t0
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            name, x = ("waveform", wave) if with_features else ("spectrogram", spec)
            feed = {name: x.numpy()}

            def run_torch():
                with torch.inference_mode():
                    return model(extractor(x) if with_features else x)

            def run_ort():
                return sess.run(None, feed)[0]

            ref, got = run_torch(), torch.from_numpy(run_ort())
            err = ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
            t_torch, t_ort = timed_pair(run_torch, run_ort, args.steps, args.warmup)
            row = {"variant": variant, "size": args.size, "task": args.task, "batch": args.batch,
                   "frames": args.frames, "threads": threads, "export_s": export_s,
                   "pytorch_s": t_torch, "onnxruntime_s": t_ort,
                   "pytorch_clips_per_s": args.batch / t_torch, "onnxruntime_clips_per_s": args.batch / t_ort,
                   "speedup": t_torch / t_ort, "max_rel_diff": err,
                   "file_mb": os.path.getsize(path) / 1e6, "loadavg": os.getloadavg()}
            if with_features:
                row["seconds"] = args.seconds
            rows.append(row)
            print(f"  {variant:<11}: pytorch {row['pytorch_clips_per_s']:6.2f} clips/s   onnxruntime "
                  f"{row['onnxruntime_clips_per_s']:6.2f} clips/s   ratio {row['speedup']:.2f}x   "
                  f"logits rel. diff {err:.1e}   (export {export_s:.0f} s, {row['file_mb']:.0f} MB)")
    print(f"  after:  {load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

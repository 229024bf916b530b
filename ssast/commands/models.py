"""``ssast models``: the released SSAST and AST models, which of them are in the cache, downloads.

- ``ssast models``: one line per release (size, parameters, patch, strides, frames, labels,
  whether the file is in the cache) and where the cache is.
- ``ssast models NAME...``: everything known about those releases (URL, hub id, normalization).
- ``ssast models NAME... --download``: fetch them into the cache, verified.
"""
from __future__ import annotations

import argparse
import os

from .. import registry
from ..download import CACHE_ENV, MIRROR_ENV, cache_dir, mirror_url


def _cache_state(r: registry.Release) -> str:
    if r.is_cached:
        return "yes"
    part = r.path.with_name(r.file + ".part")
    if part.is_file():
        return f"partial ({part.stat().st_size / 2 ** 20:.0f} MiB)"
    return "-"


def _labels(r: registry.Release) -> str:
    return "-" if r.label_set is None else f"{r.label_set} ({r.label_dim})"


def _row(r: registry.Release) -> list[str]:
    return [r.name, r.family, r.model_size, f"{r.num_parameters / 1e6:.1f}M", f"{r.fshape}x{r.tshape}",
            f"{r.fstride}x{r.tstride}", str(r.input_tdim), _labels(r), _cache_state(r)]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _where() -> str:
    src = f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else f"default; set ${CACHE_ENV} to move it"
    lines = [f"cache: {cache_dir()} ({src})"]
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        lines.append(f"mirror: {mirror} (${MIRROR_ENV}: files are fetched from there)")
    return "\n".join(lines)


def _describe(r: registry.Release) -> str:
    c = r.config()
    fields = [
        ("name", r.name), ("file", r.file), ("url", r.url),
        ("mirror url", mirror_url(r.file)),
        ("family", r.family), ("purpose", r.purpose), ("data", r.data), ("result", r.result),
        ("model size", f"{r.model_size} (width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, "
                       f"{c.num_prefix_tokens} prefix tokens), {r.num_parameters:,} parameters"),
        ("patch", f"{r.fshape}x{r.tshape} ({r.patch} model), stride {r.fstride}x{r.tstride}"),
        ("input", f"{r.input_fdim} mel bins x {r.input_tdim} frames ({c.f_dim}x{c.t_dim} patches)"),
        ("masked patches", r.mask_patch), ("labels", _labels(r) if r.label_set else "none (pretrained encoder)"),
        ("normalization", f"mean {r.mean}, std {r.std}: (x - mean) / (2 * std)"),
        ("hugging face", r.hub_id), ("file size", f"{r.size_bytes:,} bytes" if r.size_bytes else None),
        ("aliases", ", ".join(r.aliases) or None),
        ("cached", f"{r.path}" if r.is_cached else f"no (goes to {r.path})"),
    ]
    return "\n".join(f"{k + ':':<16}{v}" for k, v in fields if v is not None)


def run(args) -> int:
    if args.download and not args.names:
        raise ValueError("--download needs the names of the models to fetch (ssast models NAME --download)")
    chosen = [registry.resolve(n) for n in args.names]
    if args.download:
        for r in chosen:
            print(f"{r.name}: {registry.fetch(r, progress=args.progress)}")
        return 0
    if chosen:
        print("\n\n".join(_describe(r) for r in chosen))
        return 0
    head = ["name", "family", "size", "params", "patch", "stride", "frames", "labels", "cached"]
    print(_table([head] + [_row(r) for r in registry.releases(args.family)]))
    print(_where())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list the released SSAST/AST models and the cache; describe or download them",
        description="The released SSAST and AST models by name, with their geometry, labels and whether "
                    "they are in the cache (parameters are computed from the geometry). Names are "
                    "matched in any case, with or without .pth, and may be Hugging Face ids.")
    p.add_argument("names", nargs="*", metavar="NAME", help="describe these models (or download them)")
    p.add_argument("--family", choices=("ssast", "ast"), help="list only this family")
    p.add_argument("--download", action="store_true", help="download the named models into the cache (verified)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar while downloading (default: on)")
    p.set_defaults(func=run)

"""Model geometry: one dataclass plus the size presets of the released models.

The patch grid is plain arithmetic on the spectrogram size, the patch shape and the stride;
nothing here builds a module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Width, heads and number of prefix tokens of each size. All released models have 12 blocks.
# ``tiny``/``small``/``base`` follow DeiT's distilled layout (a cls and a distillation token);
# ``base_nokd`` is DeiT without distillation (a cls token only).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, num_heads=3, depth=12, num_prefix_tokens=2),
    "small": dict(embed_dim=384, num_heads=6, depth=12, num_prefix_tokens=2),
    "base": dict(embed_dim=768, num_heads=12, depth=12, num_prefix_tokens=2),
    "base_nokd": dict(embed_dim=768, num_heads=12, depth=12, num_prefix_tokens=1),
}

# The AST code names sizes after the ImageNet DeiT model they start from.
SIZE_ALIASES: dict[str, str] = {
    "tiny224": "tiny",
    "small224": "small",
    "base224": "base",
    "base384": "base",
    "base384_nokd": "base_nokd",
}

# timm model whose ImageNet weights initialise each size (AST's ``imagenet_pretrain``).
DEIT_NAMES: dict[str, str] = {
    "tiny": "deit_tiny_distilled_patch16_224",
    "tiny224": "deit_tiny_distilled_patch16_224",
    "small": "deit_small_distilled_patch16_224",
    "small224": "deit_small_distilled_patch16_224",
    "base224": "deit_base_distilled_patch16_224",
    "base": "deit_base_distilled_patch16_384",
    "base384": "deit_base_distilled_patch16_384",
    "base_nokd": "deit_base_patch16_384",
    "base384_nokd": "deit_base_patch16_384",
}


def canonical_size(model_size: str) -> str:
    """Map a size name (SSAST or AST spelling) to one of :data:`SIZES`."""
    name = SIZE_ALIASES.get(model_size, model_size)
    if name not in SIZES:
        known = sorted(SIZES) + sorted(SIZE_ALIASES)
        raise ValueError(f"unknown model_size {model_size!r}; expected one of {', '.join(known)}")
    return name


def size_from_width(embed_dim: int, num_prefix_tokens: int) -> str | None:
    """The preset with this width and prefix count, or None for a custom geometry."""
    for name, preset in SIZES.items():
        if preset["embed_dim"] == embed_dim and preset["num_prefix_tokens"] == num_prefix_tokens:
            return name
    return None


def grid_size(input_dim: int, shape: int, stride: int) -> int:
    """Number of patches along one axis: ``(n - k) // s + 1``."""
    if shape > input_dim:
        raise ValueError(f"patch size {shape} is larger than the input size {input_dim}")
    return (input_dim - shape) // stride + 1


@dataclass
class ModelConfig:
    """Everything needed to rebuild an AST/SSAST model (saved in checkpoints)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_prefix_tokens: int = 2
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # LayerNorm epsilon of the encoder (DeiT's)
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    input_fdim: int = 128
    input_tdim: int = 1024
    label_dim: int = 527
    model_size: str = "base"
    # "pretrain": encoder + mask token + the two pretraining heads; "finetune": encoder + mlp_head.
    stage: str = "pretrain"
    # Default task of ``forward`` when none is given ("ft_avgtok" or "ft_cls").
    default_task: str = "ft_avgtok"

    @classmethod
    def from_size(cls, model_size: str, **kw) -> "ModelConfig":
        preset = SIZES[canonical_size(model_size)]
        return cls(model_size=model_size, **{**preset, **kw})

    @property
    def f_dim(self) -> int:
        return grid_size(self.input_fdim, self.fshape, self.fstride)

    @property
    def t_dim(self) -> int:
        return grid_size(self.input_tdim, self.tshape, self.tstride)

    @property
    def grid(self) -> tuple[int, int]:
        return self.f_dim, self.t_dim

    @property
    def num_patches(self) -> int:
        return self.f_dim * self.t_dim

    @property
    def is_frame_model(self) -> bool:
        """A frame model's patches span every mel bin (128x2 patches on 128 bins): one patch per time step."""
        return self.fshape == self.input_fdim

    @property
    def patch_dim(self) -> int:
        """Values in one patch: the output width of the pretraining heads."""
        return self.fshape * self.tshape

    def validate(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune', got {self.stage!r}")
        if self.default_task not in ("ft_avgtok", "ft_cls"):
            raise ValueError(f"default_task must be 'ft_avgtok' or 'ft_cls', got {self.default_task!r}")
        if self.num_prefix_tokens not in (1, 2):
            raise ValueError("num_prefix_tokens must be 1 (cls) or 2 (cls + distillation)")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if min(self.fshape, self.tshape, self.fstride, self.tstride) < 1:
            raise ValueError("patch shapes and strides must be positive")
        self.grid  # raises if the patch does not fit the input
        if self.stage == "pretrain" and (self.fstride != self.fshape or self.tstride != self.tshape):
            raise ValueError(
                "pretraining needs non-overlapping patches: stride must equal patch shape, got "
                f"fshape={self.fshape}, fstride={self.fstride}, tshape={self.tshape}, tstride={self.tstride}. "
                "Overlapping strides are for fine-tuning (pretrain_stage=False)."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

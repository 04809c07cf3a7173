"""Convolutional encoder and decoder of the VQGAN (the original's ``ddconfig`` networks).

Parameter names follow CompVis/taming-transformers exactly (``down.0.block.1.norm1``, ``mid.attn_1.q``, ...),
so the original checkpoints load as they are. Attention runs through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tamer.config import checked_keywords


@checked_keywords
@dataclass
class AutoencoderConfig:
    """The original ``ddconfig``: one config builds both the encoder and the decoder."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False
    resamp_with_conv: bool = True
    # GroupNorm groups in every block, 32 as in the original; 0 drops the normalisation. A narrow network (ch 32)
    # with 32 groups normalises each channel of each image on its own, wiping out colour and contrast it must then
    # relearn: without it the demo's tiny VQGAN learns markedly faster (BENCHMARKS.md, "tiny VQGAN recipe").
    norm_groups: int = 32
    # How the encoder's and decoder's convolutions start: "torch" is PyTorch's default, as the original's; "lecun"
    # draws weights from N(0, 1/fan_in) with zero biases. PyTorch's default shrinks the signal about √3-fold in
    # every layer, which GroupNorm undoes; without it (norm_groups 0) the tiny VQGAN started with a near-zero signal
    # and spent hundreds of steps reproducing only two of the three colour axes (BENCHMARKS.md, "plateau").
    weight_init: Literal["torch", "lecun"] = "torch"

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.ch_mult:
            raise ValueError("autoencoder.ch_mult: needs at least one level")
        if self.norm_groups < 0:
            raise ValueError(f"autoencoder.norm_groups: expected 0 (no normalisation) or more, got {self.norm_groups}")
        if self.norm_groups and self.ch % self.norm_groups:
            raise ValueError(f"autoencoder.ch: {self.ch} is not a multiple of norm_groups ({self.norm_groups})")
        if self.weight_init not in ("torch", "lecun"):
            raise ValueError(f"autoencoder.weight_init: expected 'torch' or 'lecun', got {self.weight_init!r}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def initialise_weights(module: nn.Module, scheme: str) -> None:
    """Re-draw every convolution of ``module`` by ``scheme`` (see ``AutoencoderConfig.weight_init``)."""
    if scheme == "torch":
        return
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")  # std 1/sqrt(fan_in)
            nn.init.zeros_(conv.bias)


def group_norm(channels: int, groups: int = 32) -> nn.Module:
    """The blocks' normalisation: GroupNorm as in the original, or none (``groups=0``)."""
    if groups == 0:
        return nn.Identity()
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm_groups: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)
        # One 1x1 convolution for q, k and v instead of three.
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = F.conv2d(hidden, weight, bias).reshape(b, 3, 1, c, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # b, 1, hw, c
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        # Asymmetric padding (right and bottom only), as the original.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


def _stage(blocks: Sequence[nn.Module], attns: Sequence[nn.Module]) -> nn.Module:
    stage = nn.Module()
    stage.block = nn.ModuleList(blocks)
    stage.attn = nn.ModuleList(attns)
    return stage


def _middle(channels: int, dropout: float, norm_groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
    mid.attn_1 = AttnBlock(channels, norm_groups)
    mid.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_stage(stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(stage.block):
        h = block(h)
        if len(stage.attn):
            h = stage.attn[i](h)
    return h


class Encoder(nn.Module):
    """Image ``B×in_channels×H×W`` -> latent ``B×z_channels×H/f×W/f`` (``2·z_channels`` with ``double_z``)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        in_mult = (1,) + c.ch_mult
        resolution = c.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.ch_mult):
            block_in, block_out = c.ch * in_mult[level], c.ch * mult
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, c.dropout, c.norm_groups))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    attns.append(AttnBlock(block_in, c.norm_groups))
            stage = _stage(blocks, attns)
            if level != len(c.ch_mult) - 1:
                stage.downsample = Downsample(block_in, c.resamp_with_conv)
                resolution //= 2
            self.down.append(stage)
        self.mid = _middle(block_in, c.dropout, c.norm_groups)
        self.norm_out = group_norm(block_in, c.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels if c.double_z else c.z_channels, 3, padding=1)
        initialise_weights(self, c.weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = _run_stage(stage, h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = _run_middle(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``B×z_channels×h×w`` -> image ``B×out_ch×h·f×w·f``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        levels = len(c.ch_mult)
        block_in = c.ch * c.ch_mult[-1]
        resolution = c.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in, c.dropout, c.norm_groups)
        stages = []
        for level in reversed(range(levels)):
            block_out = c.ch * c.ch_mult[level]
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, c.dropout, c.norm_groups))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    attns.append(AttnBlock(block_in, c.norm_groups))
            stage = _stage(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in, c.resamp_with_conv)
                resolution *= 2
            stages.insert(0, stage)  # up[0] is the highest resolution, as in the original
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(block_in, c.norm_groups)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)
        initialise_weights(self, c.weight_init)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight is computed on."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(z))
        for stage in reversed(self.up):
            h = _run_stage(stage, h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

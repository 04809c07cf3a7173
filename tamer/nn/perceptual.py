"""LPIPS (VGG16 trunk, v0.1 linear heads) from the `lpips` package, built from local weights and never downloading.

The `lpips` package ships its calibrated linear heads; the VGG16 ImageNet trunk comes from torchvision's file
``vgg16-397923af.pth`` in ``torch.hub.get_dir()/checkpoints`` (where torchvision itself caches it), from a path
the user names, or from the ``loss.perceptual_loss.*`` entries of an imported CompVis checkpoint. When none is
there the perceptual loss is unavailable: :func:`load_lpips` warns with a message that says how to fix it and
returns ``None``, so a run without LPIPS is never silent.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1

# torchvision's ``features.<i>`` -> lpips' ``net.slice<k>.<i>``: slices end after relu1_2, 2_2, 3_3, 4_3, 5_3.
_SLICE_ENDS = (4, 9, 16, 23, 30)


class PerceptualUnavailableWarning(UserWarning):
    """The LPIPS perceptual loss cannot be built here; the message says why and how to fix it."""


class LPIPS(nn.Module):
    """A frozen LPIPS distance: ``(x, y)`` images in [-1, 1] -> ``B×1×1×1`` distances.

    Wraps ``lpips.LPIPS(net="vgg", version="0.1")``. It stays in eval mode even when a parent module is put in
    training mode: the heads' dropout is part of calibrating LPIPS, not of using it as a loss (the original lets
    Lightning switch it on, which adds noise to the loss). Gradients flow to the images, never to the weights.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y)


def default_vgg_path() -> Path:
    """Where torchvision caches the VGG16 weights: ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def lpips_heads_path() -> Path:
    """The v0.1 VGG linear heads inside the `lpips` package (the same file as the original's ``vgg.pth``)."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def missing_vgg_message(path: Path) -> str:
    return (
        f"LPIPS perceptual loss is OFF: the VGG16 ImageNet weights are not at {path}. tamer never downloads; "
        f"copy torchvision's {VGG16_FILENAME} there (running `python -c \"import torchvision; "
        "torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` once on a machine online puts it in "
        "torch.hub.get_dir()/checkpoints), or name the file with vgg_path, or set perceptual_weight to 0."
    )


def lpips_unavailable_reason(vgg_path: str | Path | None = None) -> str | None:
    """Why :func:`load_lpips` would give ``None`` (a message for the user), or ``None`` when it would work."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "LPIPS perceptual loss is OFF: the `lpips` package is not installed (pip install 'tamer-vq[train]')."
    path = Path(vgg_path) if vgg_path is not None else default_vgg_path()
    return None if path.is_file() else missing_vgg_message(path)


def load_lpips(vgg_path: str | Path | None = None) -> LPIPS | None:
    """LPIPS with the VGG16 trunk read from ``vgg_path`` (default :func:`default_vgg_path`) and lpips' v0.1 heads.

    Returns ``None`` with a :class:`PerceptualUnavailableWarning` when the default file is absent; a path the user
    names must exist (a typo should not quietly turn the loss off). Files are read with ``weights_only=True``.
    """
    if vgg_path is not None and not Path(vgg_path).is_file():
        raise FileNotFoundError(f"vgg_path: no VGG16 weights file at {vgg_path}")
    reason = lpips_unavailable_reason(vgg_path)
    if reason is not None:
        warnings.warn(reason, PerceptualUnavailableWarning, stacklevel=2)
        return None
    path = Path(vgg_path) if vgg_path is not None else default_vgg_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    trunk = {_lpips_trunk_key(k): v for k, v in state.items() if k.startswith("features.")}
    if not trunk:
        raise ValueError(f"{path}: not a torchvision VGG16 state dict (no 'features.*' entries)")
    heads = torch.load(lpips_heads_path(), map_location="cpu", weights_only=True)
    return build_lpips({**trunk, **heads}, source=str(path))


def lpips_from_compvis(state: Mapping[str, torch.Tensor], prefix: str = "loss.perceptual_loss.") -> LPIPS | None:
    """LPIPS from the trunk and heads a CompVis checkpoint carries under ``prefix``; ``None`` if it carries none.

    The original's layout (``net.slice1.0.weight``, ``lin0.model.1.weight``, ``scaling_layer.*``) is the `lpips`
    package's, so the entries map one to one.
    """
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        return None
    return build_lpips(part, source=f"checkpoint entries {prefix}*")


def build_lpips(weights: Mapping[str, torch.Tensor], source: str = "weights") -> LPIPS:
    """A frozen :class:`LPIPS` from a state in the `lpips` layout; every trunk and head weight is required.

    The network is built on the meta device and then filled, so torchvision never initializes (or downloads)
    the 138M-parameter VGG16 it would otherwise make first.
    """
    import lpips

    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        with torch.device("meta"):
            model = lpips.LPIPS(pretrained=False, net="vgg", version="0.1", pnet_rand=True, verbose=False)
    model.to_empty(device="cpu")
    model.scaling_layer = lpips.ScalingLayer()  # constants, rebuilt outside the meta device
    needed = {k for k in model.state_dict() if k.startswith("net.") or re.fullmatch(r"lin\d\.model\.1\.weight", k)}
    given = {k for k in weights if not k.startswith("scaling_layer.")}
    if needed != given:
        missing, unexpected = sorted(needed - given), sorted(given - needed)
        raise ValueError(f"{source}: not an LPIPS-VGG state; missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.load_state_dict({k: weights[k] for k in needed}, strict=False)
    return LPIPS(model)


def _lpips_trunk_key(key: str) -> str:
    """``features.<i>.<name>`` -> ``net.slice<k>.<i>.<name>``; layers past relu5_3 keep a key nothing needs."""
    _, index, name = key.split(".", 2)
    i = int(index)
    for k, end in enumerate(_SLICE_ENDS, start=1):
        if i < end:
            return f"net.slice{k}.{i}.{name}"
    return key

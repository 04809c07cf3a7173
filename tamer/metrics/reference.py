"""Reference statistics files: a real image set's features summarized once, saved as ``.npz``, reused by every run.

Layout (``numpy.savez``, read with ``allow_pickle=False`` so loading one can run no code):

- ``mu`` (``D``, float64) and ``sigma`` (``D×D``, float64): mean and covariance of the pool features. These two
  keys are the layout of ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``) and MAR's
  ``fid_stats/*.npz``, so their files can be used as references for FID (ADM computes them with the same
  TensorFlow Inception graph torch-fidelity converts; agreement is to float precision, not bit-exact).
- ``features`` (``N×D``, float32), optional: the features themselves, which KID and precision/recall need. tamer
  writes them unless asked not to; with a file that lacks them (ADM's, MAR's) only FID is computed.
- ``protocol``, optional: a JSON string saying how the statistics were made (feature network and weights,
  resize, number of images, source folder, library versions); a file without it is assumed to hold Inception
  statistics, as ADM's and MAR's do.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tamer.atomic import atomic_write
from tamer.metrics.fid import GaussianStatistics, feature_statistics


@dataclass
class ReferenceStatistics:
    """A reference set as tamer keeps it: Gaussian statistics, optionally its features, and how they were made."""

    stats: GaussianStatistics
    features: torch.Tensor | None = None
    protocol: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: torch.Tensor, protocol: dict | None = None,
                      keep_features: bool = True) -> ReferenceStatistics:
        protocol = {**(protocol or {}), "num_images": len(features)}
        return cls(feature_statistics(features), features.float() if keep_features else None, protocol)

    @property
    def num_images(self) -> int | None:
        if self.features is not None:
            return len(self.features)
        return self.protocol.get("num_images")

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` atomically (a temporary file, then a rename)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"{path}: reference statistics are saved as .npz")
        arrays = {"mu": self.stats.mu, "sigma": self.stats.sigma,
                  "protocol": np.array(json.dumps({**self.protocol, "num_images": self.num_images}))}
        if self.features is not None:
            arrays["features"] = self.features.numpy().astype(np.float32)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as file:
                np.savez(file, **arrays)

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStatistics:
        """Read a tamer, ADM or MAR ``.npz`` (keys ``mu`` and ``sigma`` required); a pickled array is refused."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no reference statistics file")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"mu", "sigma"} - set(data.files)
                if missing:
                    raise ValueError(f"{path}: reference statistics need keys 'mu' and 'sigma' (the ADM/MAR layout); "
                                     f"found {sorted(data.files)}")
                for key in ("mu", "sigma", "features"):
                    if key in data.files and not np.isfinite(data[key]).all():
                        raise ValueError(f"{path}: '{key}' holds NaN or infinite values; recompute the reference "
                                         "statistics (tamer eval reference)")
                stats = GaussianStatistics(data["mu"], data["sigma"])
                features = torch.from_numpy(data["features"].astype(np.float32)) if "features" in data.files else None
                protocol = json.loads(str(data["protocol"])) if "protocol" in data.files else {
                    "feature_network": {"name": "inception"},
                    "note": "no protocol recorded in the file (an ADM/MAR reference); assumed Inception pool3 "
                            "statistics"}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            if isinstance(error, ValueError) and str(error).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a readable .npz of reference statistics ({error})") from None
        return cls(stats, features, protocol)

    def check_network(self, name: str, source: str) -> None:
        """Refuse statistics made with another feature network than ``name`` (dimensions are checked on use)."""
        made_with = self.protocol.get("feature_network", {}).get("name", "inception")
        if made_with != name:
            raise ValueError(f"{source}: reference statistics were computed with feature network {made_with!r}, "
                             f"not {name!r}; recompute them with the same network")

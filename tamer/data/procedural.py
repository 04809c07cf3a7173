"""``ProceduralShapes``: a built-in dataset of drawn scenes, so training, tests and demos need no download.

Each item is a scene of overlapping shapes (circles, squares, triangles, stars, rings, hexagons, crosses, ellipses,
crescents, bar groups) filled with textures (solid, gradient, stripes, checkers, smooth noise) over a textured
background, drawn far-to-near so nearer shapes occlude farther ones. It comes with everything the conditional
transformers need: a class label, a segmentation map, a depth map and an edge map, all exactly aligned.

It is deterministic: item ``i`` of seed ``s`` is drawn from a generator seeded with ``(s, i)`` alone, whatever the
order of access or the worker. Rendering is plain numpy, a few milliseconds for a 64×64 scene.

The label is the visible content: class ``k`` means shape kind ``SHAPES[k]`` covers more of the picture than any
other kind (the renderer checks this and fixes the rare scene where occlusion breaks it), so the most frequent
non-background segmentation label is always ``label + 1`` and a classifier has something real to learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tamer.imageio import save_image
from tamer.progress import progress_bar

SHAPES = ("circle", "square", "triangle", "star", "ring", "hexagon", "cross", "ellipse", "crescent", "bars")
TEXTURES = ("solid", "gradient", "stripes", "checkers", "noise")
#: segmentation labels: 0 is background, ``k + 1`` is ``SHAPES[k]``
NUM_SEGMENTATION_LABELS = len(SHAPES) + 1

Sample = dict[str, torch.Tensor]


@dataclass
class Scene:
    """One rendered item as numpy arrays (``H×W`` each, the image ``H×W×3``)."""

    image: np.ndarray  # float32 in [0, 1], quantised to 8-bit levels so a PNG round trip is exact
    label: int
    segmentation: np.ndarray  # uint8: 0 background, k + 1 for SHAPES[k]
    depth: np.ndarray  # float32 in [-1, 1], disparity-like: +1 nearest, -1 farthest (as MiDaS maps for D-RIN)
    edges: np.ndarray  # bool: a pixel whose right or lower neighbour belongs to another object (or background)


@dataclass
class _Texture:
    kind: int
    colours: np.ndarray  # 2×3 in [0, 1]
    angle: float
    period: float
    lattice: np.ndarray  # 6×6 values for smooth noise


@dataclass
class _Shape:
    kind: int
    cx: float
    cy: float
    radius: float
    angle: float
    depth: float
    tilt: tuple[float, float]
    texture: _Texture
    main: bool
    order: float = field(default=0.0)  # drawing order key: larger is drawn later (nearer)


def _regular_polygon(n: int, inner: float | None = None) -> np.ndarray:
    """Vertices (``k×2``, unit circumradius, pointing up); with ``inner`` a star alternating radii 1 and ``inner``."""
    count = 2 * n if inner else n
    angles = -math.pi / 2 + 2 * math.pi * np.arange(count) / count
    radii = np.where(np.arange(count) % 2 == 1, inner, 1.0) if inner else np.ones(count)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS = {"triangle": _regular_polygon(3), "hexagon": _regular_polygon(6), "star": _regular_polygon(5, 0.45)}
_HALF_SQUARE = 1 / math.sqrt(2)


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, 1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        inside ^= crosses & (x < (x1 - x0) * (y - y0) / (y1 - y0) + x0)
    return inside


def shape_mask(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points of the local frame (unit radius, centred, unrotated) lie inside a shape of ``kind``."""
    r2 = x * x + y * y
    if kind == "circle":
        return r2 <= 1
    if kind == "square":
        return np.maximum(abs(x), abs(y)) <= _HALF_SQUARE
    if kind in _POLYGONS:
        return _inside_polygon(x, y, _POLYGONS[kind])
    if kind == "ring":
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if kind == "cross":
        return ((abs(x) <= 0.3) & (abs(y) <= 1)) | ((abs(y) <= 0.3) & (abs(x) <= 1))
    if kind == "ellipse":
        return x * x + (y / 0.5) ** 2 <= 1
    if kind == "crescent":
        return (r2 <= 1) & ((x - 0.45) ** 2 + y * y > 0.8 ** 2)
    if kind == "bars":  # three parallel bars filling a square
        band = np.floor((x + _HALF_SQUARE) / (2 * _HALF_SQUARE) * 5)
        return (np.maximum(abs(x), abs(y)) <= _HALF_SQUARE) & (band % 2 == 0)
    raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(SHAPES)}")


def _smooth_noise(lattice: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear value noise from a small lattice over the unit square."""
    cells = lattice.shape[0] - 1
    gx, gy = np.clip(u, 0, 1) * cells, np.clip(v, 0, 1) * cells
    x0, y0 = np.minimum(gx.astype(int), cells - 1), np.minimum(gy.astype(int), cells - 1)
    fx, fy = gx - x0, gy - y0
    top = lattice[y0, x0] * (1 - fx) + lattice[y0, x0 + 1] * fx
    bottom = lattice[y0 + 1, x0] * (1 - fx) + lattice[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _paint(texture: _Texture, u: np.ndarray, v: np.ndarray, centre: tuple[float, float], extent: float) -> np.ndarray:
    """Texture colours (``...×3``) at image coordinates ``u, v`` in [0, 1]."""
    name = TEXTURES[texture.kind]
    c, s = math.cos(texture.angle), math.sin(texture.angle)
    along = (u - centre[0]) * c + (v - centre[1]) * s
    if name == "solid":
        t = np.zeros_like(u)
    elif name == "gradient":
        t = np.clip(along / (2 * extent) + 0.5, 0, 1)
    elif name == "stripes":
        t = (np.mod(along / texture.period, 1) < 0.5).astype(np.float32)
    elif name == "checkers":
        across = -(u - centre[0]) * s + (v - centre[1]) * c
        t = np.mod(np.floor(along / texture.period) + np.floor(across / texture.period), 2)
    else:
        t = _smooth_noise(texture.lattice, u, v)
    first, second = texture.colours
    return first + (second - first) * t[..., None]


def _random_texture(rng: np.random.Generator, kinds: range | list[int], muted: bool = False) -> _Texture:
    colours = rng.uniform(0, 1, (2, 3))
    if muted:
        colours = 0.5 + 0.5 * (colours - 0.5)
    return _Texture(kind=int(rng.choice(kinds)), colours=colours.astype(np.float32),
                    angle=float(rng.uniform(0, math.pi)), period=float(rng.uniform(0.06, 0.16)),
                    lattice=rng.uniform(0, 1, (6, 6)).astype(np.float32))


def _random_shape(rng: np.random.Generator, kind: int, main: bool, large: bool = False) -> _Shape:
    if large:  # the object-centric framing: one shape filling most of the picture, near the centre
        radius, (low, high) = rng.uniform(0.3, 0.42), (0.4, 0.6)
    else:
        radius = rng.uniform(0.2, 0.32) if main else rng.uniform(0.07, 0.16)
        low, high = (0.25, 0.75) if main else (0.1, 0.9)
    return _Shape(kind=kind, cx=float(rng.uniform(low, high)), cy=float(rng.uniform(low, high)), radius=float(radius),
                  angle=float(rng.uniform(0, 2 * math.pi)), depth=float(rng.uniform(-0.3, 0.8)),
                  tilt=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))),
                  texture=_random_texture(rng, range(len(TEXTURES))), main=main)


def _render(size: int, background: _Texture, horizon: tuple[float, float], shapes: list[_Shape]):
    """Draw far to near; returns image (float, unshaded), segmentation, instance ids and depth."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(centres, centres)
    image = _paint(background, u, v, (0.5, 0.5), 0.7)
    depth = (horizon[0] + (horizon[1] - horizon[0]) * v).astype(np.float32)
    segmentation = np.zeros((size, size), np.uint8)
    instance = np.zeros((size, size), np.uint8)
    for number, shape in enumerate(sorted(shapes, key=lambda s: s.order), start=1):
        x0, x1 = max(0, int((shape.cx - shape.radius) * size)), min(size, int((shape.cx + shape.radius) * size) + 2)
        y0, y1 = max(0, int((shape.cy - shape.radius) * size)), min(size, int((shape.cy + shape.radius) * size) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        su, sv = u[y0:y1, x0:x1], v[y0:y1, x0:x1]
        dx, dy = (su - shape.cx) / shape.radius, (sv - shape.cy) / shape.radius
        c, s = math.cos(shape.angle), math.sin(shape.angle)
        mask = shape_mask(SHAPES[shape.kind], c * dx + s * dy, -s * dx + c * dy)
        region = (slice(y0, y1), slice(x0, x1))
        colours = _paint(shape.texture, su[mask], sv[mask], (shape.cx, shape.cy), shape.radius)
        image[region][mask] = colours
        plane = shape.depth + shape.tilt[0] * (su - shape.cx) + shape.tilt[1] * (sv - shape.cy)
        depth[region][mask] = plane[mask]
        segmentation[region][mask] = shape.kind + 1
        instance[region][mask] = number
    return image, segmentation, instance, np.clip(depth, -1, 1)


def _dominant(segmentation: np.ndarray, label: int) -> bool:
    counts = np.bincount(segmentation.ravel(), minlength=NUM_SEGMENTATION_LABELS)[1:]
    return counts[label] > np.delete(counts, label).max()


def render_scene(size: int, label: int, rng: np.random.Generator, max_distractors: int = 4,
                 plain: bool = False, object_centric: bool = False) -> Scene:
    """Draw a scene whose dominant shape kind is ``SHAPES[label]``, all randomness from ``rng``: one or two shapes
    of that kind and 1 to ``max_distractors`` of other kinds (none when it is 0). ``plain`` paints the same scene
    without fine texture: solid shapes over a smooth gradient (the random draws are the same, so the geometry and
    colours match the textured scene). ``object_centric`` draws a single shape of the kind, large (radius 0.3 to
    0.42 of the side) and near the centre, as photos of class-labelled datasets frame their object."""
    background = _random_texture(rng, [1, 2, 3, 4], muted=True)
    horizon = (float(rng.uniform(-1.0, -0.9)), float(rng.uniform(-0.7, -0.5)))  # far at the top, nearer below
    others = [k for k in range(len(SHAPES)) if k != label]
    count = 1 if object_centric else int(rng.integers(1, 3))
    shapes = [_random_shape(rng, label, main=True, large=object_centric) for _ in range(count)]
    n_distractors = int(rng.integers(1, max_distractors + 1)) if max_distractors > 0 else 0
    shapes += [_random_shape(rng, int(rng.choice(others)), main=False) for _ in range(n_distractors)]
    for shape in shapes:
        shape.order = shape.depth
    if plain:
        background.kind = TEXTURES.index("gradient")
        for shape in shapes:
            shape.texture.kind = TEXTURES.index("solid")
    brought_forward = False
    while True:
        image, segmentation, instance, depth = _render(size, background, horizon, shapes)
        distractors = [s for s in shapes if not s.main]
        if _dominant(segmentation, label) or not distractors:
            break
        # rare: occluders hide the main kind. Bring the main shapes forward; failing that, drop the biggest occluder.
        if not brought_forward:
            front = max(s.depth for s in distractors)
            shapes = [replace(s, depth=max(s.depth, min(front + 0.05, 0.85)), order=2 + s.order) if s.main else s
                      for s in shapes]
            brought_forward = True
        else:
            shapes.remove(max(distractors, key=lambda s: s.radius))
    shading = 0.7 + 0.15 * (depth + 1)  # nearer is brighter: a visible depth cue
    image = np.round(np.clip(image * shading[..., None], 0, 1) * 255) / 255
    edges = np.zeros((size, size), bool)
    edges[:, :-1] |= instance[:, :-1] != instance[:, 1:]
    edges[:-1, :] |= instance[:-1, :] != instance[1:, :]
    return Scene(image=image.astype(np.float32), label=label, segmentation=segmentation,
                 depth=depth.astype(np.float32), edges=edges)


class ProceduralShapes(Dataset):
    """Drawn scenes of ``size``×``size`` pixels, ``length`` items, ``num_classes`` (at most 10) shape classes.

    Items: ``"image"`` (3×H×W in [-1, 1]), ``"label"`` (long), ``"segmentation"`` (H×W long, 0 background and
    ``k + 1`` for ``SHAPES[k]``; distractor shapes use all ten kinds whatever ``num_classes``, so 11 labels),
    ``"depth"`` (1×H×W in [-1, 1], +1 nearest), ``"edges"`` (1×H×W, exactly -1 or +1: +1 on object boundaries,
    the [-1, 1] image convention so a conditioning VQGAN reads it like any image). ``transform`` (an
    ``ImageTransform``) crops and flips all maps together; the label describes the whole drawn scene.
    ``max_distractors`` bounds the shapes of other kinds per scene; ``plain`` drops the fine textures (solid
    shapes over smooth gradients), which a tokenizer trained for minutes on a CPU can reproduce; ``object_centric``
    draws one large shape near the centre (see :func:`render_scene`).
    """

    def __init__(self, size: int = 64, length: int = 10_000, num_classes: int = len(SHAPES), seed: int = 0,
                 transform: Callable[[Sample], Sample] | None = None, max_distractors: int = 4,
                 plain: bool = False, object_centric: bool = False):
        if size < 16:  # below that a shape can fall between pixel centres and the label would lie
            raise ValueError(f"size: expected at least 16 pixels, got {size}")
        if length < 1:
            raise ValueError(f"length: expected a positive number of items, got {length}")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes: expected 1 to {len(SHAPES)} (one per shape kind), got {num_classes}")
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed}")
        if max_distractors < 0:
            raise ValueError(f"max_distractors: expected 0 or more, got {max_distractors}")
        self.max_distractors, self.plain, self.object_centric = max_distractors, plain, object_centric
        self.size, self.length, self.num_classes, self.seed, self.transform = size, length, num_classes, seed, transform
        self.classes = list(SHAPES[:num_classes])
        self.num_segmentation_labels = NUM_SEGMENTATION_LABELS

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """Item ``index`` as numpy arrays."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        index %= self.length
        rng = np.random.default_rng([self.seed, index])
        return render_scene(self.size, int(rng.integers(self.num_classes)), rng, self.max_distractors,
                            self.plain, self.object_centric)

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        sample = {
            "image": torch.from_numpy(scene.image).permute(2, 0, 1) * 2 - 1,
            "label": torch.tensor(scene.label, dtype=torch.long),
            "segmentation": torch.from_numpy(scene.segmentation.astype(np.int64)),
            "depth": torch.from_numpy(scene.depth)[None],
            "edges": torch.from_numpy(scene.edges)[None].float() * 2 - 1,
        }
        return self.transform(sample) if self.transform is not None else sample


def class_folder_name(label: int) -> str:
    """``"03_star"``: the index prefix keeps sorted folder names in label order, so ``ClassFolder`` agrees."""
    return f"{label:02d}_{SHAPES[label]}"


def write_procedural_dataset(out: str | Path, count: int, size: int = 64, num_classes: int = len(SHAPES),
                             seed: int = 0, progress: bool = True) -> Path:
    """Write items ``0..count-1`` as PNG files, for the folder-based datasets and for looking at.

    Layout: ``out/images/<NN_shape>/<index>.png`` (read it with ``ClassFolder``, whose labels are then the
    dataset's: every class has its folder, even one with no items, or with ``ImageFolder``),
    ``out/segmentations/<NN_shape>/<index>.png`` (8-bit label maps; ``SegmentationPairs(out/"images",
    out/"segmentations")``) and ``out/images.txt`` listing the images relative to ``out`` (``ImageFileList`` with
    ``root=out``). Images are stored losslessly, so reading them back gives exactly the dataset's tensors.
    """
    out = Path(out)
    dataset = ProceduralShapes(size=size, length=count, num_classes=num_classes, seed=seed)
    width = max(6, len(str(count - 1)))
    for label in range(num_classes):  # every class gets its folder, so ClassFolder's indices are these labels
        (out / "images" / class_folder_name(label)).mkdir(parents=True, exist_ok=True)
    names = []
    for index in progress_bar(range(count), desc="writing procedural shapes", unit="image", disable=not progress):
        scene = dataset.scene(index)
        name = Path(class_folder_name(scene.label)) / f"{index:0{width}d}.png"
        save_image(torch.from_numpy(scene.image).permute(2, 0, 1) * 2 - 1, out / "images" / name)
        (out / "segmentations" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.segmentation).save(out / "segmentations" / name)
        names.append((Path("images") / name).as_posix())
    (out / "images.txt").write_text("\n".join(names) + "\n")
    return out

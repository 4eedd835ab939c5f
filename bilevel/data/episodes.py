"""Few-shot episodes: a batch of tasks, images grouped by class, and a seeded N-way K-shot sampler.

The sampler draws, for each of ``B`` tasks, ``N`` distinct classes and ``K + Q`` distinct
drawings of each, and returns them stacked along a leading meta-batch dimension so that a whole
meta-batch can be processed with ``torch.func.vmap`` over dim 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..validation import check_int

__all__ = ["EpisodeBatch", "ClassImages", "EpisodeSampler"]

_QUARTER_TURNS = {0: 0, 90: 1, 180: 2, 270: 3}


class EpisodeBatch(NamedTuple):
    """A meta-batch of ``B`` tasks, each with a support (train) and a query (test) set.

    Classification (``EpisodeSampler``): ``support_x [B, N*K, *item_shape]`` float,
    ``support_y [B, N*K]`` int64 in ``0..N-1``, each label exactly ``K`` times; ``query_x
    [B, N*Q, *item_shape]``, ``query_y [B, N*Q]``, each label exactly ``Q`` times. Within a task
    the rows are label-major: ``support_y[b] == arange(N).repeat_interleave(K)``.

    Regression (``SinusoidTasks``): ``support_x``, ``support_y`` ``[B, K, 1]`` float,
    ``query_x``, ``query_y`` ``[B, Q, 1]`` float.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> EpisodeBatch:
        """Return a copy on ``device``; ``dtype`` casts the inputs ``x`` and floating targets ``y``.

        Integer class labels keep their dtype (int64), so they stay valid for cross-entropy.
        """

        def move(t: Tensor) -> Tensor:
            cast = dtype if (dtype is not None and t.is_floating_point()) else None
            return t.to(device=device, dtype=cast, non_blocking=non_blocking)

        return EpisodeBatch(*(move(t) for t in self))


class ClassImages:
    """uint8 images grouped by class, with an optional lazy rotation per class.

    Class ``i`` is the images ``images[base_index[i]]`` rotated counter-clockwise by
    ``rotations[i]`` degrees (one of 0, 90, 180, 270; applied with ``torch.rot90`` on the last two
    dims when the class is read, so rotated copies cost no memory).

    Attributes:
        images: uint8 ``[C_base, n, H, W]`` (grayscale) or ``[C_base, n, ch, H, W]`` (e.g. RGB,
            ``ch == 3``); every class has the same number ``n`` of drawings.
        names: one unique name per class (``len(names) == len(self)``).
        base_index: int64 ``[len(self)]``, indices into ``images``.
        rotations: ``list[int]`` of degrees, one per class.

    Treat instances as immutable; ``subset`` and ``with_rotations`` return new ones.

    Example:
        >>> imgs = torch.zeros(3, 20, 28, 28, dtype=torch.uint8)
        >>> classes = ClassImages(imgs, ["a", "b", "c"]).with_rotations()
        >>> len(classes), classes.names[:2], classes.item_shape
        (12, ['a', 'a@rot90'], (1, 28, 28))
    """

    def __init__(
        self,
        images: Tensor,
        names: Sequence[str],
        *,
        base_index: Tensor | Sequence[int] | None = None,
        rotations: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise TypeError(
                f"ClassImages(images=...): expected a uint8 torch.Tensor, got "
                f"{getattr(images, 'dtype', type(images).__name__)}; store images as uint8 0..255"
            )
        if images.dim() not in (4, 5):
            raise ValueError(
                f"ClassImages(images=...): expected shape [C, n, H, W] or [C, n, ch, H, W], got "
                f"{tuple(images.shape)}"
            )
        names = [str(n) for n in names]
        if base_index is None:
            if len(names) != images.shape[0]:
                raise ValueError(
                    f"ClassImages: expected one name per class, got {len(names)} names for "
                    f"{images.shape[0]} classes of images"
                )
            base_index = torch.arange(len(names), dtype=torch.int64)
        base_index = torch.as_tensor(base_index, dtype=torch.int64).reshape(-1)
        rotations = [0] * len(names) if rotations is None else [int(r) for r in rotations]
        if not len(names) == base_index.numel() == len(rotations):
            raise ValueError(
                f"ClassImages: expected one name, base index and rotation per class, got "
                f"{len(names)} names, {base_index.numel()} base indices, {len(rotations)} rotations"
            )
        if len(set(names)) != len(names):
            raise ValueError("ClassImages(names=...): class names must be unique")
        if base_index.numel() and (base_index.min() < 0 or base_index.max() >= images.shape[0]):
            raise ValueError(
                f"ClassImages(base_index=...): expected indices in [0, {images.shape[0]}), got "
                f"range [{int(base_index.min())}, {int(base_index.max())}]"
            )
        bad = sorted({r for r in rotations if r not in _QUARTER_TURNS})
        if bad:
            raise ValueError(f"ClassImages(rotations=...): expected degrees in (0, 90, 180, 270), got {bad}")
        if any(r in (90, 270) for r in rotations) and images.shape[-1] != images.shape[-2]:
            raise ValueError(
                f"ClassImages(rotations=...): 90/270 degree rotations need square images, got "
                f"H x W = {images.shape[-2]} x {images.shape[-1]}"
            )
        self.images = images
        self.names = names
        self.base_index = base_index
        self.rotations = rotations
        self._quarter_turns = torch.tensor([_QUARTER_TURNS[r] for r in rotations], dtype=torch.int64)
        self._perms: Tensor | None = None

    def __len__(self) -> int:
        """Number of classes (rotated copies count as separate classes)."""
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"ClassImages({len(self)} classes, {self.drawings_per_class} drawings each, "
            f"item_shape={self.item_shape}, {sum(r != 0 for r in self.rotations)} rotated)"
        )

    @property
    def drawings_per_class(self) -> int:
        """Images per class, ``n``."""
        return int(self.images.shape[1])

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one sampled image: ``(1, H, W)`` for grayscale, ``(ch, H, W)`` otherwise."""
        shape = tuple(int(s) for s in self.images.shape[2:])
        return (1, *shape) if len(shape) == 2 else shape

    def gather(self, class_idx: Tensor, drawing_idx: Tensor) -> Tensor:
        """Return uint8 ``[*class_idx.shape, m, *item_shape]``, rotations applied.

        ``class_idx`` holds class indices (any shape ``S``); ``drawing_idx`` has shape ``[*S, m]``
        and picks ``m`` drawings of each of those classes.
        """
        class_idx = torch.as_tensor(class_idx, dtype=torch.int64)
        out = self.images[self.base_index[class_idx].unsqueeze(-1), drawing_idx]
        turns = self._quarter_turns[class_idx]
        if bool(turns.any()):
            # Rotate by permuting pixels with one gather: per-class torch.rot90 copies of
            # transposed uint8 views are several times slower.
            flat = out.flatten(-2)  # [*S, m, (ch,) H*W]
            perm = self._pixel_permutations()[turns]  # [*S, H*W]
            perm = perm.view(*turns.shape, *([1] * (flat.dim() - turns.dim() - 1)), -1)
            out = torch.gather(flat, -1, perm.expand_as(flat)).view_as(out)
        if self.images.dim() == 4:
            out = out.unsqueeze(-3)
        return out

    def _pixel_permutations(self) -> Tensor:
        """int64 ``[4, H*W]``: row k maps output pixels to source pixels of a k-quarter turn."""
        if self._perms is None:
            h, w = self.images.shape[-2:]
            grid = torch.arange(h * w).view(h, w)
            # Odd turns only occur for square images (checked in __init__).
            self._perms = torch.stack(
                [
                    torch.rot90(grid, k, dims=(0, 1)).reshape(-1)
                    if k % 2 == 0 or h == w
                    else grid.reshape(-1)
                    for k in range(4)
                ]
            )
        return self._perms

    def __getitem__(self, i: int) -> Tensor:
        """All ``n`` images of class ``i`` as uint8 ``[n, *item_shape]``, rotation applied."""
        n = self.drawings_per_class
        return self.gather(torch.tensor(i), torch.arange(n))

    def subset(self, indices: Sequence[int] | Tensor) -> ClassImages:
        """Return the classes ``indices`` (in that order) as a new ``ClassImages``.

        Only the base images those classes use are kept (copied), so a split does not hold the
        images of the other splits.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if idx.numel() and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"ClassImages.subset: index out of range for {len(self)} classes")
        idx = idx % max(len(self), 1)
        used, remap = torch.unique(self.base_index[idx], return_inverse=True)
        return ClassImages(
            self.images[used],
            [self.names[i] for i in idx.tolist()],
            base_index=remap,
            rotations=[self.rotations[i] for i in idx.tolist()],
        )

    def with_rotations(self, degrees: Sequence[int] = (0, 90, 180, 270)) -> ClassImages:
        """Return ``len(self) * len(degrees)`` classes: each class once per rotation.

        The order is class-major: new class ``i * len(degrees) + j`` is class ``i`` rotated by
        ``degrees[j]``; its name is ``names[i]`` for 0 degrees and ``f"{names[i]}@rot{deg}"``
        otherwise. The images are shared, not copied. Requires unrotated input.
        """
        if any(self.rotations):
            raise ValueError(
                "ClassImages.with_rotations(): the classes are already rotated; call it on the "
                "unrotated classes"
            )
        degrees = [int(d) for d in degrees]
        if not degrees or len(set(degrees)) != len(degrees):
            raise ValueError(
                f"ClassImages.with_rotations(degrees={degrees}): expected distinct degrees "
                "from (0, 90, 180, 270)"
            )
        names = [n if d == 0 else f"{n}@rot{d}" for n in self.names for d in degrees]
        return ClassImages(
            self.images,
            names,
            base_index=self.base_index.repeat_interleave(len(degrees)),
            rotations=degrees * len(self),
        )


def _to_unit_float(x: Tensor) -> Tensor:
    return x.to(torch.float32).div_(255.0)


def _names_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


class EpisodeSampler:
    """Seeded sampler of N-way K-shot classification tasks from a ``ClassImages``.

    Each task draws ``ways`` distinct classes uniformly at random, and ``shots + queries``
    distinct drawings of each. The position of a class among the drawn ones is its label, so
    labels ``0..N-1`` are assigned at random per task; every label appears exactly ``shots``
    times in the support set and ``queries`` times in the query set. Images are returned as
    float32 in ``[0, 1]`` (uint8 / 255), shape ``[B, N*K, *item_shape]``
    (``[B, N*K, 1, 28, 28]`` for Omniglot).

    The stream of episodes depends only on ``seed``, the classes and the sequence of
    ``meta_batch`` sizes. ``state_dict()`` / ``load_state_dict()`` save and restore the position
    in the stream, so a resumed run draws exactly the episodes it would have drawn.

    Example:
        >>> classes = ClassImages(torch.zeros(10, 20, 28, 28, dtype=torch.uint8), list("abcdefghij"))
        >>> batch = EpisodeSampler(classes, ways=5, shots=1, queries=15, seed=0).sample(4)
        >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        ((4, 5, 1, 28, 28), (4, 75))
    """

    def __init__(self, classes: ClassImages, ways: int, shots: int, queries: int, seed: int = 0):
        call = "EpisodeSampler"
        if not isinstance(classes, ClassImages):
            raise TypeError(
                f"{call}(classes=...): expected a ClassImages, got {type(classes).__name__}; "
                "build one with load_omniglot()/omniglot_splits() or load_miniimagenet()"
            )
        check_int(call, "ways", ways, minimum=2, fix="A task needs at least 2 classes; use --ways >= 2.")
        check_int(call, "shots", shots, minimum=1, fix="Use --shots >= 1.")
        check_int(call, "queries", queries, minimum=1, fix="Use --queries >= 1.")
        check_int(call, "seed", seed, minimum=0, fix="Pass a non-negative integer seed.")
        if ways > len(classes):
            raise ValueError(
                f"{call}(ways={ways}): expected ways <= {len(classes)}, the number of classes in "
                f"this split; got {ways}; lower --ways"
            )
        n = classes.drawings_per_class
        if shots + queries > n:
            raise ValueError(
                f"{call}(shots={shots}, queries={queries}): shots + queries = {shots + queries} "
                f"exceeds the {n} drawings per class of this dataset; lower --shots or --queries"
            )
        self.classes = classes
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, seed
        self.num_sampled = 0  # tasks drawn so far
        self._generator = torch.Generator().manual_seed(seed)
        self._names_sha256 = _names_digest(classes.names)
        n_way = torch.arange(ways, dtype=torch.int64)
        self._support_y = n_way.repeat_interleave(shots)
        self._query_y = n_way.repeat_interleave(queries)

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({len(self.classes)} classes, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, seed={self.seed}, num_sampled={self.num_sampled})"
        )

    def sample(self, meta_batch: int) -> EpisodeBatch:
        """Draw ``meta_batch`` tasks; return an ``EpisodeBatch`` of float32 images in [0, 1].

        Shapes: ``support_x [B, N*K, *item_shape]``, ``support_y [B, N*K]`` (int64),
        ``query_x [B, N*Q, *item_shape]``, ``query_y [B, N*Q]``.
        """
        b = check_int(
            "EpisodeSampler.sample", "meta_batch", meta_batch, minimum=1, fix="Use --meta-batch >= 1."
        )
        n_way, k, q = self.ways, self.shots, self.queries
        g = self._generator
        # The top-m of i.i.d. uniform keys, in rank order, is a uniformly random ordered sample
        # without replacement. float64 keys make ties (whose order could depend on the kernel)
        # practically impossible, so the stream is the same on every machine.
        keys = torch.rand(b, len(self.classes), generator=g, dtype=torch.float64)
        class_idx = keys.topk(n_way, dim=1).indices  # [B, N]; position = label
        keys = torch.rand(b, n_way, self.classes.drawings_per_class, generator=g, dtype=torch.float64)
        drawing_idx = keys.topk(k + q, dim=2).indices  # [B, N, K+Q]
        support = self.classes.gather(class_idx, drawing_idx[..., :k])  # uint8 [B, N, K, *item]
        query = self.classes.gather(class_idx, drawing_idx[..., k:])
        self.num_sampled += b
        return EpisodeBatch(
            support_x=_to_unit_float(support.flatten(1, 2)),
            support_y=self._support_y.expand(b, -1).clone(),
            query_x=_to_unit_float(query.flatten(1, 2)),
            query_y=self._query_y.expand(b, -1).clone(),
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the sampler's position in its stream (picklable, ``torch.save``-able).

        Holds the generator state, the number of tasks drawn, and the configuration, which
        ``load_state_dict`` checks so that a run is not resumed on different data by mistake.
        """
        return {
            "generator": self._generator.get_state(),
            "num_sampled": self.num_sampled,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "num_classes": len(self.classes),
            "names_sha256": self._names_sha256,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by ``state_dict``; the next ``sample`` continues that stream.

        Raises ``ValueError`` if the state came from a sampler with other ways/shots/queries/seed
        or other classes.
        """
        for key in ("ways", "shots", "queries", "seed", "num_classes", "names_sha256"):
            if state.get(key) != self._config_value(key):
                raise ValueError(
                    f"EpisodeSampler.load_state_dict: the saved state has {key}="
                    f"{state.get(key)!r} but this sampler has {key}="
                    f"{self._config_value(key)!r}; build the sampler with the same data and "
                    "arguments as the run that saved it"
                )
        self._generator.set_state(state["generator"])
        self.num_sampled = int(state["num_sampled"])

    def _config_value(self, key: str) -> Any:
        if key == "num_classes":
            return len(self.classes)
        if key == "names_sha256":
            return self._names_sha256
        return getattr(self, key)

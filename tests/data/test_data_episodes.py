"""EpisodeBatch, ClassImages and EpisodeSampler."""

from __future__ import annotations

import io

import pytest
import torch

from bilevel.data import ClassImages, EpisodeBatch, EpisodeSampler


def tagged_classes(num_classes: int = 12, n: int = 20, size: int = 6, rgb: bool = False) -> ClassImages:
    """Images whose pixels (0, 0) and (0, 1) hold their class and drawing index."""
    shape = (num_classes, n, 3, size, size) if rgb else (num_classes, n, size, size)
    images = torch.full(shape, 200, dtype=torch.uint8)
    images[..., 0, 0] = torch.arange(num_classes, dtype=torch.uint8).view(-1, 1, *([1] * (rgb)))
    images[..., 0, 1] = torch.arange(n, dtype=torch.uint8).view(1, -1, *([1] * (rgb)))
    return ClassImages(images, [f"c{i}" for i in range(num_classes)])


def decode_tags(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, drawing) of each image in ``[B, M, ch, H, W]`` float images."""
    px = (x[:, :, 0, 0, :2] * 255).round().long()
    return px[..., 0], px[..., 1]


def test_shapes_dtypes_and_range():
    batch = EpisodeSampler(tagged_classes(), ways=5, shots=2, queries=3, seed=0).sample(4)
    assert isinstance(batch, EpisodeBatch)
    assert tuple(batch.support_x.shape) == (4, 10, 1, 6, 6) and tuple(batch.query_x.shape) == (4, 15, 1, 6, 6)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert 0.0 <= float(batch.support_x.min()) and float(batch.support_x.max()) <= 1.0
    assert torch.equal(batch.support_y[0], torch.arange(5).repeat_interleave(2))
    assert torch.equal(batch.query_y[3], torch.arange(5).repeat_interleave(3))


def test_tasks_draw_distinct_classes_and_drawings_with_consistent_labels():
    sampler = EpisodeSampler(tagged_classes(), ways=5, shots=4, queries=6, seed=1)
    batch = sampler.sample(64)
    sc, sd = decode_tags(batch.support_x)
    qc, qd = decode_tags(batch.query_x)
    for b in range(64):
        label_to_class = {}
        for cls, y in ((sc, batch.support_y), (qc, batch.query_y)):
            for c, lab in zip(cls[b].tolist(), y[b].tolist()):
                assert label_to_class.setdefault(lab, c) == c  # one class per label, in S and Q
        assert len(set(label_to_class.values())) == 5  # N distinct classes
        for lab in label_to_class:
            drawings = sd[b][batch.support_y[b] == lab].tolist() + qd[b][batch.query_y[b] == lab].tolist()
            assert len(drawings) == 10 and len(set(drawings)) == 10  # K+Q distinct drawings
    # Over many tasks every class is drawn and gets several labels (labels are random per task).
    labels_of = {c: set() for c in range(12)}
    for b in range(64):
        for c, lab in zip(sc[b].tolist(), batch.support_y[b].tolist()):
            labels_of[c].add(lab)
    assert all(len(v) >= 2 for v in labels_of.values())


def test_rotated_classes_are_rotated():
    base = tagged_classes(num_classes=3)
    rotated = base.with_rotations()
    assert len(rotated) == 12 and rotated.names[:4] == ["c0", "c0@rot90", "c0@rot180", "c0@rot270"]
    assert rotated.images is base.images  # lazy: no copy
    for i in range(12):
        k = rotated.rotations[i] // 90
        assert torch.equal(rotated[i][:, 0], torch.rot90(base.images[i // 4], k, dims=(-2, -1)))
    batch = EpisodeSampler(rotated, ways=12, shots=1, queries=1, seed=0).sample(2)
    assert batch.support_x.shape == (2, 12, 1, 6, 6)


def test_determinism_and_seed():
    classes = tagged_classes()
    a = EpisodeSampler(classes, 5, 1, 5, seed=3).sample(8)
    b = EpisodeSampler(classes, 5, 1, 5, seed=3).sample(8)
    c = EpisodeSampler(classes, 5, 1, 5, seed=4).sample(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)


def test_state_dict_resumes_the_same_stream():
    classes = tagged_classes()
    ref = EpisodeSampler(classes, 5, 2, 3, seed=0)
    ref.sample(3)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)  # as a checkpoint would
    expected = [ref.sample(4), ref.sample(2)]
    resumed = EpisodeSampler(classes, 5, 2, 3, seed=0)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.num_sampled == 3
    for want in expected:
        got = resumed.sample(len(want.support_x))
        assert all(torch.equal(x, y) for x, y in zip(got, want))


@pytest.mark.parametrize(
    "change",
    [dict(shots=1), dict(seed=1), dict(classes=tagged_classes(num_classes=13))],
    ids=["shots", "seed", "classes"],
)
def test_load_state_dict_rejects_another_configuration(change):
    kw = dict(classes=tagged_classes(), ways=5, shots=2, queries=3, seed=0)
    state = EpisodeSampler(**kw).state_dict()
    with pytest.raises(ValueError, match="EpisodeSampler.load_state_dict: the saved state has"):
        EpisodeSampler(**{**kw, **change}).load_state_dict(state)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (
            dict(shots=15, queries=10),
            ValueError,
            r"EpisodeSampler\(shots=15, queries=10\): shots \+ queries = 25 exceeds the 20 drawings "
            r"per class of this dataset; lower --shots or --queries",
        ),
        (dict(ways=13), ValueError, r"EpisodeSampler\(ways=13\): expected ways <= 12"),
        (dict(ways=1), ValueError, r"EpisodeSampler: ways must be >= 2, got 1\. A task needs at least 2 classes"),
        (dict(shots=0), ValueError, r"shots must be >= 1, got 0\. Use --shots >= 1"),
        (dict(queries=0), ValueError, r"queries must be >= 1, got 0"),
        (dict(shots=1.0), TypeError, r"EpisodeSampler: shots must be an int, got float \(1.0\)"),
        (dict(seed=-1), ValueError, r"seed must be >= 0, got -1"),
        (dict(classes=torch.zeros(3, 20, 4, 4)), TypeError, r"expected a ClassImages"),
    ],
)
def test_argument_errors(kw, exc, match):
    args = {"classes": tagged_classes(), "ways": 5, "shots": 1, "queries": 1, "seed": 0, **kw}
    with pytest.raises(exc, match=match):
        EpisodeSampler(**args)


def test_meta_batch_must_be_positive():
    with pytest.raises(ValueError, match=r"EpisodeSampler.sample: meta_batch must be >= 1, got 0"):
        EpisodeSampler(tagged_classes(), 5, 1, 1).sample(0)


def test_rgb_classes():
    batch = EpisodeSampler(tagged_classes(rgb=True), ways=3, shots=1, queries=2, seed=0).sample(2)
    assert tuple(batch.support_x.shape) == (2, 3, 3, 6, 6) and tuple(batch.query_x.shape) == (2, 6, 3, 6, 6)


def test_batch_to_casts_x_and_float_targets_only():
    batch = EpisodeSampler(tagged_classes(), 5, 1, 1).sample(2).to("cpu", torch.float64)
    assert batch.support_x.dtype == torch.float64 and batch.support_y.dtype == torch.int64
    reg = EpisodeBatch(*(torch.zeros(2, 3, 1) for _ in range(4))).to(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in reg)


def test_batch_works_under_vmap():
    batch = EpisodeSampler(tagged_classes(), 5, 2, 3).sample(4)
    w = torch.randn(36, 5)

    def task_loss(sx, sy):
        logits = sx.flatten(1) @ w
        return torch.nn.functional.cross_entropy(logits, sy)

    losses = torch.func.vmap(task_loss)(batch.support_x, batch.support_y)
    assert losses.shape == (4,)
    assert torch.allclose(losses[1], task_loss(batch.support_x[1], batch.support_y[1]))


def test_class_images_subset_and_validation():
    classes = tagged_classes(num_classes=6).with_rotations((0, 180))
    sub = classes.subset([5, 0, 4])
    assert sub.names == ["c2@rot180", "c0", "c2"] and sub.rotations == [180, 0, 0]
    assert sub.images.shape[0] == 2  # only the base images of c0 and c2 are kept
    assert torch.equal(sub[0], classes[5]) and torch.equal(sub[2], classes[4])
    assert "6 rotated" in repr(classes)
    with pytest.raises(TypeError, match="uint8"):
        ClassImages(torch.zeros(2, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match="got 1 names for 2 classes"):
        ClassImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a"])
    with pytest.raises(ValueError, match="one name, base index and rotation per class"):
        ClassImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a", "b"], rotations=[0])
    with pytest.raises(ValueError, match=r"indices in \[0, 2\)"):
        ClassImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a"], base_index=[2])
    with pytest.raises(ValueError, match="unique"):
        ClassImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a", "a"])
    with pytest.raises(ValueError, match="degrees in"):
        ClassImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["a", "b"], rotations=[0, 45])
    with pytest.raises(ValueError, match="square"):
        ClassImages(torch.zeros(1, 3, 4, 5, dtype=torch.uint8), ["a"]).with_rotations()
    with pytest.raises(ValueError, match="already rotated"):
        classes.with_rotations()

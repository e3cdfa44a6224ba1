"""The embedded shapes dataset and the data modules (fast, CPU, no download)."""

from __future__ import annotations


import pytest
import torch

from tolerance import EPS32
from lightning_cam.data import (
    CLASSES,
    MARKER_COLOURS,
    SHAPES_MEAN,
    SHAPES_STD,
    CIFAR10DataModule,
    ImageFolderDataModule,
    ShapesDataModule,
    ShapesDataset,
)


def test_item_types_and_shapes():
    ds = ShapesDataset(16, image_size=32, seed=3)
    x, y, m = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.shape == () and 0 <= int(y) < len(CLASSES)
    assert m.shape == (32, 32) and m.dtype == torch.bool
    assert len(ds) == 16
    with pytest.raises(IndexError):
        ds.raw(16)


def test_deterministic_per_index_cached_or_not():
    a = ShapesDataset(40, image_size=48, seed=7, cache=True)
    b = ShapesDataset(40, image_size=48, seed=7, cache=False)
    for i in (0, 5, 39):
        xa, ya, ma = a[i]
        xb, yb, mb = b[i]
        assert torch.equal(xa, xb) and int(ya) == int(yb) and torch.equal(ma, mb)
    # an index renders the same regardless of which other indices are rendered with it
    im1, m1, l1 = a.render([11])
    im2, m2, l2 = a.render([3, 11, 25])
    assert torch.equal(im1[0], im2[1]) and torch.equal(m1[0], m2[1]) and l1[0] == l2[1]
    # another seed gives other images
    c = ShapesDataset(40, image_size=48, seed=8)
    assert not torch.equal(a.raw(0)[0], c.raw(0)[0])


def test_masks_labels_and_balance():
    ds = ShapesDataset(360, image_size=64, seed=0, cache=False)
    _, masks, labels = ds.render(range(360))
    counts = torch.bincount(labels, minlength=6)
    assert counts.min() > 35, counts  # roughly balanced over 6 classes
    area = masks.float().mean((1, 2))
    assert area.min() > 0.01 and area.max() < 0.5  # every image has one sizeable, bounded object
    # the object is never cut by the border (it is fully inside the image)
    assert not masks[:, 0, :].any() or masks.shape[1] < 16
    # fewer classes -> labels in range
    small = ShapesDataset(50, image_size=32, num_classes=3, seed=1)
    assert int(small.render(range(50))[2].max()) < 3 and small.classes == CLASSES[:3]
    with pytest.raises(ValueError):
        ShapesDataset(10, num_classes=7)


def test_object_has_contrast_with_background():
    ds = ShapesDataset(200, image_size=64, seed=2)
    im, masks, _ = ds.render(range(200))
    x = im.float() / 255
    for i in range(0, 200, 10):
        m = masks[i]
        ring = torch.nn.functional.max_pool2d(m[None, None].float(), 7, 1, 3)[0, 0].bool() & ~m
        inside = x[i][:, m].mean(1)
        around = x[i][:, ring].mean(1)
        assert (inside - around).abs().mean() > 0.1


def test_normalisation_constants_match_data():
    ds = ShapesDataset(400, image_size=64, seed=0, cache=False)
    mean, std = ds.stats(400)
    # statistical, not round-off: the constants were measured on another sample of the same generator
    assert torch.allclose(torch.tensor(mean), torch.tensor(SHAPES_MEAN), atol=0.03)
    assert torch.allclose(torch.tensor(std), torch.tensor(SHAPES_STD), atol=0.03)
    x, _, _ = ds[0]
    raw = ds.raw(0)[0].float() / 255
    back = x * torch.tensor(SHAPES_STD).view(3, 1, 1) + torch.tensor(SHAPES_MEAN).view(3, 1, 1)
    # (x - m) / s * s + m: four float32 roundings of values up to 1 / min(std)
    assert torch.allclose(back, raw, atol=4 * EPS32 / min(SHAPES_STD), rtol=0)


def test_shapes_datamodule_batches():
    dm = ShapesDataModule(num_train=40, num_val=24, num_test=8, image_size=32, batch_size=16, eval_batch_size=12)
    dm.setup("fit")
    x, y, m = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and m.shape == (16, 32, 32) and m.dtype == torch.bool
    xv, _, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[0] == 12
    assert dm.num_classes == 6 and len(dm.classes) == 6 and dm.mean == SHAPES_MEAN
    # train and val never share images (different seeds)
    assert not torch.equal(dm.data_train.raw(0)[0], dm.data_val.raw(0)[0])
    dm.setup("test")
    assert len(dm.data_test) == 8


def test_cifar10_datamodule_constructs_without_download(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path), image_size=64, download=False)
    assert dm.num_classes == 10 and dm.image_size == 64
    t = dm.transforms(train=True)
    from PIL import Image

    out = t(Image.new("RGB", (32, 32), (10, 200, 30)))
    assert out.shape == (3, 64, 64)
    with pytest.raises(ValueError):
        CIFAR10DataModule(num_classes=5)
    assert not any(tmp_path.iterdir())  # nothing downloaded


def _fake_imagefolder(root, classes=("a", "b", "c"), n=4, size=40):
    from PIL import Image

    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size, size + 8), (40 * ci, 10 * i, 100)).save(root / c / f"{i}.png")
    return root


def test_imagefolder_datamodule_split_and_dirs(tmp_path):
    root = _fake_imagefolder(tmp_path / "all")
    dm = ImageFolderDataModule(data_dir=str(root), image_size=32, val_fraction=0.25, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.classes == ["a", "b", "c"]
    assert len(dm.data_train) == 9 and len(dm.data_val) == 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    # val only (evaluation of a pretrained model)
    dm2 = ImageFolderDataModule(val_dir=str(root), image_size=32, num_classes=3, num_workers=0, eval_batch_size=5)
    dm2.setup("validate")
    x, _ = next(iter(dm2.val_dataloader()))
    assert x.shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match="num_classes"):
        bad = ImageFolderDataModule(val_dir=str(root), num_classes=10, num_workers=0)
        bad.setup("validate")
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataModule(val_dir=str(tmp_path / "missing"), num_workers=0).setup("validate")
    with pytest.raises(ValueError):
        ImageFolderDataModule()


def test_augmentation_is_a_dihedral_transform_of_image_and_mask():
    ds = ShapesDataset(4, image_size=32, seed=5, augment=True, mean=None, std=None)
    raw, label, mask = ds.raw(1)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, y, m = ds[1]
        assert int(y) == label
        img = (x * 255).round().to(torch.uint8)
        match = None
        for k in range(4):
            for flip in (False, True):
                r, rm = torch.rot90(raw, k, (1, 2)), torch.rot90(mask, k, (0, 1))
                if flip:
                    r, rm = r.flip(2), rm.flip(1)
                if torch.equal(r, img):
                    match = (k, flip)
                    assert torch.equal(rm, m)  # the mask moves with the image
        assert match is not None
        seen.add(match)
    assert len(seen) > 2
    dm = ShapesDataModule(num_train=4, num_val=4, image_size=16)
    dm.setup("fit")
    assert dm.data_train.augment and not dm.data_val.augment


def test_shortcut_marker_encodes_the_label_and_never_covers_the_object():
    plain = ShapesDataset(300, image_size=64, seed=0)
    ds = ShapesDataset(300, image_size=64, seed=0, shortcut=0.6)
    regions = ds.render_regions(range(300))
    im, obj, labels = ds.render(range(300))
    present = regions["marker"].any(dim=(1, 2))
    assert abs(float(present.float().mean()) - 0.6) < 0.1  # ~ Binomial(300, 0.6): sd 0.028
    assert torch.equal(obj, plain.render(range(300))[1]) and torch.equal(labels, plain.render(range(300))[2])
    # without a marker the image is exactly the one of shortcut=0; with one, only the marker changed
    p_im = plain.render(range(300))[0]
    assert torch.equal(im[~present], p_im[~present])
    assert torch.equal((im != p_im).any(1), regions["marker"])
    assert not (regions["marker"] & obj).any()
    side = max(3, round(64 / 8))
    assert bool((regions["marker"][present].flatten(1).sum(1) == side * side).all())
    # the marker's colour is the label's colour
    colours = (torch.tensor(MARKER_COLOURS) * 255).round().to(torch.uint8)
    for i in present.nonzero().flatten()[:20].tolist():
        pix = im[i][:, regions["marker"][i]]
        assert torch.equal(pix, colours[labels[i]][:, None].expand_as(pix))
    # items: named regions as a dict; shortcut=0 items unchanged (a mask tensor)
    x, y, r = ds[int(present.nonzero()[0])]
    assert set(r) == {"object", "marker"} and r["marker"].any()
    assert isinstance(plain[0][2], torch.Tensor)
    with pytest.raises(ValueError, match=r"shortcut.*\[0, 1\].*data.shortcut=0.9"):
        ShapesDataset(4, shortcut=1.5)


def test_shortcut_regions_follow_the_augmentation_and_the_test_split_option():
    ds = ShapesDataset(8, image_size=32, seed=1, shortcut=1.0, augment=True, mean=None, std=None)
    raw, _, regions = ds.raw_regions(2)
    torch.manual_seed(3)
    for _ in range(6):
        x, _, r = ds[2]
        img = (x * 255).round().to(torch.uint8)
        colour = img[:, r["marker"]]
        assert colour.shape[1] == regions["marker"].sum() and (colour == colour[:, :1]).all()
        assert r["object"].sum() == regions["object"].sum() and not (r["object"] & r["marker"]).any()
    dm = ShapesDataModule(num_train=16, num_val=8, num_test=8, image_size=32, batch_size=8, shortcut=1.0,
                          test_shortcut=0.0)
    dm.setup("fit")
    dm.setup("test")
    x, y, r = next(iter(dm.train_dataloader()))
    assert set(r) == {"object", "marker"} and r["marker"].shape == (8, 32, 32) and r["marker"].any(dim=(1, 2)).all()
    assert isinstance(next(iter(dm.val_dataloader()))[2], dict)
    xt, yt, mt = next(iter(dm.test_dataloader()))
    assert isinstance(mt, torch.Tensor) and mt.shape == (8, 32, 32)  # no marker in the test split
    assert ShapesDataModule(shortcut=0.3).test_shortcut == 0.3
    with pytest.raises(ValueError, match="data.test_shortcut"):
        ShapesDataModule(test_shortcut=-1)

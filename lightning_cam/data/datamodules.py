"""Lightning data modules: embedded shapes (default), CIFAR-10, any ImageFolder.

Every module exposes ``num_classes``, ``classes``, ``mean``, ``std``,
``image_size`` and ``task`` (``"classification"``, ``"segmentation"`` or
``"multilabel"``). Batches are ``(images, labels)``, plus ``masks`` (B,H,W) bool
for :class:`ShapesDataModule` (whose ``task`` option gives segmentation and
multi-label batches). Images are normalised with ``mean``/``std``
(pass the same values to the callback to un-normalise its overlays).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_cam.data.shapes import CLASSES, SHAPES_MEAN, SHAPES_STD, ShapesDataset, check_shortcut_classes
from lightning_cam.data.shapes_tasks import BACKGROUND, ShapesMultiLabel, ShapesSegmentation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TASKS = ("classification", "segmentation", "multilabel")


def _default_data_dir() -> str:
    return os.environ.get("LIGHTNING_CAM_DATA_DIR", str(Path.home() / ".cache" / "lightning-cam" / "data"))


class _Base(pl.LightningDataModule):
    task = "classification"

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, eval_batch_size: int | None) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None

    def _loader(self, ds: Dataset | None, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test if self.data_test is not None else self.data_val, False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class ShapesDataModule(_Base):
    """The embedded procedural dataset (see :mod:`lightning_cam.data.shapes`).

    Train / val / test use the seeds ``seed``, ``seed + 1``, ``seed + 2``, so they
    never share an image. ``augment``: random 90-degree rotations and flips of the
    training images (and masks). Batches: ``(images, labels, masks)``.

    ``task``: ``"classification"`` (default), ``"segmentation"`` (:class:`ShapesSegmentation`: batches
    ``(images, class maps (B,H,W) long, object masks)``, ``num_classes`` counts the background: 1 +
    the shapes, 7 for all six) or ``"multilabel"`` (:class:`ShapesMultiLabel`: 1 to ``max_objects``
    objects per image, batches ``(images, multi-hot (B,C) float, {"object": masks, "<class>": masks})``).

    ``shortcut=P`` (classification only): a class-coded marker in a fraction P of the train and val images (see
    :mod:`lightning_cam.data.shapes`); batches are then ``(images, labels, {"object": masks,
    "marker": masks})``. ``test_shortcut``: the same for the test split (``None`` = ``shortcut``;
    0 tests the model without the marker, i.e. whether it learned the shapes). ``shortcut_classes``:
    the marker on the images of these classes only (indices or names; None = every class).
    """

    def __init__(
        self,
        num_train: int = 5000,
        num_val: int = 1000,
        num_test: int = 1000,
        image_size: int = 64,
        num_classes: int = 6,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        mean: Sequence[float] = SHAPES_MEAN,
        std: Sequence[float] = SHAPES_STD,
        cache: bool = True,
        augment: bool = True,
        shortcut: float = 0.0,
        test_shortcut: float | None = None,
        shortcut_classes: Sequence[int | str] | None = None,
        task: str = "classification",
        max_objects: int = 3,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if task not in TASKS:
            raise ValueError(f"shapes: data.task must be one of {', '.join(TASKS)}, got {task!r}")
        if task != "classification" and (shortcut or test_shortcut or shortcut_classes is not None):
            raise ValueError(f"shapes: the shortcut options are for data.task=classification, not {task}")
        background = int(task == "segmentation")
        for name, p in (("shortcut", shortcut), ("test_shortcut", test_shortcut)):
            if p is not None and not 0.0 <= float(p) <= 1.0:
                raise ValueError(
                    f"shapes: data.{name} is the probability of a class-coded marker, in [0, 1]; got {p!r} "
                    f"(e.g. data.{name}=0.9)"
                )
        if not 2 + background <= num_classes <= len(CLASSES) + background:
            raise ValueError(
                f"shapes: num_classes must be in {2 + background}..{len(CLASSES) + background} for data.task={task}"
                + (" (the background counts)" if background else "") + f", got {num_classes}"
            )
        self.task = task
        self.max_objects = int(max_objects)
        self.num_train, self.num_val, self.num_test = int(num_train), int(num_val), int(num_test)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.classes = [BACKGROUND] * background + list(CLASSES[:num_classes - background])
        self.seed = int(seed)
        self.mean, self.std = tuple(mean), tuple(std)
        self.cache = cache
        self.augment = augment
        self.shortcut = float(shortcut)
        self.test_shortcut = self.shortcut if test_shortcut is None else float(test_shortcut)
        self.shortcut_classes = check_shortcut_classes(shortcut_classes, self.num_classes)

    def _ds(self, n: int, seed: int, augment: bool = False, shortcut: float = 0.0) -> Dataset:
        options = {"mean": self.mean, "std": self.std, "cache": self.cache, "augment": augment}
        if self.task == "segmentation":
            return ShapesSegmentation(n, self.image_size, self.num_classes, seed, **options)
        if self.task == "multilabel":
            return ShapesMultiLabel(n, self.image_size, self.num_classes, self.max_objects, seed, **options)
        return ShapesDataset(
            n, self.image_size, self.num_classes, seed, self.mean, self.std, self.cache, augment, shortcut,
            self.shortcut_classes,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.data_train is None:
            self.data_train = self._ds(self.num_train, self.seed, self.augment, self.shortcut)
        if stage in (None, "fit", "validate") and self.data_val is None:
            self.data_val = self._ds(self.num_val, self.seed + 1, shortcut=self.shortcut)
        if stage in (None, "test", "predict") and self.data_test is None:
            self.data_test = self._ds(self.num_test, self.seed + 2, shortcut=self.test_shortcut)


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says where it looked and what to do."""


class CIFAR10DataModule(_Base):
    """CIFAR-10 (torchvision); downloads into ``data_dir`` when ``download`` and online.

    Images are resized to ``image_size`` (32 = native). Training uses random crop
    (padding 4 at native scale) and horizontal flips.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 32,
        num_classes: int = 10,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        download: bool = True,
        augment: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if num_classes != 10:
            raise ValueError(f"cifar10 has 10 classes, got num_classes={num_classes}")
        self.data_dir = str(data_dir or _default_data_dir())
        self.image_size = int(image_size)
        self.num_classes = 10
        self.classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        self.download = download
        self.augment = augment
        self.mean, self.std = tuple(mean), tuple(std)

    def transforms(self, train: bool):
        from torchvision import transforms as T

        ops = []
        if self.image_size != 32:
            ops.append(T.Resize(self.image_size))
        if train and self.augment:
            ops += [T.RandomCrop(self.image_size, padding=max(1, self.image_size // 8)), T.RandomHorizontalFlip()]
        ops += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(ops)

    def prepare_data(self) -> None:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(self.data_dir, train=True, download=self.download)
            CIFAR10(self.data_dir, train=False, download=self.download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; "Dataset not found" a RuntimeError
            raise DatasetUnavailableError(
                f"CIFAR-10 is not available: it is not in {Path(self.data_dir).resolve()} "
                f"(looked for {Path(self.data_dir).resolve() / CIFAR10.base_folder}) and could not be "
                f"downloaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else err!r}).\n"
                f"Either run once with network access (it downloads there), or copy the files yourself: "
                f"download {CIFAR10.url} on a machine with network, then `tar -xzf {CIFAR10.filename} -C "
                f"{Path(self.data_dir).resolve()}` so that {CIFAR10.base_folder}/data_batch_1 ... exist, or point "
                f"data.data_dir (or LIGHTNING_CAM_DATA_DIR) at a folder that holds {CIFAR10.base_folder}/. "
                f"No network at all? The embedded dataset needs none: python train.py data=shapes"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        from torchvision.datasets import CIFAR10

        if self.data_train is None and stage in (None, "fit"):
            self.data_train = CIFAR10(self.data_dir, train=True, transform=self.transforms(True))
        if self.data_val is None:
            self.data_val = CIFAR10(self.data_dir, train=False, transform=self.transforms(False))
            self.data_test = self.data_val


class ImageFolderDataModule(_Base):
    """Any ``torchvision.datasets.ImageFolder`` tree (one sub-folder per class).

    Either ``train_dir`` + ``val_dir``, or a single ``data_dir`` split with
    ``val_fraction`` (seeded). For evaluation only (e.g. ImageNet val with a
    pretrained model, ``train: false``) give ``val_dir`` alone. Eval transform:
    resize to ``resize_size`` (default ``image_size * 256 / 224``) + center crop;
    train: RandomResizedCrop + flip. ImageNet mean/std by default.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_dir: str | None = None,
        val_dir: str | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        num_classes: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        augment: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if data_dir is None and train_dir is None and val_dir is None:
            raise ValueError("imagefolder: set data.data_dir, or data.train_dir and/or data.val_dir")
        self.data_dir = data_dir
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or round(self.image_size * 256 / 224))
        self.expected_classes = num_classes
        self.num_classes = num_classes
        self.classes: list[str] | None = None
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.augment = augment
        self.mean, self.std = tuple(mean), tuple(std)

    def folders(self) -> list[str]:
        """The configured folders (for validation of the paths)."""
        return [p for p in (self.data_dir, self.train_dir, self.val_dir) if p is not None]

    def transforms(self, train: bool):
        from torchvision import transforms as T

        if train and self.augment:
            ops = [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()]
        else:
            ops = [T.Resize(self.resize_size), T.CenterCrop(self.image_size)]
        return T.Compose(ops + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def _folder(self, path: str, train: bool):
        from torchvision.datasets import ImageFolder

        if not Path(path).is_dir():
            raise FileNotFoundError(f"imagefolder: directory not found: {path!r}")
        return ImageFolder(path, transform=self.transforms(train))

    def _set_classes(self, classes: list[str]) -> None:
        if self.expected_classes is not None and len(classes) != int(self.expected_classes):
            raise ValueError(
                f"imagefolder: data.num_classes={self.expected_classes} but the folder has {len(classes)} class "
                f"sub-folders; set data.num_classes={len(classes)}"
            )
        self.classes = list(classes)
        self.num_classes = len(classes)

    def setup(self, stage: str | None = None) -> None:
        if self.data_val is not None:
            return
        if self.data_dir is not None and self.val_dir is None and self.train_dir is None:
            train_full = self._folder(self.data_dir, True)
            val_full = self._folder(self.data_dir, False)
            self._set_classes(train_full.classes)
            n = len(train_full)
            n_val = max(1, int(round(n * self.val_fraction)))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.data_train = Subset(train_full, perm[n_val:])
            self.data_val = Subset(val_full, perm[:n_val])
        else:
            val_dir = self.val_dir or self.data_dir
            if self.train_dir is not None:
                self.data_train = self._folder(self.train_dir, True)
                self._set_classes(self.data_train.classes)
            if val_dir is not None:
                self.data_val = self._folder(val_dir, False)
                self._set_classes(self.data_val.classes)
            else:
                self.data_val = self._folder(self.train_dir, False)
        self.data_test = self.data_val

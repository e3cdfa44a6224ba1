"""A fixed, seeded held-out set of images for explanation monitoring.

The set is chosen once and must never disturb training:

* indices come from a private ``torch.Generator`` seeded with ``seed``: the
  same on every rank, in every process, after a resume (a checkpoint keeps them), stratified
  by class when the labels are known (the dataset's ``targets`` / ``labels``, or the user's
  ``labels``), so every class is in the set when ``num_samples`` >= the number of classes;
* images are read by indexing the dataset (``dataset[i]``), never by iterating
  a ``DataLoader`` (creating a loader iterator draws a seed from the global
  torch RNG and would change the shuffling that follows);
* everything runs inside :func:`preserved_rng`, which restores the torch (CPU
  and CUDA), numpy and python ``random`` states, and is seeded inside so that
  random val transforms give the same images every time;
* tensors are built outside inference mode (``trainer.validate`` runs under
  ``torch.inference_mode``; inference tensors could not be used later for
  gradient-based explanations during ``fit``).
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_cam.callback.label_targets import dense_label_classes, is_segmentation_labels

__all__ = [
    "HeldOut",
    "choose",
    "class_names",
    "dataset_labels",
    "dataset_of",
    "gather_from_dataset",
    "from_user",
    "gather_from_loader",
    "is_map_style",
    "preserved_rng",
    "select_indices",
    "split_sample",
]

_IMAGE_KEYS = ("image", "images", "img", "x", "input", "inputs", "pixel_values")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")
_MASK_KEYS = ("mask", "masks", "segmentation", "seg")


@dataclass
class HeldOut:
    """The held-out set: ``images`` (N, C, H, W) float, ``labels`` (N,) long or
    None, ``masks`` (N, H, W) bool or None (the object mask: pointing games),
    ``indices`` into the source dataset (None for user images / iterated
    loaders), ``regions``: named region masks ``{name: (N, H, W) bool}`` when the
    data carry several (a dict in the mask position, e.g. ``{"object": ...,
    "marker": ...}``; ``masks`` is then ``regions["object"]``), else None. ``dense_labels``: labels that
    are not one class per image, (N, H, W) segmentation masks or (N, C) multi-hot vectors (see
    :mod:`~lightning_cam.callback.label_targets`: ``labels`` then holds each mask's object class);
    ``images_of`` (rows,) the image of each row when the set was expanded to one row per
    (image, positive label), else None."""

    images: Tensor
    labels: Tensor | None = None
    masks: Tensor | None = None
    indices: list[int] | None = None
    source: str = "user"  # "user" | "dataset" | "loader"
    dataset_len: int | None = None
    regions: dict[str, Tensor] | None = None
    dense_labels: Tensor | None = None
    images_of: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@contextlib.contextmanager
def preserved_rng(seed: int | None = None, devices: Sequence[torch.device] | None = None) -> Iterator[None]:
    """Restore torch (CPU + CUDA ``devices``), numpy and python RNG states on exit.

    With ``seed``, all three are seeded inside the block (reproducible work
    that leaves the caller's streams exactly where they were).
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    cuda_devices = [d for d in (devices or []) if torch.device(d).type == "cuda"]
    with torch.random.fork_rng(devices=cuda_devices, enabled=True):
        try:
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % (2**32))
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def select_indices(n_total: int, num_samples: int, seed: int, labels: Tensor | None = None) -> list[int]:
    """``min(num_samples, n_total)`` distinct indices, sorted, from a private generator.

    With ``labels`` ((n_total,) class per item) the draw is stratified: in a seeded permutation, item
    ``i`` is the ``r_i``-th of its class ``c`` (``n_c`` items); the ``num_samples`` items of smallest
    ``(r_i / n_c, position)`` are kept. Every class gets one item before any gets a second (when
    ``num_samples`` >= the number of classes), then each about ``num_samples * n_c / n_total``."""
    if n_total <= 0:
        raise ValueError("the dataset to draw the held-out set from is empty")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n_total, generator=g)
    k = min(num_samples, n_total)
    if labels is None or k == n_total:
        return sorted(int(i) for i in perm[:k])
    cls = torch.as_tensor(labels).reshape(-1).long()[perm]  # class of each item in permuted order
    _, inverse, counts = torch.unique(cls, return_inverse=True, return_counts=True)
    by_class = torch.argsort(inverse, stable=True)  # grouped by class, permuted order kept inside
    first = torch.cumsum(counts, 0) - counts  # where each class starts in by_class
    rank = torch.empty_like(inverse)
    rank[by_class] = torch.arange(n_total) - first[inverse[by_class]]  # r_i: earlier items of its class
    key = rank.double() / counts[inverse].double()
    chosen = torch.argsort(key, stable=True)[:k]  # ties: the earlier position in the permutation
    return sorted(int(i) for i in perm[chosen])


def dataset_labels(dataset: Any) -> Tensor | None:
    """(len,) the class of every item when the dataset says without reading its items (``targets``,
    as torchvision, or ``labels``; through ``Subset``), else None."""
    base, idx = dataset, None
    while isinstance(base, torch.utils.data.Subset):
        idx = torch.as_tensor(base.indices) if idx is None else torch.as_tensor(base.indices)[idx]
        base = base.dataset
    for attr in ("targets", "labels"):
        values = getattr(base, attr, None)
        if values is None or isinstance(values, (str, bytes)):
            continue
        try:
            t = torch.as_tensor(values).reshape(-1).long()
        except (TypeError, ValueError, RuntimeError):
            continue
        t = t if idx is None else t[idx]
        if t.shape[0] == len(dataset):
            return t
    return None


def _to_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if hasattr(x, "size") and hasattr(x, "mode"):  # PIL image without ToTensor
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(x).float() / 255.0
    return torch.as_tensor(x)


def split_sample(sample: Any) -> tuple[Any, Any, Any]:
    """``(image, label, mask)`` of one dataset item or one batch.

    Accepts tuples/lists ``(image, label[, mask])``, dicts with common key
    names, or a bare image.
    """
    if isinstance(sample, Mapping):
        def pick(keys: tuple[str, ...]) -> Any:
            for k in keys:
                if k in sample:
                    return sample[k]
            return None

        image = pick(_IMAGE_KEYS)
        if image is None:
            raise ValueError(f"cannot find the image in a dataset item with keys {sorted(sample)}")
        return image, pick(_LABEL_KEYS), pick(_MASK_KEYS)
    if isinstance(sample, (tuple, list)):
        if not sample:
            raise ValueError("empty dataset item")
        image = sample[0]
        label = sample[1] if len(sample) > 1 else None
        mask = sample[2] if len(sample) > 2 else None
        return image, label, mask
    return sample, None, None


def _norm_mask(m: Tensor) -> Tensor:
    m = _to_tensor(m)
    if m.dim() >= 3 and m.shape[-3] == 1:  # (..., 1, H, W)
        m = m.squeeze(-3)
    return m.bool()


def _regions(masks: list[Any]) -> tuple[Tensor | None, dict[str, Tensor] | None]:
    """Stack per-item masks: tensors -> (object masks, None); dicts of named masks -> (their
    ``"object"`` entry or None, ``{name: (N, H, W)}`` over the names every item has)."""
    if not masks or any(m is None for m in masks):
        return None, None
    if all(isinstance(m, Mapping) for m in masks):
        names = [k for k in masks[0] if all(k in m for m in masks)]
        regions = {str(k): torch.stack([_norm_mask(m[k]) for m in masks]).clone() for k in names}
        return regions.get("object"), regions
    if any(isinstance(m, Mapping) for m in masks):
        raise ValueError("dataset items mix mask tensors and dicts of named region masks; use one kind")
    return torch.stack([_norm_mask(m) for m in masks]).clone(), None


def _item(masks: Any, j: int) -> Any:
    """Item ``j`` of a batched mask tensor or of a dict of them."""
    if masks is None:
        return None
    if isinstance(masks, Mapping):
        return {k: _to_tensor(v)[j] for k, v in masks.items()}
    return _to_tensor(masks)[j]


def _stack(
    images: list[Any], labels: list[Any], masks: list[Any]
) -> tuple[Tensor, Tensor | None, Tensor | None, dict[str, Tensor] | None, Tensor | None]:
    imgs = torch.stack([_to_tensor(i).float() for i in images]).clone()
    if imgs.dim() == 3:  # (N, H, W) grayscale
        imgs = imgs[:, None]
    lab = dense = None
    if labels and all(lbl is not None for lbl in labels):
        try:
            items = [_to_tensor(lbl) for lbl in labels]
        except (RuntimeError, ValueError, TypeError):
            items = []  # non-tensor targets (e.g. detection dicts): not shown
        if items and all(t.numel() == 1 for t in items):
            lab = torch.stack([t.long().reshape(()) for t in items]).clone()
        elif items and all(t.shape == items[0].shape for t in items):
            dense = torch.stack(items).clone()
    msk, regions = _regions(masks)
    lab, dense, msk = _dense_view(lab, dense, msk)
    return imgs, lab, msk, regions, dense


def _dense_view(labels: Tensor | None, dense: Tensor | None, masks: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Labels that are masks or multi-hot vectors: ``(labels, dense, masks)`` where a segmentation
    label gives each image's object class and, without other masks, the object's region."""
    if dense is None:
        return labels, None, masks
    if dense.ndim == 2:  # (N, C) multi-hot
        return None, dense.long() if not dense.is_floating_point() else dense, masks
    if is_segmentation_labels(dense):
        dense = dense.long()
        return dense_label_classes(dense), dense, (dense != 0) if masks is None else masks
    return labels, None, masks  # other shapes: not understood as labels, not shown


def dataset_of(loaders: Any) -> Any:
    """The dataset behind ``trainer.val_dataloaders`` / ``test_dataloaders``
    (a DataLoader, a list/tuple/dict of them, or None)."""
    loader = loaders
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if loader is None:
        return None, None
    return loader, getattr(loader, "dataset", None)


def _is_map_style(dataset: Any) -> bool:
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
        return False
    try:
        len(dataset)
    except TypeError:
        return False
    return hasattr(dataset, "__getitem__")


def gather_from_dataset(dataset: Any, indices: Sequence[int], seed: int = 0) -> HeldOut:
    """``dataset[i]`` for ``indices`` (RNG preserved, outside inference mode)."""
    images, labels, masks = [], [], []
    with preserved_rng(seed), torch.inference_mode(False):
        for i in indices:
            img, lbl, msk = split_sample(dataset[int(i)])
            images.append(img)
            labels.append(lbl)
            masks.append(msk)
        imgs, lab, msk, regions, dense = _stack(images, labels, masks)
    return HeldOut(imgs, lab, msk, list(map(int, indices)), "dataset", len(dataset), regions, dense)


def gather_from_loader(loader: Any, num_samples: int, seed: int = 0) -> HeldOut:
    """First ``num_samples`` items of an iterated loader (for iterable datasets).

    The iteration (which draws from the global RNG) happens inside
    :func:`preserved_rng`, so the training stream is unaffected.
    """
    images, labels, masks = [], [], []
    with preserved_rng(seed), torch.inference_mode(False):
        for batch in loader:
            img, lbl, msk = split_sample(batch)
            img = _to_tensor(img)
            n = img.shape[0]
            for j in range(n):
                images.append(img[j])
                labels.append(None if lbl is None else _to_tensor(lbl)[j])
                masks.append(_item(msk, j))
                if len(images) >= num_samples:
                    break
            if len(images) >= num_samples:
                break
        if not images:
            raise ValueError("the dataloader to draw the held-out set from yielded nothing")
        imgs, lab, msk, regions, dense = _stack(images, labels, masks)
    return HeldOut(imgs, lab, msk, None, "loader", None, regions, dense)


def from_user(
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[int] | None,
    masks: Tensor | Sequence[Tensor] | Mapping[str, Tensor] | None,
    num_samples: int,
    seed: int,
) -> HeldOut:
    """Held-out set from user tensors (a seeded subset when more than ``num_samples``); ``masks``
    may be a dict of named region masks ``{name: (N, H, W)}`` (``"object"`` drives the pointing games)."""
    with torch.inference_mode(False):
        imgs = images if isinstance(images, Tensor) else torch.stack([_to_tensor(i) for i in images])
        imgs = imgs.detach().float().cpu().clone()
        if imgs.dim() == 3:
            imgs = imgs[:, None]
        n = imgs.shape[0]
        lab = dense = None
        if labels is not None:
            given = _to_tensor(labels).detach().cpu().clone()
            lab, dense = (given.long().reshape(-1), None) if given.ndim <= 1 else (None, given)
        msk = regions = None
        if isinstance(masks, Mapping):
            regions = {str(k): _norm_mask(_to_tensor(v).detach().cpu()).clone() for k, v in masks.items()}
            msk = regions.get("object")
        elif masks is not None:
            msk = masks if isinstance(masks, Tensor) else torch.stack([_to_tensor(m) for m in masks])
            msk = _norm_mask(msk.detach().cpu()).clone()
        lab, dense, msk = _dense_view(lab, dense, msk)
        idx = list(range(n)) if n <= num_samples else select_indices(n, num_samples, seed, lab)
        if len(idx) < n:
            imgs = imgs[idx]
            lab = None if lab is None else lab[idx]
            dense = None if dense is None else dense[idx]
            msk = None if msk is None else msk[idx]
            regions = None if regions is None else {k: v[idx] for k, v in regions.items()}
    return HeldOut(imgs, lab, msk, idx, "user", n, regions, dense)


def is_map_style(dataset: Any) -> bool:
    return _is_map_style(dataset)


def choose(
    trainer: Any,
    stage: str,
    images: Any,
    labels: Any,
    masks: Any,
    num_samples: int,
    seed: int,
    restored: Mapping[str, Any] | None = None,
) -> HeldOut:
    """The callback's held-out set: the user's ``images``, else ``num_samples`` seeded items of the
    validation (test, for ``stage="test"``) dataset; ``restored`` (a checkpoint's state) keeps the same
    indices after a resume."""
    restored = restored or {}
    if images is not None:
        return from_user(images, labels, masks, num_samples, seed)
    order = ("test_dataloaders", "val_dataloaders") if stage == "test" else ("val_dataloaders", "test_dataloaders")
    loader = dataset = None
    errors: list[str] = []
    for attr in order:
        try:
            loader, dataset = dataset_of(getattr(trainer, attr, None))
        except Exception as err:  # noqa: BLE001 - a loader that cannot be built here: said below
            loader, dataset = None, None
            errors.append(f"trainer.{attr}: {type(err).__name__}: {err}")
        if loader is not None:
            break
    if loader is None:
        raise RuntimeError(
            "CAMCallback found no images to explain: give the Trainer validation data "
            "(val_dataloaders / a datamodule with val_dataloader) or pass images=... to CAMCallback"
            + (f" (reading the loaders failed: {'; '.join(errors)})" if errors else "")
        )
    if _is_map_style(dataset):
        n = len(dataset)
        indices = restored.get("indices") if restored.get("source") == "dataset" else None
        if indices is not None and (not indices or max(indices) >= n):
            warnings.warn(
                f"CAMCallback: the restored held-out indices do not fit the dataset of size {n}; "
                "choosing a new held-out set",
                RuntimeWarning,
                stacklevel=2,
            )
            indices = None
        if indices is None:  # stratified by class when the dataset knows its labels
            indices = select_indices(n, num_samples, seed, dataset_labels(dataset))
        return gather_from_dataset(dataset, indices, seed)
    if restored.get("source") == "loader" and restored.get("images") is not None:
        return HeldOut(restored["images"], restored.get("labels"), restored.get("masks"), None, "loader", None,
                       restored.get("regions"), restored.get("dense_labels"))
    if trainer.world_size <= 1:
        return gather_from_loader(loader, num_samples, seed)
    # an iterable dataset may be sharded per rank: take rank zero's images everywhere. Every rank
    # reaches the broadcast, whatever its own reading did (a rank that raised before it would leave
    # the others waiting in it).
    held = failure = None
    try:
        held = gather_from_loader(loader, num_samples, seed)
    except Exception as err:  # noqa: BLE001 - rank zero's outcome decides, below
        failure = err
    held = trainer.strategy.broadcast(held, src=0)
    if held is None:
        raise RuntimeError(
            "CAMCallback could not read its held-out images from the validation loader on rank 0"
            + (f": {type(failure).__name__}: {failure}" if failure is not None else " (see rank 0's log)")
        ) from failure
    return held


def class_names(trainer: Any, from_dataset: bool = True) -> list[str] | None:
    """Class names of the datamodule (``classes``), else of the validation dataset."""
    names = getattr(getattr(trainer, "datamodule", None), "classes", None)
    if names is None and from_dataset:
        _, ds = dataset_of(getattr(trainer, "val_dataloaders", None))
        names = getattr(ds, "classes", None)
    if isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names):
        return list(names)
    return None

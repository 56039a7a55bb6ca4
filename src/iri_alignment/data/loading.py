"""Batches for training, evaluation and inversion, one interface for every dataset.

``open_split(params, split)`` returns a split that yields ``(x, y)`` batches
with ``x`` float in [0, 1], (N, 3, H, W), on the requested device. The 32 px
datasets live in memory as uint8 and are shuffled with a seeded generator
(augmentation happens later, batched, in ``iri_alignment.augment``);
ImageNet streams from its folder with the standard 224 px transforms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from iri_alignment.data import load_arrays
from iri_alignment.data.sources import DatasetError
from iri_alignment.data.specs import get_spec


@dataclass
class InMemorySplit:
    """A split held as a uint8 (N, 3, H, W) tensor and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` as float [0, 1] and their labels."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.images[idx].to(device).float().div_(255), self.labels[idx].to(device)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", drop_last: bool = False, limit: int | None = None) -> Iterator:
        """Yield ``(x, y)`` batches; ``shuffle`` draws the order from ``generator``."""
        n = len(self) if limit is None else min(limit, len(self))
        order = torch.randperm(len(self), generator=generator)[:n] if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.get(order[start:start + batch_size], device)


def worker_message(err: BaseException) -> str:
    """The message of an error raised in a DataLoader worker, without the worker's traceback
    that torch wraps it in ("Caught DatasetError in DataLoader worker process 0. Original
    Traceback ...", the message on its last line)."""
    text = str(err)
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(prefix)
    return text[at + len(prefix):].strip() if "Original Traceback" in text and at >= 0 else text


class FolderSplit:
    """Images streamed from class folders: ImageNet (``root`` with train/ and val/, the
    standard transforms: train random-resized crop 224 and flip; val resize 256,
    centre crop 224), or, with ``dataset`` given, any ImageFolder (the ``folder`` dataset)."""

    def __init__(self, root: str, split: str, num_workers: int = 4, dataset=None):
        if dataset is None:
            from torchvision import transforms

            from iri_alignment.data.sources import imagenet_folder

            tf = (transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor()])
                  if split == "train" else
                  transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]))
            dataset = imagenet_folder(root, "train" if split == "train" else "val", transform=tf)
        self.dataset = dataset
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        """Every image's label, int64 (N,), without loading an image."""
        return torch.tensor(self.dataset.targets, dtype=torch.long)

    def get(self, indices, device="cpu"):
        items = [self.dataset[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]).to(device), torch.tensor([y for _, y in items], device=device)

    def batches(self, batch_size, *, shuffle=False, generator=None, device="cpu", drop_last=False, limit=None):
        dataset = self.dataset
        if limit is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                             num_workers=self.num_workers, drop_last=drop_last,
                                             pin_memory=torch.device(device).type == "cuda")
        try:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        except DatasetError as err:  # from a worker, torch wraps the message in the worker's traceback
            raise DatasetError(worker_message(err)) from None


def open_split(params: dict, split: str):
    """The ``train`` or ``test`` split of the study's dataset (``data.dataset``)."""
    data = params["data"]
    name = data["dataset"]
    if get_spec(name).family == "imagenet":
        return FolderSplit(data["imagenet_root"], split, data.get("num_workers", 4))
    if name == "folder":
        from iri_alignment.data.folder import image_folder

        size = data["folder"].get("size")
        if not size:
            raise ValueError("data.folder.size is unset and no model named the input size; set data.folder.size")
        return FolderSplit(data["folder"]["root"], split, data.get("num_workers", 4),
                           dataset=image_folder(data["folder"]["root"], size))
    arrays = load_arrays(name, split, data["root"], shapes=data["shapes"])
    images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).contiguous()
    return InMemorySplit(images, torch.from_numpy(arrays.labels))

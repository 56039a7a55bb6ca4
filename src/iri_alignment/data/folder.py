"""Your own images as the study's dataset (``data.dataset: folder``).

``data.folder.root`` holds one sub-folder per class (``root/<class>/<image>``),
images of any size in any format PIL reads. Each image is resized (shorter
side) and centre-cropped to ``data.folder.size``, or, when that is unset, to
the input size of the model being studied, and scaled to [0, 1]. Labels are
the class folders' indices in sorted order. The same images serve as targets
and for evaluation (both splits); no model is trained on them.
"""

from __future__ import annotations

from pathlib import Path

from iri_alignment.data.sources import IMAGE_SUFFIXES, DatasetError, read_rgb


def class_folders(root: str | Path) -> list[str]:
    """The sorted class folder names under ``root``; a DatasetError says what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data.folder.root {root} does not exist: make it a folder with one sub-folder of images per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class folders: put each class's images in {root}/<class>/")
    empty = [c for c in classes if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (root / c).iterdir())]
    if empty:
        raise DatasetError(f"{root} has class folders with no images ({', '.join(sorted(IMAGE_SUFFIXES))}): {', '.join(empty[:5])}")
    return classes


def folder_info(params: dict) -> dict:
    """``{"root", "classes", "num_classes", "size"}`` of the study's folder dataset (``size`` None: the model's)."""
    cfg = params["data"].get("folder")
    if not cfg:
        raise DatasetError("data.dataset is folder but data.folder is not set: give data.folder.root (and optionally size)")
    classes = class_folders(cfg["root"])
    return {"root": cfg["root"], "classes": classes, "num_classes": len(classes), "size": cfg.get("size")}


def with_image_size(params: dict, size: int) -> dict:
    """``params`` with ``data.folder.size`` set to ``size`` when the study leaves it to the model."""
    if params["data"]["dataset"] != "folder" or params["data"].get("folder", {}).get("size"):
        return params
    return {**params, "data": {**params["data"], "folder": {**params["data"]["folder"], "size": int(size)}}}


def image_folder(root: str | Path, size: int):
    """A torchvision ImageFolder over ``root`` yielding ([0, 1] tensors of side ``size``, class index)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    class_folders(root)
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    return ImageFolder(str(root), transform=tf, loader=read_rgb)

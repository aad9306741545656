"""Image input for the matcher: the only place where image files are read.

Conventions
-----------
``stored`` grid
    The pixel grid as it is stored in the file (what ``PIL.Image.open`` decodes
    before any EXIF orientation is applied). COLMAP keeps keypoints and camera
    intrinsics in this grid; it reads the EXIF orientation only to extract
    features on the upright image (colmap/colmap PR #4122).

``upright`` grid
    The stored image after applying the EXIF orientation tag (0x0112, values
    1..8 of the EXIF 2.3 specification), exactly as
    ``PIL.ImageOps.exif_transpose`` does. The matcher always looks at the
    upright image. :meth:`LoadedImage.to_stored` maps keypoints back to the
    stored grid with :func:`l2m_plugin.coords.upright_to_stored`.

Pixel coordinates are COLMAP's (top-left corner at (0, 0), centre of pixel
(i, j) at (i + 0.5, j + 0.5)); see :mod:`l2m_plugin.coords`.

Images are never downscaled here: the matcher resizes to its own working
resolution with :func:`resize_to_tensor`, and keypoints stay in the original
grid. Truncated files are detected because ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
is left at its default (False); this module never changes it. Memory is protected by Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels by default, so e.g.
8000 x 6000 images load fine); files above it raise :class:`ImageLoadError`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from l2m_plugin.coords import upright_size, upright_to_stored
from l2m_plugin.files import atomic_path

__all__ = [
    "MIN_IMAGE_SIZE",
    "ImageLoadError",
    "LoadedImage",
    "load_image",
    "resize_to_tensor",
    "IMAGE_EXTENSIONS",
    "list_images",
    "write_png",
    "file_fingerprint",
]

#: Smallest accepted upright width and height in pixels (one ViT patch).
MIN_IMAGE_SIZE = 14

_EXIF_ORIENTATION_TAG = 0x0112

# The transpose that PIL.ImageOps.exif_transpose applies for each orientation.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_PIL_SOURCE = "<PIL image>"
_ARRAY_SOURCE = "<array>"

_REEXPORT_HINT = (
    "Re-export the image (e.g. as PNG or JPEG) or re-download/re-copy it, "
    "and check that the copy opens in an image viewer."
)


class ImageLoadError(ValueError):
    """An input image cannot be used by the matcher.

    The message names the file (or says "array input" / "PIL image input")
    and says how to fix the problem.
    """


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the matcher.

    Attributes:
        image: the *upright* image (EXIF orientation applied), mode "RGB", 8 bit.
        stored_size: (width, height) of the image as stored in the file, before
            the EXIF orientation is applied.
        orientation: EXIF orientation (1..8) that was applied; 1 when none.
        source: the path as a string, or "<PIL image>" / "<array>".
    """

    image: Image.Image
    stored_size: tuple[int, int]
    orientation: int
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return self.image.size

    def to_stored(self, kpts: torch.Tensor) -> torch.Tensor:
        """Map pixel coordinates from the upright image to the stored grid.

        Args:
            kpts: (N, 2) (or (..., 2)) pixel coordinates (x, y) in the upright
                image, COLMAP convention (centres at i + 0.5). Integer tensors
                are converted to float32.
        Returns:
            Tensor of the same shape with coordinates in the stored grid (the
            grid COLMAP keeps keypoints in).
        Raises:
            ValueError: the last dimension is not 2.
        """
        if kpts.shape[-1:] != (2,):
            raise ValueError(f"kpts must have shape (N, 2), got {tuple(kpts.shape)}")
        if not kpts.is_floating_point():
            kpts = kpts.to(torch.float32)
        width, height = self.stored_size
        return upright_to_stored(kpts, width, height, self.orientation)


def _describe(source: str) -> str:
    if source == _ARRAY_SOURCE:
        return "array input"
    if source == _PIL_SOURCE:
        return "PIL image input"
    return f"image file {source}"


def _read_orientation(img: Image.Image) -> tuple[int, str | None]:
    """EXIF orientation of ``img`` (1 when absent) and a warning text if it was invalid."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # corrupt EXIF block: the pixels may still be fine
        return 1, f"could not parse EXIF data ({exc})"
    try:
        orientation = int(value)
    except (TypeError, ValueError):
        orientation = -1
    if orientation not in range(1, 9):
        return 1, f"invalid EXIF orientation value {value!r} (expected 1..8)"
    return orientation, None


def _to_rgb(img: Image.Image, source: str, copy: bool = True) -> Image.Image:
    """Convert a loaded PIL image of any supported mode to 8-bit RGB.

    The result is a new image, except for an RGB input with ``copy=False``.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy() if copy else img
    if mode.startswith("I;16") or mode == "I":
        # Pillow's convert() clips 16/32-bit values at 255; scale by the range instead.
        arr = np.asarray(img).astype(np.float64)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        return _gray_to_rgb(np.rint(arr / 257.0))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return _gray_to_rgb(np.rint(np.clip(arr * scale, 0.0, 255.0)))
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        pass
    try:  # e.g. premultiplied "La" has no direct conversion to RGB
        return img.convert("RGBA").convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(
            f"Cannot use {_describe(source)}: unsupported image mode {mode!r} ({exc}). "
            "Convert it to an 8-bit RGB or greyscale PNG/JPEG."
        ) from exc


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")


def _finish(img: Image.Image, source: str, exif: bool) -> tuple[LoadedImage, str | None]:
    """Orientation, RGB conversion and size check of a loaded (decoded) PIL image."""
    stored_size = (int(img.width), int(img.height))
    orientation, problem = _read_orientation(img) if exif else (1, None)
    width, height = upright_size(*stored_size, orientation)
    if width < MIN_IMAGE_SIZE or height < MIN_IMAGE_SIZE:
        raise ImageLoadError(
            f"Cannot use {_describe(source)}: it is {width}x{height} pixels, but the "
            f"matcher needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels (one ViT "
            "patch). Use a larger image."
        )
    # transpose() returns a new image, so an RGB input need not be copied first
    rgb = _to_rgb(img, source, copy=orientation == 1)
    if orientation != 1:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return LoadedImage(rgb, stored_size, orientation, source), problem


def _open_file(path: str, exif: bool) -> tuple[LoadedImage, str | None]:
    if not os.path.exists(path):
        raise ImageLoadError(
            f"Image file not found: {path} (current directory: {os.getcwd()}). "
            "Check the path and the image directory."
        )
    if os.path.isdir(path):
        raise ImageLoadError(
            f"Cannot read image file {path}: it is a directory, not a file. "
            "Pass the path of an image file inside it."
        )
    if os.path.getsize(path) == 0:
        raise ImageLoadError(
            f"Cannot read image file {path}: the file is empty (0 bytes), so it is not a "
            f"readable image. {_REEXPORT_HINT}"
        )
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Above the limit Pillow only warns (it raises above twice the limit); treat
            # both as errors so huge files never get decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if limit is not None and img.width * img.height > limit:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img.load()  # decode now, so truncated data is detected here
                return _finish(img, path, exif)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"Cannot read image file {path}: it exceeds Pillow's decompression-bomb limit "
            f"of {limit} pixels ({exc}). If the file is trusted, raise the limit with "
            "`PIL.Image.MAX_IMAGE_PIXELS = <pixels>` (or None to disable it), or "
            "downscale the image."
        ) from exc
    except PermissionError as exc:
        raise ImageLoadError(
            f"Cannot read image file {path}: permission denied. Check the file permissions."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"Cannot read image file {path}: the file is not a readable image (unknown or "
            f"corrupt format). {_REEXPORT_HINT}"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # OSError, SyntaxError, EOFError, zlib/struct errors, ...
        kind = "is truncated" if "truncated" in str(exc) else "is corrupt or truncated"
        raise ImageLoadError(
            f"Cannot read image file {path}: the file {kind} and is not a readable image "
            f"({type(exc).__name__}: {exc}). {_REEXPORT_HINT}"
        ) from exc


def _array_to_image(arr: np.ndarray) -> Image.Image:
    what = "Cannot use array input"
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] != 1 else arr[..., 0]
    elif arr.ndim != 2:
        raise ImageLoadError(
            f"{what}: shape {arr.shape} is not supported. Pass an array of shape "
            "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (channels last)."
        )
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        vals = arr.astype(np.float64)
        if not np.isfinite(vals).all() or (vals.size and (vals.min() < 0 or vals.max() > 1)):
            lo, hi = (np.nanmin(vals), np.nanmax(vals)) if vals.size else (0, 0)
            raise ImageLoadError(
                f"{what}: float arrays must hold finite values in [0, 1], got range "
                f"[{lo}, {hi}]. Divide by 255 (8-bit data) or clip to [0, 1]."
            )
        out = np.rint(vals * 255.0).astype(np.uint8)
    else:
        raise ImageLoadError(
            f"{what}: dtype {arr.dtype} is not supported. Use uint8, uint16, or float32/"
            "float64 with values in [0, 1]."
        )
    out = np.ascontiguousarray(out)
    return Image.fromarray(out)  # 2-D uint8 -> "L", (H, W, 3) uint8 -> "RGB"


def load_image(source, *, exif: bool = True) -> LoadedImage:
    """Load an image for the matcher as an upright 8-bit RGB PIL image.

    Args:
        source: a path (``str`` or ``os.PathLike``); a ``PIL.Image.Image`` (it is
            neither closed nor modified); or a numpy array of shape (H, W),
            (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped) with dtype uint8,
            uint16 (scaled so that 65535 -> 255) or float in [0, 1].
        exif: apply the EXIF orientation tag (files and PIL images), as
            ``PIL.ImageOps.exif_transpose`` does. Invalid values (e.g. 0 or 9)
            are treated as 1 with a warning. With ``exif=False`` the stored grid
            is kept and ``orientation`` is 1. Arrays have no EXIF data.

    All PIL modes are converted to RGB: alpha is dropped, palettes expanded,
    16/32-bit greyscale ("I;16", "I") scaled by 1/257 (values clipped to
    0..65535 first for "I"), float greyscale ("F") taken as [0, 1] if its
    maximum is <= 1 and as [0, 255] otherwise. Images are not resized.

    Returns:
        :class:`LoadedImage` with the upright image, the stored size, the
        applied orientation and the source.
    Raises:
        ImageLoadError: missing file, directory, empty/corrupt/truncated file,
            file above ``PIL.Image.MAX_IMAGE_PIXELS``, unsupported mode, dtype,
            shape or value range, upright size below 14x14 pixels, or an
            unsupported ``source`` type.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(source))
        loaded, problem = _open_file(path, exif)
    elif isinstance(source, Image.Image):
        try:
            source.load()
        except Exception as exc:
            name = getattr(source, "filename", "") or "PIL image input"
            raise ImageLoadError(
                f"Cannot use PIL image input ({name}): its pixel data cannot be decoded "
                f"({type(exc).__name__}: {exc}). {_REEXPORT_HINT}"
            ) from exc
        loaded, problem = _finish(source, _PIL_SOURCE, exif)
    elif isinstance(source, np.ndarray):
        loaded, problem = _finish(_array_to_image(source), _ARRAY_SOURCE, False)
    else:
        hint = (
            " Convert tensors with tensor.cpu().numpy() (H, W, C)."
            if isinstance(source, torch.Tensor)
            else ""
        )
        raise ImageLoadError(
            f"Cannot use input of type {type(source).__name__}: load_image accepts a file "
            f"path, a PIL.Image.Image or a numpy array.{hint}"
        )
    if problem is not None:
        warnings.warn(
            f"{_describe(loaded.source)}: {problem}; treating the orientation as 1 "
            "(no rotation). Fix the EXIF tag if the image displays rotated.",
            stacklevel=2,
        )
    return loaded


def resize_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize an RGB PIL image and convert it to a float tensor in [0, 1].

    The resize is ``image.resize((w, h), Image.BICUBIC)``, which is what
    ``torchvision.transforms.Resize`` does for PIL input (RoMa's test transform),
    and the conversion is ``np.asarray(img, dtype=np.float32) / 255.0``
    transposed to channels first, identical to RoMa's ``ToTensorScaled``.

    Args:
        image: mode "RGB" PIL image (e.g. :attr:`LoadedImage.image`).
        size: (height, width) of the output. No resize when it equals the
            image size.
    Returns:
        float32 tensor of shape (3, height, width), values in [0, 1].
    Raises:
        ValueError: the image is not RGB or the size is not two positive ints.
    """
    if image.mode != "RGB":
        raise ValueError(
            f"resize_to_tensor expects an RGB image, got mode {image.mode!r}; "
            "load it with l2m_plugin.io.load_image."
        )
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be two positive integers (height, width), got {size}")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


#: file extensions (lower case) that :func:`list_images` takes for images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _check_unique_keys(names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for n in names:
        k = n.replace("/", "-")
        if k in seen and seen[k] != n:
            raise ValueError(
                f"image names {seen[k]!r} and {n!r} collide in hloc's h5 layout (which replaces '/' with '-'): "
                "rename one of the files"
            )
        if k in seen:
            raise ValueError(f"image name {n!r} is listed twice: image names must be unique")
        seen[k] = n


def list_images(image_dir: str | Path, names: Sequence[str] | None = None, *, check_hloc_keys: bool = True) -> list[str]:
    """Sorted image names under ``image_dir`` (recursive; by extension, case-insensitive).

    Args:
        image_dir: folder of images; sub-folders are searched too.
        names: optional explicit list of names (checked to exist) instead of a search.
        check_hloc_keys: refuse names that hloc's h5 layout cannot tell apart (for SfM and
            benchmarks; ``l2m synth`` writes no h5 and passes False).
    Hidden files and folders (names starting with ``.``) are skipped.
    Returns:
        list of names relative to ``image_dir``, ``/``-separated.
    Raises:
        FileNotFoundError: ``image_dir`` missing, no images, or a listed name missing.
        ValueError: two names that hloc's h5 layout cannot tell apart (``a/b.jpg`` and
            ``a-b.jpg``), or a name listed twice.
    """
    root = Path(image_dir)
    if not root.is_dir():
        what = "is a file, not a folder of images" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}")
    if names is None:
        found = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(s.startswith(".") for s in p.relative_to(root).parts)
        ]
        names = sorted(found)
        if not names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    else:
        names = list(names)
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} listed images are not in {root}, e.g. {missing[:3]}"
            )
    for n in names:
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(n).decode("utf-8", "backslashreplace")
            raise ValueError(
                f"image file name {shown!r} under {root} is not valid UTF-8, which HDF5 and COLMAP "
                "need for image names: rename the file"
            ) from None
    if check_hloc_keys:
        _check_unique_keys(names)
    return names


def write_png(path: str | os.PathLike, image) -> Path:
    """Write an image as PNG, atomically (a crash never leaves a truncated file).

    Args:
        path: the ``.png`` file.
        image: (H, W, 3) uint8 RGB array, or a PIL image.
    Returns:
        ``path``.
    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def file_fingerprint(path: str | os.PathLike) -> str:
    """What identifies a file's content: ``"<bytes>:<first 16 hex digits of its SHA-1>"``.

    Finished pairs are keyed by it, so a photo replaced under the same name is matched again
    (its size, mtime or name alone would not tell).

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha1()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return f"{n}:{h.hexdigest()[:16]}"

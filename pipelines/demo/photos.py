"""Real photographs that ship with Debian and PyPI packages, for the demo and benchmarks
(no downloads): opencv-doc's examples, mate-backgrounds, tuxpaint-stamps-default, and
scikit-image's bundled data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

from pipelines.apt import apt_install

PACKAGES = {
    "opencv-doc": "/usr/share/doc/opencv-doc/examples/data",
    "mate-backgrounds": "/usr/share/backgrounds/mate",
    "tuxpaint-stamps-default": "/usr/share/tuxpaint/stamps",
}


def ensure_packages() -> None:
    """apt-get install the image packages that are missing (as root; else exit with the
    command to run)."""
    missing = [p for p, d in PACKAGES.items() if not Path(d).is_dir()]
    if missing:
        apt_install(missing, "image packages")


def _image_files() -> list[Path]:
    roots = list(PACKAGES.values())
    try:
        import skimage

        roots.append(str(Path(skimage.__file__).parent / "data"))
    except ImportError:
        pass
    files = []
    for root in roots:
        files += [p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    return sorted(files)


def real_photos(
    max_side: int,
    min_side: int = 64,
    min_std: float = 20.0,
    limit: int | None = None,
    max_bits: int = 8,
    compose: Callable[[str, Image.Image], Image.Image] | None = None,
) -> dict[str, Image.Image]:
    """Distinct RGB photos from the installed packages (name -> image at most ``max_side``),
    transparency flattened onto white: near-blank ones (grey-level std below ``min_std``:
    some stamps flatten to white) are left out, and so is any image whose pHash, or its
    mirror image's, is within ``max_bits`` of one already taken (the packages hold copies
    themselves: one glyph in two sizes, ``*_mirror`` stamps, a render and its mirror), so
    that the only copies are the ones a caller makes. ``limit``: stop after that many.
    ``compose(name, rgba)``: the RGB image to return instead (e.g. the object on another
    background); the checks above are made on the white-flattened image."""
    images, seen = {}, []
    for path in _image_files():
        if limit is not None and len(images) >= limit:
            break
        try:
            with Image.open(path) as raw:
                raw.draft("RGB", (max_side, max_side))
                rgba = raw.convert("RGBA")
        except Exception:  # noqa: BLE001 - a package file that is no image is skipped
            continue
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
        image.thumbnail((max_side, max_side))
        if min(image.size) < min_side or np.asarray(image.convert("L")).std() < min_std:
            continue
        codes = (imagehash.phash(image), imagehash.phash(ImageOps.mirror(image)))
        if all(code - other > max_bits for code in codes for other in seen):
            seen.append(codes[0])
            name = f"{path.parent.name}/{path.stem}"
            images[name] = image if compose is None else compose(name, _fitted(rgba, max_side))
    return images


def _fitted(image: Image.Image, max_side: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((max_side, max_side))
    return image

"""Guest image loading: arm64 Linux Image and ELF."""

from pvkit.loader.image import BootImage, ImageError, load_image

__all__ = ["BootImage", "ImageError", "load_image"]

"""napari-virtual-stain: virtual staining of microscopy images in napari."""

__version__ = "0.1.0"

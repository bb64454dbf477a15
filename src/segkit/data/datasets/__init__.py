"""Dataset families. Each returns ``(image HxWxC uint8, mask HxW int64 train ids)`` before transforms.

C is 3 (RGB), or 4 for RGB-D (SUN RGB-D with ``use_depth``).
"""

from segkit.data.datasets.ade20k import ADE20K
from segkit.data.datasets.base import PairedFilesDataset
from segkit.data.datasets.camvid import CamVid
from segkit.data.datasets.cityscapes import Cityscapes
from segkit.data.datasets.folder import ImageMaskFolder
from segkit.data.datasets.sunrgbd import SUNRGBD
from segkit.data.datasets.synthetic import SyntheticShapes
from segkit.data.datasets.voc import VOCSegmentation

__all__ = [
    "PairedFilesDataset",
    "CamVid",
    "SyntheticShapes",
    "Cityscapes",
    "ADE20K",
    "VOCSegmentation",
    "SUNRGBD",
    "ImageMaskFolder",
]

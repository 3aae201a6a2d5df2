"""Datasets for training and evaluation: a synthetic multi-identity head dataset rendered with
gshead's own rasterizer, real video folders (VFHQ-style), and the shard format both are stored in.

    from gshead.data import ReenactmentDataset, write_synthetic_dataset

    write_synthetic_dataset("synth", identities=100, frames=8, size=128)   # or: gshead data synth
    train = ReenactmentDataset("synth", "train", targets=2, seed=0)        # ReenactmentSample items
    item = train[0]  # source_image [1, 3, S, S], source, source_camera, target_images [2, 3, S, S], ...

Items are ``gshead.core.types.ReenactmentSample``; a ``DataLoader`` needs ``collate_fn=list``
(samples keep their own batch dimension). Modules: ``format`` (on-disk layout, reader),
``synthetic`` (the generator), ``videos`` (real video folders).
"""

from gshead.data.format import DatasetInfo, ReenactmentDataset, read_info
from gshead.data.synthetic import write_synthetic_dataset
from gshead.data.videos import VideoClipDataset, convert_video_folder

__all__ = [
    "DatasetInfo",
    "ReenactmentDataset",
    "VideoClipDataset",
    "convert_video_folder",
    "read_info",
    "write_synthetic_dataset",
]

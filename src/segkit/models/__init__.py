"""Networks (``SegmentationNet`` subclasses in ``nets/``, the contract in ``base``), backbones, and the one
SegmentationModule."""

"""Networks (plain ``nn.Module``s in ``nets/``), backbones, and the one SegmentationModule."""

"""One file per architecture, each a ``segkit.models.base.SegmentationNet``: B x C x H x W -> B x K x H x W logits
(a dict with ``out`` and the auxiliary outputs in training mode), its trunk as ``backbone``."""

"""One file per architecture. Each net maps B x C x H x W -> B x K x H x W (or a dict with ``out``)."""

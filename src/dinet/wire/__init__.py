"""Message schemas, framing, protocol ids: the bottom layer, no I/O of its own."""

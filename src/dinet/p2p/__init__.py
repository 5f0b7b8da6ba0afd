"""p2p layer."""

"""Asking the network: discovery, choice, streaming and failover."""

"""trust layer: per-peer reputation, majority votes over replicas."""

from dinet.trust.reputation import Event, Reputation, Standing

__all__ = ["Event", "Reputation", "Standing"]

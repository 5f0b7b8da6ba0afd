"""The NAT lab: namespaces, home routers behind NAT, a WAN with delay (see README.md here)."""

from tests.lab.nat import LabError, NatLab

__all__ = ["LabError", "NatLab"]

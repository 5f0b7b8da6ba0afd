"""Sans-IO cores of the overlay network: membership, lookup, coordinates and demand.

They take events and return actions, with no I/O, libp2p or trio, so the node and
the simulator (bench/simulate.py) run the same code."""

"""Engines for tests only: nothing here serves a real request.

`liar` makes a node lie about what it generated, to test verification; it is refused
unless DINET_ALLOW_LIARS=1 is set. `fake` serves a FAKE model (`fake-echo`) without
llama.cpp, for benchmarks of many nodes on one machine (`bench/scale.py`).
"""

"""The peer-to-peer layer: the only package that imports py-libp2p.

host.py       PeerHost, the facade everything above sees: identity, protocol handlers,
              streams, dials, addresses, DHT provider records, gossip
streams.py    Stream and FramedStream (frames over a stream), open_framed
joining.py    Joiner: the one place where a process meets peers (bootstrap, mDNS,
              manifests, DHT providers) and learns what they know
discovery.py  the manifest query and mDNS announcements
directory.py  the verified manifests a process knows
liveness.py   noticing dead peers, and their return
identity.py   the ed25519 identity kept in a home (as dinet.wire.keys.SigningKey)
reach.py      Reachability, and running a host's reach: relaying while public,
              reservations while not, hole punching
relay.py      reservations kept on relays, circuits dialed through them
holepunch.py  DCUtR (the library's, counted and adjusted)
_dialing.py   happy-eyeballs dialing of direct and circuit addresses
_relay_fixes.py  the library's relay side, fixed and bounded (subclasses)
"""

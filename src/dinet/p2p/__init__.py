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
addresses.py  AddressBook: listen, observed, announced and UPnP-mapped addresses, which
              peers dial back, and which the host advertises
autonat.py    AutoNAT v1 with a dial-back on a fresh connection (server and asking)
reachability.py  Reachability, and how dial-back answers decide it (sans-IO)
upnp.py       --upnp: leased port mappings on the home router
gate.py       who may connect: a private swarm's key and an allowlist, on every connection
pnet.py       the swarm key file and libp2p's pre-shared key layer (XSalsa20)
allowlist.py  the allowlist file, reloaded when it changes
reach.py      running a host's reach: relaying while public,
              reservations while not, hole punching
relay.py      reservations kept on relays, circuits dialed through them
holepunch.py  DCUtR (the library's, counted and adjusted)
_dialing.py   happy-eyeballs dialing of direct and circuit addresses
_relay_fixes.py  the library's relay side, fixed and bounded (subclasses)
"""

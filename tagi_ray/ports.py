"""Free TCP ports on loopback, for servers a process starts itself (Ray nodes, Serve, gloo)."""
from __future__ import annotations

import socket


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()

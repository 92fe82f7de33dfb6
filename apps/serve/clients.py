"""Who a request comes from, decided once: the peer's address, or, when the peer is a proxy named
by --trust-proxy, the address that proxy reports; and the key the per-client limits count it by.

X-Forwarded-For (or RFC 7239 Forwarded, with --proxy-header forwarded) is believed only from a
trusted peer, and then read right to left: each trusted hop vouches for the address to its left,
so the first address that is not a trusted proxy is the client. Anything further left was written
by the client and is ignored. IPv6 clients are keyed by their network (/64 by default): any host
can choose among 2^64 addresses of its own.
"""
from __future__ import annotations

import functools
import ipaddress
import re

from .guard import SCOPE_KEY, GuardError

HEADERS = {"x-forwarded-for": b"x-forwarded-for", "forwarded": b"forwarded"}
IPV6_PREFIXES = (48, 56, 64)
_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)')


def parse_proxies(text: str | None) -> tuple:
    """--trust-proxy '127.0.0.1,10.0.0.0/8,::1' as networks."""
    if not text:
        return ()
    nets = []
    for part in text.split(","):
        try:
            nets.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise GuardError(f"--trust-proxy {text!r}: {part.strip()!r} is not an IP address or network "
                             "(give the proxy's address, e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(nets)


def _address(text: str):
    """An IP address from a header value ('1.2.3.4', '1.2.3.4:80', '[::1]:80', '"[::1]"'), else None."""
    return _parse(text) if len(text) <= 64 else None      # (no address is longer: the cache stays small)


@functools.lru_cache(maxsize=8192)      # proxies and returning clients repeat: parsing is most of the cost
def _parse(text: str):
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


class ClientAddresses:
    def __init__(self, trusted: tuple = (), header: str = "x-forwarded-for", ipv6_prefix: int = 64):
        self.trusted, self.header, self.ipv6_prefix = trusted, HEADERS[header], ipv6_prefix
        self.is_trusted = functools.lru_cache(maxsize=4096)(lambda ip: any(ip in net for net in trusted))

    def client(self, peer: str, headers) -> str:
        """The client's address for a request from `peer` with these (raw ASGI) headers."""
        ip = _address(peer)
        if ip is None or not self.trusted or not self.is_trusted(ip):
            return str(ip) if ip is not None else peer
        values = [v.decode("latin-1") for k, v in headers if k == self.header]
        if self.header == b"forwarded":
            hops = [m.group(1) for v in values for element in v.split(",") if (m := _FOR.search(element))]
        else:
            hops = [h for v in values for h in v.split(",")]
        for hop in reversed(hops):
            reported = _address(hop)
            if reported is None:        # a trusted proxy wrote what we cannot read: it is the client
                break
            ip = reported
            if not self.is_trusted(ip):
                break
        return str(ip)

    def key(self, client: str) -> str:
        """What the limits count `client` by: its address, or its IPv6 network."""
        ip = _address(client)
        if ip is None or ip.version == 4:
            return client
        return str(ipaddress.IPv6Network((int(ip) >> (128 - self.ipv6_prefix) << (128 - self.ipv6_prefix),
                                          self.ipv6_prefix)))


class ClientMiddleware:
    """ASGI middleware, outermost: puts the decided address in scope["client"] (for the access log
    and the app) and its key in scope[SCOPE_KEY] (for the rate limit and the per-client cap)."""

    def __init__(self, app, addresses: ClientAddresses):
        self.app, self.addresses = app, addresses

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            peer, port = scope.get("client") or ("-", 0)
            client = self.addresses.client(peer, scope["headers"])
            scope["client"] = (client, port if client == peer else 0)
            scope[SCOPE_KEY] = self.addresses.key(client)
        return await self.app(scope, receive, send)

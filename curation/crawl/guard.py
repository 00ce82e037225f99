"""What the crawler may reach: the SSRF address policy and the domain blocklist.

Addresses are checked twice: IP literals (including legacy numeric forms such as
``2130706433`` or ``0x7f.1``) before any connection, and every DNS answer inside the
resolver that the HTTP client connects with, so a name cannot resolve to one address
for the check and another for the connection. Redirects go through both checks again.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.urls import IPAddress, parse_ip_literal
from manifests.config import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that embed an IPv4 address a packet may end up at.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4, NAT64 or compatible IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip))
    return None


@functools.lru_cache(maxsize=65536)  # addresses repeat across a crawl's URLs
def is_public(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


@dataclass
class AddressPolicy:
    """Which addresses may be connected to: public ones, plus explicitly allowed networks."""

    allow_private_networks: bool = False
    allowed_networks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._allowed: list[Network] = [_network(n) for n in self.allowed_networks]

    def permits(self, ip: IPAddress) -> bool:
        if self.allow_private_networks or is_public(ip):
            return True
        return any(ip.version == net.version and ip in net for net in self._allowed)

    def check(self, ip: IPAddress, host: str) -> None:
        if not self.permits(ip):
            raise CrawlError(
                ErrorCode.BLOCKED_PRIVATE_ADDRESS,
                f"{host} is {ip}, a non-public address (pass --allow-private-networks to allow)",
            )

    def check_literal(self, host: str) -> None:
        ip = parse_ip_literal(host)
        if ip is not None:
            self.check(ip, host)


def _network(cidr: str) -> Network:
    try:
        return ipaddress.ip_network(cidr)
    except ValueError as exc:
        raise ConfigError(f"fetch.allowed_networks: {cidr!r} is not a network ({exc})") from None


class DomainBlocklist:
    """Hosts refused before any lookup: a listed domain blocks itself and its subdomains."""

    def __init__(self, domains: Iterable[str] = ()) -> None:
        self._domains = {d.strip().lower().rstrip(".") for d in domains if d.strip()}

    @classmethod
    def from_file(cls, path: str | Path) -> DomainBlocklist:
        """One domain per line; ``#`` starts a comment."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise FileNotFoundError(f"domain blocklist {path}: cannot read ({exc})") from exc
        return cls(line.split("#", 1)[0] for line in lines)

    def __len__(self) -> int:
        return len(self._domains)

    def blocks(self, host: str) -> bool:
        if not self._domains:
            return False
        labels = host.lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self._domains for i in range(len(labels)))

    def check(self, host: str) -> None:
        if self.blocks(host):
            raise CrawlError(ErrorCode.BLOCKED_DOMAIN, f"{host} is on the domain blocklist")


class GuardedResolver(AbstractResolver):
    """A resolver that returns only the answers the policy permits, and fails if none is.

    The HTTP client connects only to addresses this resolver returned, so the check
    holds at connection time, also against DNS rebinding.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[dict[str, Any]]:
        ip = parse_ip_literal(host)
        if ip is not None:  # legacy numeric forms reach here as "names"
            self._policy.check(ip, host)
        try:
            answers = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise CrawlError(ErrorCode.DNS, f"{host} did not resolve ({exc})",
                             host_failure=True) from exc  # fmt: skip
        allowed = [a for a in answers if self._policy.permits(ipaddress.ip_address(a["host"]))]
        if not allowed:
            self._policy.check(ipaddress.ip_address(answers[0]["host"]), host)
        return allowed

    async def close(self) -> None:
        await self._inner.close()

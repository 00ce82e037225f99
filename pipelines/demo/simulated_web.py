"""A web shaped like the real one, on loopback: thousands of hosts, their own DNS,
latencies, rate limits and the failures a crawl meets; and its ground truth.

Every 127.a.b.c address routes to the loopback interface, so one listener answers them
all and tells the hosts apart by the address a connection came in on. Names
``*.bench.test`` are answered by a small DNS server of its own (UDP). Delays are made by
the server (no traffic shaping here): a new connection costs one round trip more than a
reused one, the first answer to a name is slow and later ones are quick (a resolver's
cache), bodies are paced at the host's bandwidth.

:func:`make_workload` draws the web from a :class:`WebShape` with a fixed seed: hosts with
Zipf popularity and a few rate-limited CDN hosts, and what goes wrong where. Each URL knows
whether a well-behaved client can fetch it (:attr:`SimUrl.fetchable`): an image, a 503
that succeeds on a later try, a redirect to an image, or a CDN image behind 429s. The
rest cannot: no such name, a resolver that never answers, a host that resets or never
answers, 404, HTML, a truncated body, a body over any sane byte cap, a 1 KB/s trickle
longer than a minute, ``X-Robots-Tag: noai``, or a path its host's robots.txt disallows.

:class:`simulated_web` runs the DNS and HTTP servers in a process of their own and, on
exit, returns what they saw (:class:`WebStats`): connections per host, 429s sent, DNS
queries per name and record type.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
import socket
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

DOMAIN = "bench.test"
HOST_FAILURES = ("nxdomain", "silent_dns", "blackhole", "reset")
URL_FAILURES = ("not_found", "flaky", "html", "redirect", "truncated", "oversized", "trickle",
                "noai")  # fmt: skip
FETCHABLE = {"image", "flaky", "redirect"}
TRICKLE_BYTES_PER_S = 1024
TRICKLE_BODY = 64 * 1024  # over a minute at 1 KB/s
OVERSIZED_BODY = 24 * 1024 * 1024  # over the crawler's 16 MiB cap
ROBOTS_TXT = b"User-agent: *\nDisallow: /private/\n"
_NOT_FOUND = (404, {"Content-Type": "text/html"}, b"<h1>404</h1>")


@dataclass(frozen=True)
class WebShape:
    """What the web looks like; fractions are of hosts (host failures) or of URLs."""

    urls: int = 20_000
    hosts: int = 8_000
    zipf_exponent: float = 1.0
    cdn_hosts: int = 4
    cdn_url_share: float = 0.08
    cdn_rate_per_s: float = 40.0  # requests a CDN host serves per second before 429s
    dns_median_s: float = 0.04  # a name's first lookup; later ones take a millisecond
    rtt_median_s: float = 0.06  # per host
    ttfb_median_s: float = 0.12  # per request: one round trip plus the server's think time
    latency_sigma: float = 0.6  # of every lognormal above
    bandwidth_median: float = 2e6  # bytes/s, per host
    image_size: tuple[int, int] = (160, 120)
    distinct_images: int = 64
    host_failures: dict[str, float] = field(
        default_factory=lambda: {"nxdomain": 0.03, "silent_dns": 0.01, "blackhole": 0.01,
                                 "reset": 0.01})  # fmt: skip
    url_failures: dict[str, float] = field(
        default_factory=lambda: {"not_found": 0.05, "flaky": 0.02, "html": 0.02,
                                 "redirect": 0.03, "truncated": 0.01, "oversized": 0.005,
                                 "trickle": 0.01, "noai": 0.01})  # fmt: skip
    robots_host_share: float = 0.05  # hosts whose robots.txt disallows /private/
    seed: int = 0


@dataclass
class SimHost:
    name: str
    ip: str
    kind: str  # "ok" or one of HOST_FAILURES
    rtt_s: float
    bandwidth: float
    cdn: bool = False
    retry_after: bool = False  # a CDN host that says when to come back
    disallows_private: bool = False  # robots.txt: Disallow: /private/


@dataclass
class SimUrl:
    url: str
    host: int
    path: str
    kind: str  # "image", "robots_disallowed" or one of URL_FAILURES
    image: int  # which of the distinct images it serves
    fetchable: bool = False
    redirect_to: str | None = None


@dataclass
class Workload:
    shape: WebShape
    hosts: list[SimHost]
    urls: list[SimUrl]

    def fetchable(self) -> set[str]:
        return {u.url for u in self.urls if u.fetchable}

    def kinds(self) -> Counter[str]:
        return Counter(self.kind_of(u) for u in self.urls)

    def kind_of(self, u: SimUrl) -> str:
        host = self.hosts[u.host]
        if host.kind != "ok":
            return host.kind
        return "cdn_image" if host.cdn and u.kind == "image" else u.kind


def host_ip(i: int) -> str:
    """127.a.b.c, never .0 or .255 in any octet."""
    return f"127.{1 + i // 62_500}.{1 + i // 250 % 250}.{1 + i % 250}"


def make_workload(shape: WebShape, port: int = 80) -> Workload:
    """The web and its URL list (shuffled, as crawled pages mix hosts), from ``shape.seed``."""
    rng = random.Random(shape.seed)

    def lognormal(median: float) -> float:
        return _lognormal(rng, median, shape.latency_sigma)

    hosts = []
    for i in range(shape.hosts):
        cdn = i < shape.cdn_hosts
        name = f"cdn{i}.{DOMAIN}" if cdn else f"h{i:05d}.{DOMAIN}"
        kind = "ok" if cdn else _draw(rng, shape.host_failures, "ok")
        hosts.append(SimHost(name, host_ip(i), kind, lognormal(shape.rtt_median_s),
                             lognormal(shape.bandwidth_median), cdn, cdn and i % 2 == 0,
                             not cdn and rng.random() < shape.robots_host_share))  # fmt: skip
    suffix = "" if port == 80 else f":{port}"
    urls = [_url(rng, shape, hosts, h, n, suffix) for n, h in enumerate(_host_of_each(rng, shape))]
    rng.shuffle(urls)
    ok_hosts = [i for i, h in enumerate(hosts) if h.kind == "ok" and not h.cdn]
    for u in urls:
        if u.kind == "redirect":  # to an image on another healthy host
            target = hosts[rng.choice(ok_hosts)]
            u.redirect_to = f"http://{target.name}{suffix}/img/{u.image}-{u.path[3:]}.jpg"
        u.fetchable = hosts[u.host].kind == "ok" and u.kind in FETCHABLE
    return Workload(shape, hosts, urls)


def _host_of_each(rng: random.Random, shape: WebShape) -> list[int]:
    """Every non-CDN host once, then Zipf draws; the CDN hosts share their part evenly."""
    cdn = round(shape.urls * shape.cdn_url_share)
    plain = list(range(shape.cdn_hosts, shape.hosts))
    weights = [1 / (rank + 1) ** shape.zipf_exponent for rank in range(len(plain))]
    extra = rng.choices(plain, weights, k=max(0, shape.urls - cdn - len(plain)))
    picks = plain[: shape.urls - cdn] + extra
    return picks + [i % shape.cdn_hosts for i in range(cdn)]


def _url(rng: random.Random, shape: WebShape, hosts: list[SimHost], h: int, n: int,
         suffix: str) -> SimUrl:  # fmt: skip
    host = hosts[h]
    kind = "image" if host.cdn else _draw(rng, shape.url_failures, "image")
    if host.disallows_private and kind == "image" and rng.random() < 0.5:
        kind = "robots_disallowed"
    folder = "private" if kind == "robots_disallowed" else "p"
    path = f"/{folder}/{n}.jpg" if kind != "redirect" else f"/r/{n}"
    image = rng.randrange(shape.distinct_images)
    return SimUrl(f"http://{host.name}{suffix}{path}", h, path, kind, image)


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


def _draw(rng: random.Random, fractions: dict[str, float], otherwise: str) -> str:
    x = rng.random()
    for kind, p in fractions.items():
        if x < p:
            return kind
        x -= p
    return otherwise


# ---------------------------------------------------------------------------- servers


@dataclass
class WebStats:
    """What the servers saw during one run."""

    requests: int = 0
    peak_connections: dict[str, int] = field(default_factory=dict)  # host name -> peak
    statuses: Counter[int] = field(default_factory=Counter)
    robots_txt_requests: int = 0
    dns_queries: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, type)

    def dns_per_host_and_type(self) -> dict[str, float]:
        """Queries per distinct name, for each record type asked."""
        names: defaultdict[str, set[str]] = defaultdict(set)
        counts: Counter[str] = Counter()
        for (name, qtype), n in self.dns_queries.items():
            names[qtype].add(name)
            counts[qtype] += n
        return {t: round(counts[t] / len(names[t]), 3) for t in sorted(names)}


class _Server:
    def __init__(self, workload: Workload, images: list[bytes]) -> None:
        shape = workload.shape
        self.workload, self.images, self.shape = workload, images, shape
        self.host_by_ip = {h.ip: h for h in workload.hosts}
        self.host_by_name = {h.name: h for h in workload.hosts}
        self.routes = {(workload.hosts[u.host].name, u.path): u for u in workload.urls}
        self.rng = random.Random(shape.seed + 1)
        self.stats = WebStats()
        self.open_connections: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.tokens = {h.name: (shape.cdn_rate_per_s, 0.0) for h in workload.hosts if h.cdn}
        self.dns_answered: set[tuple[str, int]] = set()
        self.truncated = {k for k, u in self.routes.items() if u.kind == "truncated"}

    def lognormal(self, median: float) -> float:
        return _lognormal(self.rng, median, self.shape.latency_sigma)

    # DNS ------------------------------------------------------------------------------
    def dns_answer(self, data: bytes) -> tuple[bytes | None, float]:
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord

        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        qtype = query.q.qtype
        self.stats.dns_queries[(name, QTYPE.get(qtype, str(qtype)))] += 1
        host = self.host_by_name.get(name)
        if host is not None and host.kind == "silent_dns":
            return None, 0.0
        first = (name, qtype) not in self.dns_answered
        self.dns_answered.add((name, qtype))
        delay = self.lognormal(self.shape.dns_median_s) if first else 0.001
        reply = query.reply()
        if host is None or host.kind == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(host.ip), ttl=3600))
        return reply.pack(), delay  # AAAA: no such record (NOERROR, empty)

    # HTTP -----------------------------------------------------------------------------
    def response(self, host: SimHost, path: str) -> tuple[int, dict[str, str], bytes, float]:
        """(status, headers, body, bytes per second) of one request."""
        self.stats.requests += 1
        if path == "/robots.txt":
            self.stats.robots_txt_requests += 1
            if host.disallows_private:
                return 200, {"Content-Type": "text/plain"}, ROBOTS_TXT, host.bandwidth
            return (*_NOT_FOUND, host.bandwidth)
        if host.cdn and not self._take_token(host):
            headers = {"Content-Type": "text/html"}
            if host.retry_after:
                headers["Retry-After"] = "1"
            return 429, headers, b"<h1>slow down</h1>", host.bandwidth
        u = self.routes.get((host.name, path))
        if u is None:
            if path.startswith("/img/"):  # a redirect's target
                image = int(path[5:].split("-", 1)[0])
                return 200, {"Content-Type": "image/jpeg"}, self.images[image], host.bandwidth
            return (*_NOT_FOUND, host.bandwidth)
        return self._url_response(host, u)

    def _url_response(self, host: SimHost, u: SimUrl) -> tuple[int, dict, bytes, float]:
        image = self.images[u.image]
        jpeg = {"Content-Type": "image/jpeg"}
        self.attempts[u.url] += 1
        match u.kind:
            case "not_found":
                return (*_NOT_FOUND, host.bandwidth)
            case "flaky" if self.attempts[u.url] == 1:
                return 503, {"Content-Type": "text/html"}, b"<h1>busy</h1>", host.bandwidth
            case "html":
                return 200, {"Content-Type": "text/html"}, b"<html>" + b"x" * 2000, host.bandwidth
            case "redirect":
                return 302, {"Location": u.redirect_to}, b"", host.bandwidth
            case "oversized":
                return 200, jpeg, b"\0" * OVERSIZED_BODY, host.bandwidth
            case "trickle":
                padded = image + b"\0" * max(0, TRICKLE_BODY - len(image))
                return 200, jpeg, padded, TRICKLE_BYTES_PER_S
            case "noai":
                return 200, {**jpeg, "X-Robots-Tag": "noai"}, image, host.bandwidth
        return 200, jpeg, image, host.bandwidth  # image, flaky's retry, robots_disallowed

    def _take_token(self, host: SimHost) -> bool:
        rate = self.shape.cdn_rate_per_s
        tokens, last = self.tokens[host.name]
        now = time.monotonic()
        tokens = min(rate, tokens + (now - last) * rate)
        ok = tokens >= 1
        self.tokens[host.name] = (tokens - 1 if ok else tokens, now)
        return ok


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: _Server) -> None:
        self.server = server

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            reply, delay = self.server.dns_answer(data)
        except Exception:  # not a DNS query: drop it, as a resolver would
            return
        if reply is not None:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, reply, addr)


_STATUS_TEXT = {200: "OK", 302: "Found", 404: "Not Found", 429: "Too Many Requests",
                503: "Service Unavailable"}  # fmt: skip
_PACE_S = 0.02  # a paced body is written in slices this far apart


class _HttpProtocol(asyncio.Protocol):
    """One connection: requests answered in order, after the simulated delays."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buffer = b""
        self.reused = False
        self.busy = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        ip = transport.get_extra_info("sockname")[0]
        self.host = self.server.host_by_ip.get(ip)
        if self.host is None:
            transport.abort()
            return
        name = self.host.name
        open_now = self.server.open_connections[name] + 1
        self.server.open_connections[name] = open_now
        peaks = self.server.stats.peak_connections
        peaks[name] = max(peaks.get(name, 0), open_now)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.host is not None:
            self.server.open_connections[self.host.name] -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.busy or b"\r\n\r\n" not in self.buffer:
            return
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        path = parts[1] if len(parts) > 1 else "/"
        keep_alive = not any(x.lower().replace(" ", "") == "connection:close" for x in lines[1:])
        self.busy = True
        delay = self.host.rtt_s * (1 if self.reused else 2) + self.server.lognormal(
            self.server.shape.ttfb_median_s - self.server.shape.rtt_median_s
        )
        self.reused = True
        match self.host.kind:
            case "blackhole":
                return  # accepted, never answered
            case "reset":
                self.loop.call_later(delay, self._reset)
                return
        self.loop.call_later(delay, self._respond, path, keep_alive)

    def _reset(self) -> None:
        if not self.closed:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.close()

    def _respond(self, path: str, keep_alive: bool) -> None:
        if self.closed:
            return
        status, headers, body, rate = self.server.response(self.host, path)
        self.server.stats.statuses[status] += 1
        length = len(body)
        if (self.host.name, path) in self.server.truncated:
            body = body[: len(body) * 6 // 10]
            keep_alive = False
        head = [f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'OK')}", f"Content-Length: {length}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if not keep_alive:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self._pace(memoryview(body), rate, keep_alive)

    def _pace(self, body: memoryview, rate: float, keep_alive: bool) -> None:
        if self.closed:
            return
        step = max(1, int(rate * _PACE_S))
        if len(body) <= step:
            self.loop.call_later(len(body) / rate, self._finish, body, keep_alive)
            return
        self.transport.write(body[:step])
        self.loop.call_later(_PACE_S, self._pace, body[step:], rate, keep_alive)

    def _finish(self, body: memoryview, keep_alive: bool) -> None:
        if self.closed:
            return
        self.transport.write(body)
        if not keep_alive:
            self.transport.close()
            return
        self.busy = False
        if b"\r\n\r\n" in self.buffer:
            self.data_received(b"")


def _serve(workload: Workload, http: tuple[str, int], dns: tuple[str, int],
           bind_each_host: bool, conn) -> None:  # fmt: skip
    """The servers' process: serve until the parent sends anything, then send the stats."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve_async(workload, http, dns, bind_each_host, conn))


async def _serve_async(workload, http, dns, bind_each_host, conn) -> None:
    from pipelines.demo.synthetic_images import encode, make_photo

    loop = asyncio.get_running_loop()
    w, h = workload.shape.image_size
    images = [encode(make_photo(i, w, h), "JPEG") for i in range(workload.shape.distinct_images)]
    server = _Server(workload, images)
    await loop.create_datagram_endpoint(lambda: _DnsProtocol(server), local_addr=dns)
    addresses = [h.ip for h in workload.hosts] if bind_each_host else [http[0]]
    listeners = [
        await loop.create_server(
            lambda: _HttpProtocol(server), ip, http[1], backlog=4096, reuse_address=True
        )  # fmt: skip
        for ip in addresses
    ]
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)
    for listener in listeners:
        listener.close()
    conn.send(server.stats)


class simulated_web:  # noqa: N801 - used like a function
    """Run the web's DNS and HTTP servers in a process of their own; ``with`` gives the
    workload, and :attr:`stats` holds what the servers saw once the block exits.

    ``bind_each_host`` listens on each host's address (a test, beside the real network);
    otherwise on ``http_address`` (0.0.0.0 in a network namespace of the benchmark's own)."""

    def __init__(self, workload: Workload, http_port: int, dns: tuple[str, int],
                 http_address: str = "0.0.0.0", bind_each_host: bool = False) -> None:  # fmt: skip
        self.workload = workload
        self._args = (workload, (http_address, http_port), dns, bind_each_host)
        self.stats: WebStats | None = None

    def __enter__(self) -> Workload:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(*self._args, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            self._proc.kill()
            raise RuntimeError("the simulated web did not start (see its error above)")
        return self.workload

    def __exit__(self, *exc: Any) -> None:
        self._conn.send("stop")
        if self._conn.poll(60):
            self.stats = self._conn.recv()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

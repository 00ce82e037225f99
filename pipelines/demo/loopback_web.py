"""A small web on 127.0.0.1 for the demo, the tests and the benchmarks.

Each path is a :class:`Route`: a static response, or one of the hostile behaviours a
crawler meets (slow drip, endless body, failures before success, redirects). The server
is aiohttp in a background thread; :func:`serve_in_process` runs one in a separate
process for measurements where the server must not share the crawler's interpreter.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering
    drip_interval_s: float | None = None  # send the body one byte per interval
    endless: bool = False  # stream chunks of ``body`` until the client hangs up
    fail_first: int = 0  # answer ``fail_status`` this many times first
    fail_status: int = 503
    fail_headers: dict[str, str] = field(default_factory=dict)


class LoopbackWeb:
    """Serve ``routes`` (path -> Route) on 127.0.0.1; use as a context manager."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter[str] = Counter()
        self.hit_times: defaultdict[str, list[float]] = defaultdict(list)  # time.monotonic()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path_qs
        route = self.routes.get(path) or self.routes.get(request.path)
        self.hits[path] += 1
        self.hit_times[path].append(time.monotonic())
        if route is None:
            return web.Response(status=404, text="not found")
        if route.delay_s:
            await asyncio.sleep(route.delay_s)
        if self.hits[path] <= route.fail_first:
            return web.Response(status=route.fail_status, headers=route.fail_headers)
        if route.drip_interval_s is None and not route.endless:
            return web.Response(
                body=route.body,
                status=route.status,
                headers={"Content-Type": route.content_type, **route.headers},
            )
        return await self._stream(request, route)

    async def _stream(self, request: web.Request, route: Route) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=route.status, headers={"Content-Type": route.content_type, **route.headers}
        )
        await resp.prepare(request)
        try:
            if route.endless:
                for _ in range(100_000):  # bounded: at most 100k chunks, then stop
                    if self._stopped.is_set():
                        break
                    await resp.write(route.body)
            else:
                for i in range(len(route.body)):
                    if self._stopped.is_set():
                        break
                    await resp.write(route.body[i : i + 1])
                    await asyncio.sleep(route.drip_interval_s)
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> LoopbackWeb:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _serve_directory(directory: str, port_out, stop) -> None:
    routes = {
        f"/{p.name}": Route(body=p.read_bytes(), content_type=_content_type(p))
        for p in sorted(Path(directory).iterdir())
        if p.is_file()
    }
    with LoopbackWeb(routes) as server:
        port_out.put(server.port)
        stop.wait()


def _content_type(path: Path) -> str:
    return {".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}.get(
        path.suffix.lower(), "image/jpeg"
    )


class serve_in_process:  # noqa: N801 - used like a function: ``with serve_in_process(d) as port``
    """Serve every file of ``directory`` at ``/NAME`` from a separate process."""

    def __init__(self, directory: str | Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._port, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(
            target=_serve_directory, args=(str(directory), self._port, self._stop), daemon=True
        )

    def __enter__(self) -> int:
        self._proc.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                return self._port.get(timeout=0.5)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(
                        f"loopback server process exited with code {self._proc.exitcode}"
                    ) from None
        raise TimeoutError("loopback server did not start within 120 s")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

"""robots.txt (RFC 9309): what a host lets our user agent fetch.

Parsed by the standard library's :mod:`urllib.robotparser`. What a failed fetch means
follows the RFC: a 4xx (no file) allows everything; a 5xx means "assume complete
disallow", since the crawler cannot know what the site asked (a host that cannot be
reached at all fails its URLs with the error that says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.robotparser import RobotFileParser

MAX_BYTES = 500 * 1024  # the RFC's minimum a crawler must read; the rest is ignored


@dataclass
class RobotsRules:
    parser: RobotFileParser | None  # None: every path has the same answer, ``allow_all``
    allow_all: bool = True
    reason: str = ""  # why nothing is allowed

    @classmethod
    def from_response(cls, status: int, body: bytes) -> RobotsRules:
        if 200 <= status < 300:
            parser = RobotFileParser()
            parser.parse(body[:MAX_BYTES].decode("utf-8", errors="replace").splitlines())
            return cls(parser)
        if 400 <= status < 500:
            return cls(None, allow_all=True)
        return cls(None, allow_all=False, reason=f"robots.txt answered HTTP {status}")

    def allows(self, user_agent_token: str, url: str) -> bool:
        if self.parser is None:
            return self.allow_all
        return self.parser.can_fetch(user_agent_token, url)

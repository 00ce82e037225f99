"""What the crawler may reach and download: address policy, blocklist, robots, Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress

import pytest

from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import retry_after_seconds
from curation.crawl.guard import AddressPolicy, DomainBlocklist, GuardedResolver, is_public
from curation.crawl.robots import DEFAULT_DISALLOWED, forbidding_directive
from curation.crawl.urls import parse_ip_literal

BLOCKED = [
    "127.0.0.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "10.1.2.3", "172.16.0.1",
    "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
    "255.255.255.255", "240.0.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
    "[::ffff:169.254.169.254]",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "93.184.216.34"]


@pytest.mark.parametrize("host", BLOCKED)
def test_non_public_addresses_are_refused(host):
    policy = AddressPolicy()
    with pytest.raises(CrawlError) as err:
        policy.check_literal(host)
    assert err.value.code == ErrorCode.BLOCKED_PRIVATE_ADDRESS


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses_pass(host):
    AddressPolicy().check_literal(host)
    assert is_public(parse_ip_literal(host))


def test_names_are_not_literals():
    for name in ("example.com", "cafe.be", "face", "localhost", "0x7f.example"):
        assert parse_ip_literal(name) is None


def test_allow_flags():
    assert AddressPolicy(allow_private_networks=True).permits(ipaddress.ip_address("10.0.0.1"))
    narrow = AddressPolicy(allowed_networks=["127.0.0.0/8"])
    assert narrow.permits(ipaddress.ip_address("127.0.0.5"))
    assert not narrow.permits(ipaddress.ip_address("::1"))
    assert not narrow.permits(ipaddress.ip_address("169.254.169.254"))


class _FixedResolver:
    def __init__(self, answers):
        self.answers = answers

    async def resolve(self, host, port=0, family=0):
        if not self.answers:
            raise OSError(-2, "Name or service not known")
        return [{"host": a, "port": port, "hostname": host} for a in self.answers]

    async def close(self):
        pass


def _resolve(policy, answers, host="some.name"):
    return asyncio.run(GuardedResolver(policy, _FixedResolver(answers)).resolve(host, 80))


def test_resolver_checks_what_dns_answers():
    with pytest.raises(CrawlError) as err:  # a public-looking name that resolves inside
        _resolve(AddressPolicy(), ["10.0.0.7"])
    assert err.value.code == ErrorCode.BLOCKED_PRIVATE_ADDRESS
    mixed = _resolve(AddressPolicy(), ["10.0.0.7", "8.8.8.8"])
    assert [a["host"] for a in mixed] == ["8.8.8.8"]  # only permitted answers are connected to
    with pytest.raises(CrawlError) as err:
        _resolve(AddressPolicy(), [])
    assert err.value.code == ErrorCode.DNS
    with pytest.raises(CrawlError) as err:  # a legacy numeric "name" never reaches DNS unchecked
        _resolve(AddressPolicy(), ["8.8.8.8"], host="2130706433")
    assert err.value.code == ErrorCode.BLOCKED_PRIVATE_ADDRESS


def test_blocklist_blocks_domain_and_subdomains(tmp_path):
    path = tmp_path / "block.txt"
    path.write_text("# unsafe\nbad.example  # trailing comment\n\nEVIL.org.\n")
    blocklist = DomainBlocklist.from_file(path)
    assert len(blocklist) == 2
    for host in ("bad.example", "img.cdn.bad.example", "evil.org", "Evil.Org."):
        assert blocklist.blocks(host)
    for host in ("notbad.example", "example", "evil.org.uk"):
        assert not blocklist.blocks(host)
    with pytest.raises(FileNotFoundError, match="domain blocklist"):
        DomainBlocklist.from_file(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "values, expected",
    [
        (["noai"], "noai"),
        (["noindex, nofollow"], "noindex"),
        (["NoImageAI"], "noimageai"),
        (["otherbot: noai"], None),
        (["lvd-builder: noimageindex"], "noimageindex"),
        (["*: noai"], "noai"),
        (["unavailable_after: 25 Jun 2030 15:00:00 PST"], None),
        (["nofollow", "max-image-preview: large"], None),
        ([], None),
    ],
)
def test_robots_directives(values, expected):
    assert forbidding_directive(values, "lvd-builder", DEFAULT_DISALLOWED) == expected


def test_robots_directives_are_configurable():
    assert forbidding_directive(["noindex"], "lvd-builder", ["noai"]) is None
    assert forbidding_directive(["noai"], "lvd-builder", []) is None


def test_retry_after_forms():
    assert retry_after_seconds("120") == 120.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None

"""Which URLs web-download may fetch: the defence against server-side request forgery.

A client names a URL and the service fetches it from inside the cloud, so a URL must
never reach what only the service can reach (its own loopback, the private network, a
cloud's metadata service). The rules, in order:

1. Glance's ``[import_filtering_opts]`` lists by scheme, host and port: an ``allowed_*``
   list, when not empty, is the only one obeyed for its kind (as in Glance).
2. The host is normalised first: every spelling ``inet_aton`` accepts (``2130706433``,
   ``0x7f.1``, ``0177.0.0.1``, ``127.1``) becomes its dotted quad, an IPv6 address its
   compressed form, a name loses its trailing dot and its case. Lists are compared
   against the normal form, so no spelling slips past a list entry.
3. The name is resolved once; each address is judged by the IPv4 address it carries when
   it carries one (IPv4-mapped, IPv4-compatible, 6to4, NAT64). Only globally routable
   unicast addresses pass by default: loopback, private, link-local (cloud metadata at
   169.254.169.254), shared (100.64/10), multicast, reserved and unspecified ones are
   refused, unless ``allowed_networks`` opens them (or an IP literal is in
   ``allowed_hosts``, which Glance's configurations use to allow a loopback server).
4. The caller connects to the checked address itself (:class:`Target`), never to the name
   again, so a second DNS answer cannot change where the request goes; each redirect is
   a new URL that goes through all of this again (:mod:`imgproxy.webfetch`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ImportFilter", "UrlRefused", "Target", "UrlFilter", "normalise_host", "embedded_ipv4", "FETCHABLE_SCHEMES"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# getaddrinfo(host, port) -> the addresses, as text. Tests inject one to play DNS tricks.
Resolver = Callable[[str, int], list[str]]

# The schemes web-download can fetch at all; a list may narrow them, never widen them.
FETCHABLE_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UrlRefused(ValueError):
    """The URL may not be fetched; the message says which rule refused it."""


@dataclass(frozen=True)
class ImportFilter:
    """Glance's ``[import_filtering_opts]``, plus ``allowed_networks`` (address ranges that
    the default address rule refuses but this deployment trusts, e.g. a test's loopback)."""

    allowed_schemes: tuple[str, ...] = FETCHABLE_SCHEMES
    disallowed_schemes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    disallowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)
    disallowed_ports: tuple[int, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> ImportFilter:
        """Validate the ``[import_filtering_opts]`` table; ``ValueError`` names the bad key."""
        known = {f for f in cls.__dataclass_fields__}
        for key in table:
            if key not in known:
                raise ValueError(f"import_filtering_opts.{key}: unknown (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key in ("allowed_schemes", "disallowed_schemes"):
            if key in table:
                values[key] = tuple(s.lower() for s in _strings(key, table[key]))
        for key in ("allowed_hosts", "disallowed_hosts"):
            if key in table:
                values[key] = tuple(normalise_host(h) for h in _strings(key, table[key]))
        for key in ("allowed_ports", "disallowed_ports"):
            if key in table:
                values[key] = _ports(key, table[key])
        if "allowed_networks" in table:
            try:
                values["allowed_networks"] = tuple(
                    ipaddress.ip_network(n, strict=False) for n in _strings("allowed_networks", table["allowed_networks"]))
            except ValueError as exc:
                raise ValueError(f"import_filtering_opts.allowed_networks: {exc}") from None
        return cls(**values)


def _strings(key: str, raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise ValueError(f"import_filtering_opts.{key}: expected a list of strings")
    return list(raw)


def _ports(key: str, raw: Any) -> tuple[int, ...]:
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list):
        raise ValueError(f"import_filtering_opts.{key}: expected a list of ports")
    ports = []
    for item in raw:
        try:
            port = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"import_filtering_opts.{key}: {item!r} is not a port") from None
        if isinstance(item, bool) or not 1 <= port <= 65535:
            raise ValueError(f"import_filtering_opts.{key}: {item!r} is not a port (1..65535)")
        ports.append(port)
    return tuple(ports)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``text`` means to ``inet_aton`` (1 to 4 parts, each decimal, octal
    with a leading 0 or hex with 0x; the last part fills the remaining bytes), or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        lower = part.lower()
        try:
            if lower.startswith("0x"):
                value = int(lower[2:], 16) if len(lower) > 2 else 0
            elif len(lower) > 1 and lower.startswith("0"):
                value = int(lower[1:], 8)
            elif lower.isdigit():
                value = int(lower, 10)
            else:
                return None
        except ValueError:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for value in head:
        number = number * 256 + value
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def _as_ip(host: str) -> IPAddress | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    return _inet_aton(text)


def normalise_host(host: str) -> str:
    """The one spelling of ``host`` the lists are compared with (see the module docs)."""
    stripped = host.strip().rstrip(".").lower()
    address = _as_ip(stripped)
    return str(address) if address is not None else stripped


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(int(address))
    return address


@dataclass(frozen=True)
class Target:
    """A URL that passed the filter, and the address to connect to for it."""

    url: str
    scheme: str
    host: str  # normalised
    port: int
    address: str  # the checked IP address, as text


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class UrlFilter:
    """Applies an :class:`ImportFilter`. Stateless; safe to share."""

    def __init__(self, rules: ImportFilter, resolver: Resolver | None = None) -> None:
        self.rules = rules
        self._resolve = resolver or _default_resolver

    def check(self, url: str) -> tuple[str, str, int, IPAddress | None]:
        """The scheme, host and port rules, without DNS: ``(scheme, host, port, literal
        address or None)``. Raises :class:`UrlRefused`."""
        if not isinstance(url, str) or not url:
            raise UrlRefused("empty URL")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlRefused(f"malformed URL ({exc})") from None
        rules = self.rules
        scheme = parts.scheme.lower()
        if scheme not in FETCHABLE_SCHEMES or not _passes(scheme, rules.allowed_schemes, rules.disallowed_schemes):
            raise UrlRefused(f"scheme {scheme or '(none)'!r} is not allowed")
        if not parts.hostname:
            raise UrlRefused("no host in the URL")
        host = normalise_host(parts.hostname)
        if not _passes(host, rules.allowed_hosts, rules.disallowed_hosts):
            raise UrlRefused(f"host {host!r} is not allowed")
        port = port if port is not None else _DEFAULT_PORTS[scheme]
        if not _passes(port, rules.allowed_ports, rules.disallowed_ports):
            raise UrlRefused(f"port {port} is not allowed")
        return scheme, host, port, _as_ip(host)

    def _address_allowed(self, address: IPAddress) -> bool:
        rules = self.rules
        judged = embedded_ipv4(address)
        if str(address) in rules.allowed_hosts or str(judged) in rules.allowed_hosts:
            return True
        if not rules.allowed_hosts and (str(address) in rules.disallowed_hosts or str(judged) in rules.disallowed_hosts):
            return False
        if any(judged in net or address in net for net in rules.allowed_networks):
            return True
        return judged.is_global and not judged.is_multicast

    def pin(self, url: str) -> Target:
        """Check ``url`` and resolve its host once: the first address that may be reached.
        Blocking (DNS); raises :class:`UrlRefused`."""
        scheme, host, port, literal = self.check(url)
        if literal is not None:
            candidates: list[IPAddress] = [literal]
        else:
            try:
                answers = self._resolve(host, port)
            except (OSError, UnicodeError) as exc:
                raise UrlRefused(f"cannot resolve host {host!r} ({exc})") from None
            candidates = _parse_answers(answers)
        for address in candidates:
            if self._address_allowed(address):
                return Target(url, scheme, host, port, str(address))
        shown = ", ".join(str(a) for a in candidates) or "none"
        raise UrlRefused(f"host {host!r} has no address that may be reached from here ({shown})")

    async def pin_async(self, url: str) -> Target:
        """:meth:`pin` off the event loop (DNS may take seconds)."""
        return await asyncio.to_thread(self.pin, url)


def _parse_answers(answers: Iterable[str]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for text in answers:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if address not in out:
            out.append(address)
    return out


def _passes(value: Any, allowed: tuple[Any, ...], disallowed: tuple[Any, ...]) -> bool:
    """Glance's rule: a non-empty allow list is the only one obeyed."""
    if allowed:
        return value in allowed
    return value not in disallowed

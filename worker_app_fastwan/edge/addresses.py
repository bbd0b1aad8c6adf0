"""Which IP addresses a URL from a stranger may make this machine connect to: public ones only.

An IPv6 address can carry an IPv4 address inside it (IPv4-mapped, IPv4-compatible, SIIT, NAT64, 6to4,
Teredo, ISATAP); a gateway on the path may deliver such a packet to that IPv4 host, so an embedded
private IPv4 address is as forbidden as the address itself. An IPv4-mapped address and one in the
well-known NAT64 prefix (what DNS64 answers on an IPv6-only network) are judged by their IPv4 address
alone. 6to4 (2002::/16) is refused outright: it is deprecated (RFC 7526) and its relays reach any IPv4 host.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# The well-known NAT64 prefix and the local-use one (RFC 6052, RFC 8215): the IPv4 address is the last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
# ::a.b.c.d (IPv4-compatible, deprecated) and ::ffff:0:a.b.c.d (SIIT IPv4-translated).
LAST_32_BITS = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))
ISATAP_IDS = (0x00005EFE, 0x02005EFE)  # the interface id's upper half in prefix::0:5efe:a.b.c.d / ::200:5efe:…


def forbidden_address(ip: IPAddress) -> bool:
    """True unless `ip`, and every IPv4 address it embeds, is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in SIX_TO_FOUR:
            return True
        if ip.ipv4_mapped is not None or ip in NAT64:
            return _not_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(_not_public(inner) for inner in embedded_ipv4(ip)):
            return True
    return _not_public(ip)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address `ip` carries, in any of the standard embeddings."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in (NAT64, LOCAL_NAT64, *LAST_32_BITS)):
        found.append(low32)
    if (int(ip) >> 32) & 0xFFFFFFFF in ISATAP_IDS:
        found.append(low32)
    return found


def _not_public(ip: IPAddress) -> bool:
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )

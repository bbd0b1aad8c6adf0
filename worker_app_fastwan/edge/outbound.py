"""Connections to a URL a stranger chose (the worker's input image, the stub's webhooks): public hosts only.

One rule for both: every address the host resolves to must be public (`addresses.forbidden_address`), and
the connection then goes to one of those vetted addresses, with the name kept for the Host header and TLS
(SNI, certificate checks). httpx is never left to resolve the name again, which would reopen DNS rebinding.
Callers map the two exceptions to their own errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from worker_app_fastwan.edge.addresses import IPAddress, forbidden_address


class UnresolvableHost(Exception):
    def __init__(self, host: str, temporary: bool) -> None:
        super().__init__(f"cannot resolve host {host}")
        self.temporary = temporary


class NonPublicAddress(Exception):
    def __init__(self, host: str, address: str | None) -> None:
        super().__init__(f"host {host} resolves to a non-public address ({address or 'none'})")
        self.address = address


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo runs in the loop's thread pool)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


async def vet_host(
    url: httpx.URL,
    *,
    resolve: Callable[[str, int], Awaitable[list[str]]] = resolve_host,
    forbidden: Callable[[IPAddress], bool] = forbidden_address,
) -> str:
    """One public address of the URL's host to connect to; refuses if ANY of its addresses is not public.

    Raises `UnresolvableHost` (`temporary` unless the name does not exist) or `NonPublicAddress`.
    """
    host = url.raw_host.decode("ascii")
    try:
        addresses = await resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(host, getattr(exc, "errno", None) != socket.EAI_NONAME) from None
    refused = [a for a in addresses if forbidden(ipaddress.ip_address(a))]
    if refused or not addresses:
        raise NonPublicAddress(host, refused[0] if refused else None)
    return addresses[0]


def pinned_request(
    http: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: str | None,
    *,
    headers: dict[str, str],
    **kwargs: Any,
) -> httpx.Request:
    """A request to `url` that connects to `address` (None: let httpx resolve, for allowed private targets)."""
    if address is None:
        return http.build_request(method, url, headers=headers, **kwargs)
    return http.build_request(
        method,
        url.copy_with(host=address),
        headers={**headers, "Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.raw_host.decode("ascii")},
        **kwargs,
    )

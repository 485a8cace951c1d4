"""The provider client over real TLS on loopback: verification on, a trusted certificate accepted, others refused.

Every real provider is HTTPS. A simulated provider serves with a certificate from a
trustme CA; the client trusts that CA only through ``SSL_CERT_FILE``, as a deployment
behind a private CA would. Both HTTP paths are covered: httpx (sync calls) and the
lean client (async calls and streams).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from unhardcoded.router.providers import ProviderCallError, ProviderClient, ProvidersConfig
from unhardcoded.testing.simulator import SimulatedProvider

BODY = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


@pytest.fixture(autouse=True)
def no_proxy_no_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the machine decides the outcome: no HTTP proxy, no CA other than the one a test names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))


@pytest.fixture
def https_provider(simulated_provider: Callable[..., SimulatedProvider], ca: trustme.CA) -> SimulatedProvider:
    return simulated_provider("secure", ssl_context=server_context(ca))


@pytest.fixture
def client_for() -> Iterator[Callable[[SimulatedProvider], ProviderClient]]:
    made: list[ProviderClient] = []

    def make(sim: SimulatedProvider) -> ProviderClient:
        client = ProviderClient(ProvidersConfig(providers=[sim.provider_config(timeout_s=5)]))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


async def achat_and_close(client: ProviderClient, provider: str) -> Any:
    async with client:
        result = await client.achat(provider, "m", BODY)
        lean = client._pool is not None  # the lean client, not the httpx fallback, made the call
        return result, lean


async def astream_and_close(client: ProviderClient, provider: str) -> tuple[list[dict[str, Any]], Any]:
    async with client:
        stream = client.astream(provider, "m", BODY)
        chunks = [chunk async for chunk in stream]
        return chunks, stream


# --------------------------------------------------------------------------- a trusted certificate


@pytest.mark.usefixtures("trusting")
def test_sync_chat_over_https(https_provider: SimulatedProvider, client_for: Any) -> None:
    assert https_provider.base_url.startswith("https://127.0.0.1:")
    result = client_for(https_provider).chat("secure", "m", BODY)
    assert result.status_code == 200
    assert result.body["choices"]
    assert len(https_provider.requests) == 1


@pytest.mark.usefixtures("trusting")
def test_async_chat_over_https_goes_through_the_lean_client(https_provider: SimulatedProvider, client_for: Any) -> None:
    result, lean = asyncio.run(achat_and_close(client_for(https_provider), "secure"))
    assert result.status_code == 200
    assert lean
    assert len(https_provider.requests) == 1


@pytest.mark.usefixtures("trusting")
def test_streams_over_https(https_provider: SimulatedProvider, client_for: Any) -> None:
    with client_for(https_provider).stream("secure", "m", BODY) as stream:
        chunks = list(stream)
    assert chunks and stream.first_chunk_received and stream.usage
    achunks, astream = asyncio.run(astream_and_close(client_for(https_provider), "secure"))
    assert achunks and astream.first_chunk_received and astream.usage
    assert [c.get("choices") for c in achunks] == [c.get("choices") for c in chunks]
    assert all(r.body.get("stream") is True for r in https_provider.requests)


# --------------------------------------------------------------------------- certificates refused


def call_every_way(client: ProviderClient) -> list[ProviderCallError]:
    """The sync and async call and stream; each must fail; their errors."""
    failures: list[ProviderCallError] = []

    def expect(fn: Callable[[], Any]) -> None:
        with pytest.raises(ProviderCallError) as caught:
            fn()
        failures.append(caught.value)

    expect(lambda: client.chat("secure", "m", BODY))
    expect(lambda: list(client.stream("secure", "m", BODY)))
    expect(lambda: asyncio.run(achat_and_close(client, "secure")))
    expect(lambda: asyncio.run(astream_and_close(client, "secure")))
    return failures


def assert_refused(failures: list[ProviderCallError], why: str) -> None:
    for failure in failures:
        assert failure.error_type == "tls_error", repr(failure)
        assert failure.kind == "error"
        assert failure.status_code is None
        assert "TLS handshake with https://127.0.0.1:" in failure.message
        assert why in failure.message, failure.message


@pytest.mark.usefixtures("trusting")
def test_a_certificate_from_an_unknown_ca_is_refused(
    simulated_provider: Callable[..., SimulatedProvider], client_for: Any
) -> None:
    stranger = trustme.CA()
    sim = simulated_provider("secure", ssl_context=server_context(stranger))
    assert_refused(call_every_way(client_for(sim)), "unable to get local issuer certificate")
    assert sim.requests == []


@pytest.mark.usefixtures("trusting")
def test_a_certificate_for_another_host_is_refused(
    simulated_provider: Callable[..., SimulatedProvider], ca: trustme.CA, client_for: Any
) -> None:
    sim = simulated_provider("secure", ssl_context=server_context(ca, "provider.example"))
    assert_refused(call_every_way(client_for(sim)), "IP address mismatch")
    assert sim.requests == []


def test_without_ssl_cert_file_the_private_ca_is_not_trusted(
    https_provider: SimulatedProvider, client_for: Any
) -> None:
    assert_refused(call_every_way(client_for(https_provider)), "unable to get local issuer certificate")


def test_plain_http_to_a_tls_port_is_not_an_answer(https_provider: SimulatedProvider) -> None:
    config = https_provider.provider_config(timeout_s=2).model_copy(
        update={"base_url": https_provider.base_url.replace("https://", "http://")}
    )
    with ProviderClient(ProvidersConfig(providers=[config])) as client, pytest.raises(ProviderCallError) as caught:
        client.chat("secure", "m", BODY)
    assert caught.value.kind == "error" and caught.value.status_code is None


# --------------------------------------------------------------------------- SSL_CERT_FILE in a fresh process

_CHILD = """
import asyncio, json, sys
from unhardcoded.router.providers import ProviderCallError, ProviderClient, ProviderConfig, ProvidersConfig

client = ProviderClient(ProvidersConfig(providers=[ProviderConfig(name="secure", base_url=sys.argv[1], timeout_s=5)]))
body = {"messages": [{"role": "user", "content": "hi"}]}
out = {}
for how, call in (
    ("sync", lambda: client.chat("secure", "m", body).status_code),
    ("async", lambda: asyncio.run(client.achat("secure", "m", body)).status_code),
):
    try:
        out[how] = call()
    except ProviderCallError as exc:
        out[how] = exc.error_type
print(json.dumps(out))
"""


def run_child(base_url: str, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, base_url],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_ssl_cert_file_is_honoured_in_a_fresh_process(https_provider: SimulatedProvider, ca_file: Path) -> None:
    assert run_child(https_provider.base_url, SSL_CERT_FILE=str(ca_file)) == {"sync": 200, "async": 200}
    assert run_child(https_provider.base_url) == {"sync": "tls_error", "async": "tls_error"}

"""Client keys on the proxy (`serve --keys FILE`): who may call it, under which policies, and where the name goes.

The real proxy on uvicorn over loopback, the real openai client, simulated providers that record what they were
sent; the `serve` command as a process for what happens at start-up, and a real SQLite store for the rollup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from apps.proxy_harness import HELLO, SELECTED, Stack, catalog_simulators, free_port, providers_for, serving
from unhardcoded import cli
from unhardcoded.catalog import Catalog
from unhardcoded.errors import ConfigError
from unhardcoded.policy import load_policy_file
from unhardcoded.policy.builtin import builtin_policy_dir
from unhardcoded.receipts.model import Receipt
from unhardcoded.receipts.stores import open_store
from unhardcoded.router import Router
from unhardcoded.router.providers import ProviderClient
from unhardcoded.semconv import attributes as A
from unhardcoded.server import create_app
from unhardcoded.server.auth import ClientKeys, ClientKeysError
from unhardcoded.testing import TelemetryCapture

OPS_KEY = "sk-CANARY-ops-0a1b2c3d4e5f60718293"
SUPPORT_KEY = "sk-CANARY-support-9f8e7d6c5b4a3928"
TRIAGE_KEY = "sk-CANARY-triage-55aa66bb77cc88dd"
CANARIES = (OPS_KEY, SUPPORT_KEY, TRIAGE_KEY)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS_YAML = f"""\
# Client keys of the proxy: digests only.
keys:
  - name: ops
    sha256: {sha(OPS_KEY)}
    policies: ["*"]
    inline: true
  - name: support-bot
    sha256: {sha(SUPPORT_KEY)}
    policies: [support]
  - name: triage-bot
    sha256: {sha(TRIAGE_KEY)}
    policies: [triage, support]
    default_policy: triage
"""


def keys() -> ClientKeys:
    return ClientKeys.parse(KEYS_YAML, "keys.yaml")


@pytest.fixture
def traced(simulated_provider: Any, tel: TelemetryCapture) -> Iterator[tuple[Stack, InMemorySpanExporter]]:
    sims = catalog_simulators(simulated_provider)
    client = ProviderClient(providers_for(sims, timeout_s=2.0))
    router = Router(Catalog.builtin(), client, tracer_provider=tel.tracer_provider)
    app = create_app(router, default_policy="support", client_keys=keys(), tracer_provider=tel.tracer_provider)
    with serving(app, closing=[client], log_level="debug") as server:
        stack = Stack(sims, server)
        stack.opened = []  # type: ignore[attr-defined]
        yield stack, tel.exporter
        for opened in stack.opened:  # type: ignore[attr-defined]
            opened.close()
    client.close()


def oa(stack: Stack, key: str) -> openai.OpenAI:
    """An openai client with ``key``, closed when the test's server stops."""
    client = openai.OpenAI(base_url=stack.server.openai_base_url, api_key=key, max_retries=0)
    stack.opened.append(client)  # type: ignore[attr-defined]
    return client


def post(stack: Stack, headers: dict[str, str], body: dict[str, Any] | None = None, path: str = "/v1/chat/completions"):
    return httpx.post(f"{stack.server.base_url}{path}", json=body or {"messages": HELLO}, headers=headers)


def spans_settled(exporter: InMemorySpanExporter, servers: int) -> list[Any]:
    """The finished spans once ``servers`` SERVER spans have ended (each ends after its answer's last byte)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = list(exporter.get_finished_spans())
        if sum(s.kind == SpanKind.SERVER for s in spans) >= servers:
            return spans
        time.sleep(0.01)
    raise AssertionError("the server spans did not all end")


def assert_openai_401(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    return error


# --------------------------------------------------------------------------- who may call


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_right_key_is_answered_and_its_name_is_on_the_span_and_the_receipt(
    traced: tuple[Stack, InMemorySpanExporter], stream: bool
) -> None:
    stack, exporter = traced
    client = oa(stack, SUPPORT_KEY)
    if stream:
        with client.chat.completions.with_streaming_response.create(model="auto", messages=HELLO, stream=True) as raw:
            raw.read()
            request_id = raw.headers["x-unhardcoded-request-id"]
    else:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)
        assert raw.parse().model == SELECTED
        request_id = raw.headers["x-unhardcoded-request-id"]
    receipt = httpx.get(
        f"{stack.server.base_url}/x/receipts/{request_id}", headers={"authorization": f"Bearer {SUPPORT_KEY}"}
    ).json()
    assert receipt["client"] == "support-bot" and receipt["policy"]["name"] == "support"
    [decision] = [s for s in spans_settled(exporter, 2) if s.name.startswith("route ")]
    assert decision.attributes[A.UNHARDCODED_CLIENT_NAME] == "support-bot"
    [sent] = stack.sim_for(SELECTED).requests
    assert "authorization" not in sent.headers and "x-api-key" not in sent.headers  # the client key stays here


def test_a_wrong_key_and_no_key_get_401_in_openais_shape(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, _ = traced
    with pytest.raises(openai.AuthenticationError) as caught:
        oa(stack, "sk-not-one-of-ours").chat.completions.create(model="auto", messages=HELLO)
    error = assert_openai_401(caught.value.response)
    assert "unknown client key" in error["message"] and "sk-not" not in error["message"]
    error = assert_openai_401(post(stack, {}))
    assert "no client key" in error["message"]
    assert all(sim.requests == [] for sim in stack.sims.values())  # nothing was spent


def test_an_anthropic_client_sends_its_key_as_x_api_key(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, _ = traced
    r = post(stack, {"x-api-key": SUPPORT_KEY})
    assert r.status_code == 200, r.text
    assert r.headers["x-unhardcoded-policy"] == "support"
    assert_openai_401(post(stack, {"x-api-key": "sk-someone-else"}))
    # Both headers, the same key: one key. Two different keys: refused, not guessed between.
    assert post(stack, {"x-api-key": SUPPORT_KEY, "authorization": f"Bearer {SUPPORT_KEY}"}).status_code == 200
    assert_openai_401(post(stack, {"x-api-key": SUPPORT_KEY, "authorization": f"Bearer {OPS_KEY}"}))


def test_a_policy_the_key_may_not_use_is_403_naming_it(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, _ = traced
    client = oa(stack, SUPPORT_KEY)
    for extra in ({"extra_body": {"policy": "triage"}}, {"extra_headers": {"X-Unhardcoded-Policy": "triage"}}):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="auto", messages=HELLO, **extra)
        error = caught.value.response.json()["error"]
        assert caught.value.status_code == 403 and error["code"] == "policy_not_allowed"
        assert "'support-bot' may not use policy 'triage'" in error["message"] and error["param"] == "policy"
    inline = {"schema": "sigma-pol/v1", "name": "mine", "rules": [], "rank": {"by": "cost", "order": "asc"}}
    with pytest.raises(openai.PermissionDeniedError, match="may not use inline policies"):
        client.chat.completions.create(model="auto", messages=HELLO, extra_body={"policy": inline})
    # The key with "*" and inline: true may do both.
    ops = oa(stack, OPS_KEY)
    assert (
        ops.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO, extra_body={"policy": "triage"}
        ).headers["x-unhardcoded-policy"]
        == "triage"
    )
    assert (
        ops.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO, extra_body={"policy": inline}
        ).headers["x-unhardcoded-policy"]
        == "mine"
    )


def test_the_keys_default_policy_is_used_when_the_request_names_none(
    traced: tuple[Stack, InMemorySpanExporter],
) -> None:
    stack, _ = traced
    raw = oa(stack, TRIAGE_KEY).chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    assert raw.headers["x-unhardcoded-policy"] == "triage"  # the proxy's own default is support
    raw = oa(stack, SUPPORT_KEY).chat.completions.with_raw_response.create(model="auto", messages=HELLO)
    assert raw.headers["x-unhardcoded-policy"] == "support"  # no default of its own: the proxy's, which it may use
    r = post(stack, {"authorization": f"Bearer {TRIAGE_KEY}"}, {"messages": HELLO, "policy": "support"})
    assert r.status_code == 200 and r.headers["x-unhardcoded-policy"] == "support"  # named: not the default


def test_every_route_but_healthz_needs_a_key_and_a_client_reads_only_its_own_receipts(
    traced: tuple[Stack, InMemorySpanExporter],
) -> None:
    stack, _ = traced
    base = stack.server.base_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert_openai_401(httpx.get(f"{base}/x/fields"))
    assert_openai_401(httpx.post(f"{base}/x/rank", json={"messages": HELLO}))
    assert_openai_401(httpx.get(f"{base}/x/receipts/req_0000000000000000"))
    assert_openai_401(httpx.get(f"{base}/v1/no-such-route"))  # not even whether a route exists
    support = {"authorization": f"Bearer {SUPPORT_KEY}"}
    assert httpx.get(f"{base}/x/fields", headers=support).status_code == 200
    ranked = httpx.post(f"{base}/x/rank", json={"messages": HELLO}, headers=support)
    assert ranked.status_code == 200 and ranked.json()["client"] == "support-bot"
    denied = httpx.post(f"{base}/x/rank", json={"messages": HELLO, "policy": "triage"}, headers=support)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "policy_not_allowed"
    request_id = post(stack, support).headers["x-unhardcoded-request-id"]
    assert httpx.get(f"{base}/x/receipts/{request_id}", headers=support).json()["client"] == "support-bot"
    other = httpx.get(f"{base}/x/receipts/{request_id}", headers={"authorization": f"Bearer {TRIAGE_KEY}"})
    assert other.status_code == 404  # another client's receipt is not found, not forbidden


def test_a_stored_receipt_is_read_only_by_its_own_client(tmp_path: Path) -> None:
    """Receipts no longer held in memory come from the store, under the same rule as the recent ones."""
    router = Router(Catalog.builtin())
    support = load_policy_file(builtin_policy_dir() / "support.yaml", router.catalog)
    decision = router.decide(support, {"messages": HELLO}, request_id="req_stored_client", client_name="support-bot")
    with open_store(str(tmp_path / "receipts.db")) as store:
        store.put(Receipt.from_decision(decision))
        app = create_app(router, client_keys=keys(), store=store, receipts_kept=1)
        with serving(app) as server:
            url = f"{server.base_url}/x/receipts/req_stored_client"
            mine = httpx.get(url, headers={"authorization": f"Bearer {SUPPORT_KEY}"})
            assert mine.status_code == 200 and mine.json()["client"] == "support-bot"
            assert httpx.get(url, headers={"authorization": f"Bearer {TRIAGE_KEY}"}).status_code == 404
            assert_openai_401(httpx.get(url))


def test_no_client_key_reaches_a_provider_a_span_a_receipt_or_a_log(
    traced: tuple[Stack, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack, exporter = traced
    responses = []
    for key in CANARIES:
        responses.append(post(stack, {"authorization": f"Bearer {key}"}))
        with httpx.stream(
            "POST",
            f"{stack.server.openai_base_url}/chat/completions",
            json={"messages": HELLO, "stream": True},
            headers={"x-api-key": key},
        ) as r:
            r.read()
            responses.append(r)
    responses.append(post(stack, {"authorization": f"Bearer {SUPPORT_KEY}"}, {"messages": HELLO, "policy": "triage"}))
    responses.append(post(stack, {"authorization": f"Bearer {SUPPORT_KEY}x"}))
    assert [r.status_code for r in responses] == [200] * 6 + [403, 401]
    receipts = [
        httpx.get(
            f"{stack.server.base_url}/x/receipts/{r.headers['x-unhardcoded-request-id']}",
            headers={"authorization": f"Bearer {key}"},
        ).json()
        for r, key in zip(responses[:6:2], CANARIES)
    ]
    assert [r["client"] for r in receipts] == ["ops", "support-bot", "triage-bot"]
    said = [caplog.text, json.dumps(receipts)]
    said += [r.text + json.dumps(dict(r.headers)) for r in responses]
    said += [s.to_json() for s in spans_settled(exporter, len(responses))]
    said += [json.dumps(q.headers) + json.dumps(q.body) for sim in stack.sims.values() for q in sim.requests]
    text = "\n".join(said)
    for key in CANARIES:
        assert key not in text and sha(key) not in text


# --------------------------------------------------------------------------- the keys file


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "keys:\n  - name: a\n    key: sk-live-123\n    policies: [support]\n",
            "keys.yaml: line 3: keys[0].key: a keys file holds the SHA-256 of each key, never the key itself",
        ),
        (
            "keys:\n  - name: a\n    sha256: sk-live-123\n    policies: [support]\n",
            "keys.yaml: line 3: keys[0].sha256: required: the 64 hex digits of the key's SHA-256",
        ),
        (
            (
                f"keys:\n  - name: a\n    sha256: {'a' * 64}\n    policies: [support]\n"
                f"  - name: a\n    sha256: {'b' * 64}\n    policies: [support]\n"
            ),
            "keys.yaml: line 5: keys[1].name: 'a' is also the name of keys[0]",
        ),
        (
            (
                f"keys:\n  - name: a\n    sha256: {'a' * 64}\n    policies: [support]\n"
                f"  - name: b\n    sha256: {'a' * 64}\n    policies: [support]\n"
            ),
            "keys.yaml: line 6: keys[1].sha256: the same key as keys[0]",
        ),
        (
            f"keys:\n  - name: a\n    sha256: {'a' * 64}\n    policies: [support]\n    default_policy: triage\n",
            "keys.yaml: line 5: keys[0].default_policy: 'triage' is not among the policies this key may use",
        ),
        (f"keys:\n  - name: a\n    sha256: {'a' * 64}\n", "keys.yaml: line 2: keys[0].policies: names no policy"),
        (
            f"keys:\n  - name: a\n    sha256: {'a' * 64}\n    policies: [support]\n    inline: yes\n",
            "keys.yaml: line 5: keys[0].inline: must be true or false",
        ),
        (
            f"keys:\n  - name: a\n    sha256: {'a' * 64}\n    policy: [support]\n",
            "keys.yaml: line 4: keys[0].policy: unknown field",
        ),
        ("keys: [\n", "keys.yaml: line 2"),
        ("keys: []\n", "keys.yaml: line 1: keys: must be a list of entries"),
        ("", "keys.yaml: expected a mapping with a 'keys' list, found an empty file"),
    ],
    ids=[
        "raw-key",
        "key-as-sha256",
        "same-name",
        "same-digest",
        "default-not-allowed",
        "no-policies",
        "not-bool",
        "unknown-field",
        "syntax",
        "empty-list",
        "empty-file",
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_line_and_field(text: str, needle: str) -> None:
    with pytest.raises(ClientKeysError) as caught:
        ClientKeys.parse(text, "keys.yaml")
    assert needle in str(caught.value)
    assert "sk-live-123" not in str(caught.value)  # a pasted key is never repeated


def test_a_json_keys_file_and_policies_checked_against_the_proxys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a", "sha256": sha("k").upper(), "policies": ["nope"]}]}, indent=1))
    loaded = ClientKeys.load(path)
    assert loaded.identify(b"k") is not None and loaded.identify(b"K") is None
    with pytest.raises(ConfigError, match=r"keys\.json: line 3: keys\[0\]\.policies: no policy named 'nope'"):
        create_app(Router(Catalog.builtin()), client_keys=loaded)
    with pytest.raises(ConfigError, match="--forward-client-key cannot be used with --keys"):
        create_app(Router(Catalog.builtin()), client_keys=keys(), forward_client_key=["google"])


def test_keys_hash_reads_the_key_from_stdin_and_prints_an_entry_that_loads() -> None:
    run = [sys.executable, "-m", cli.__name__, "keys", "hash"]
    digest = subprocess.run(run, input=OPS_KEY + "\n", capture_output=True, text=True, timeout=60, check=True)
    assert digest.stdout == sha(OPS_KEY) + "\n" and OPS_KEY not in digest.stdout + digest.stderr
    entry = subprocess.run(
        [*run, "--name", "ops", "--policy", "*", "--policy", "support", "--default-policy", "support", "--inline"],
        input=OPS_KEY,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [loaded] = ClientKeys.parse("keys:\n" + entry.stdout, "pasted").entries
    assert (loaded.name, loaded.policies, loaded.default_policy, loaded.inline) == (
        "ops",
        frozenset({"*", "support"}),
        "support",
        True,
    )
    assert loaded.digest.hex() == sha(OPS_KEY)
    empty = subprocess.run(run, input="", capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "no key on stdin" in empty.stderr


# --------------------------------------------------------------------------- the command


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "UNHARDCODED_KEYS"}
    return {**env, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", **extra}


def _refused(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(free_port()), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_listening_beyond_loopback_without_keys_is_refused(host: str) -> None:
    err = _refused(["--host", host])
    assert f"--host {host} listens beyond loopback" in err
    assert "--keys" in err and "--allow-unauthenticated" in err


def test_start_up_refuses_keys_with_forwarding_and_a_bad_keys_file(tmp_path: Path) -> None:
    good = tmp_path / "keys.yaml"
    good.write_text(KEYS_YAML)
    err = _refused(["--keys", str(good), "--forward-client-key", "google"])
    assert "--forward-client-key cannot be used with --keys" in err
    raw = tmp_path / "raw.yaml"
    raw.write_text(f"keys:\n  - name: a\n    api_key: {OPS_KEY}\n    policies: [support]\n")
    err = _refused(["--keys", str(raw)])
    assert f"{raw}: line 3: keys[0].api_key: a keys file holds the SHA-256" in err and OPS_KEY not in err
    err = _refused(["--keys", str(tmp_path / "missing.yaml")])
    assert "missing.yaml: no such file" in err


def _serve(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", cli.__name__, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"serve exited {proc.returncode}: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError("serve did not come up")


def test_allow_unauthenticated_starts_beyond_loopback_with_a_warning() -> None:
    port = free_port()
    proc = _serve(["--host", "0.0.0.0", "--allow-unauthenticated"], _env(), port)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    [warning] = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert "--host 0.0.0.0 listens beyond loopback and the proxy has no client keys" in warning


def test_serve_with_keys_stores_the_client_and_rolls_up_by_it(
    simulated_provider: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sims = catalog_simulators(simulated_provider)
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps({"providers": [s.provider_config(timeout_s=2).model_dump() for s in sims.values()]})
    )
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(KEYS_YAML)
    store = tmp_path / "receipts.db"
    port = free_port()
    env = _env(UNHARDCODED_PROVIDERS=str(providers), UNHARDCODED_STORE=str(store), UNHARDCODED_KEYS=str(keys_file))
    proc = _serve(["--default-policy", "support"], env, port)
    try:
        for key, n in ((SUPPORT_KEY, 2), (TRIAGE_KEY, 1)):
            with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) as client:
                for _ in range(n):
                    client.chat.completions.create(model="auto", messages=HELLO)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-nobody", max_retries=0) as nobody:
            with pytest.raises(openai.AuthenticationError):
                nobody.models.list()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Finished server process" in err, err
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in out and '"GET /v1/models HTTP/1.1" 401' in out  # access log
    for key in CANARIES:
        assert key not in out + err
    with open_store(str(store), create=False) as s:
        stored = s.query()
        assert sorted(r.client or "" for r in stored) == ["support-bot", "support-bot", "triage-bot"]
    capsys.readouterr()
    triage = next(r for r in stored if r.client == "triage-bot")
    assert cli.main(["receipt", triage.request_id, "--store", str(store)]) == 0
    assert "\nclient    triage-bot\n" in capsys.readouterr().out  # the card a person reads names the caller
    assert cli.main(["rollup", "--by", "client", "--store", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["key"]: r["decisions"] for r in rows} == {"support-bot": 2, "triage-bot": 1}

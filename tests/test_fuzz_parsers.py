"""Fuzzing the parsers: whatever the input, only the package's own errors come out, and each names a location."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unhardcoded.catalog import Catalog
from unhardcoded.errors import UnhardcodedError
from unhardcoded.policy import load_policy, validate_policy
from unhardcoded.router import features_from_request, load_providers

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- inputs -------------------------------------------------------------------------------------

TOKENS = [
    "schema:",
    " sigma-pol/v1",
    " unhardcoded-catalog/v1",
    "name:",
    " support",
    "rules:",
    "models:",
    "fields:",
    "providers:",
    "fallback:",
    "rank:",
    "select:",
    "baseline:",
    "on:",
    "max_hops:",
    "- ",
    "id:",
    "field:",
    "op:",
    "value:",
    "by:",
    "order:",
    "then:",
    "type:",
    "provider:",
    "base_url:",
    "api_key_env:",
    "timeout_s:",
    " http://127.0.0.1:1/v1",
    " bench_intelligence",
    " regions",
    " gte",
    " contains",
    " eq",
    " bool",
    " string[]",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    " ",
    "  ",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    '"',
    "'",
    "#",
    "&a ",
    "*a",
    "<<: ",
    "? ",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!!set ",
    "!!python/object:os.system ",
    "!!str ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "%TAG ! tag:x,2000:\n",
    "|\n",
    ">-\n",
    "yes",
    "no",
    "true",
    "null",
    "~",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "0x1F",
    "0o17",
    "1_000",
    "2024-01-01",
    "2024-13-45",
    "12:30:00",
    "-1",
    "0.5",
    "NaN",
    "Infinity",
    "\\u0000",
    "\x00",
    "\ufeff",
    "é",
    "\u2028",
    "\x85",
]
token_text = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=25,
)


def documents_near(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid document with one value somewhere replaced by anything."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        doc = json.loads(json.dumps(valid))
        paths: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    paths.append((node, k))
                    walk(v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    paths.append((node, i))
                    walk(v)

        walk(doc)
        parent, key = draw(st.sampled_from(paths))
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(json_values)
        return doc

    return build()


POLICY = {
    "schema": "sigma-pol/v1",
    "name": "support",
    "rules": [
        {"id": "tools", "field": "supports_tools", "op": "eq", "value": True},
        {"id": "floor", "field": "bench_intelligence", "op": "gte", "value": 0.5},
        {"id": "eu", "field": "regions", "op": "intersects", "value": ["eu"]},
    ],
    "rank": {"by": "cost", "order": "asc", "then": [{"by": "bench_intelligence", "order": "desc"}]},
    "select": {"score_field": "bench_intelligence"},
    "fallback": {"models": ["claude-sonnet-4-6", "gpt-5.5"], "on": ["error", "timeout"], "max_hops": 2},
    "baseline": "gpt-5.5",
}
CATALOG = {
    "schema": "unhardcoded-catalog/v1",
    "fields": [{"name": "soc2", "type": "bool", "unit": "flag", "description": "SOC 2"}],
    "models": [
        {
            "id": "a",
            "provider": "p",
            "price_input_per_mtok": 1,
            "price_output_per_mtok": 2,
            "regions": ["eu"],
            "context_window": 1000,
            "soc2": True,
        },
        {"id": "b", "provider": "p", "price_input_per_mtok": 0.5, "price_output_per_mtok": 1},
    ],
}
REQUEST = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "max_tokens": 10,
    "stream": False,
}
PROVIDERS = {
    "providers": [
        {
            "name": "sim",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "SIM_KEY",
            "timeout_s": 3,
            "headers": {"x-a": "b"},
        }
    ]
}


def texts_of(valid: dict[str, Any]) -> st.SearchStrategy[str]:
    """Arbitrary text, token soup, and valid documents (YAML or JSON) cut or spliced at random."""
    dumped = st.sampled_from(
        [
            json.dumps(valid),
            json.dumps(valid, indent=2),
            yaml.safe_dump(valid, sort_keys=False),
            yaml.safe_dump(valid, default_flow_style=True),
        ]
    )
    mangled = st.tuples(dumped, st.integers(0, 2000), st.integers(0, 2000), st.text(max_size=8)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[2] % (len(t[0]) + 1) :]
    )
    near = documents_near(valid).flatmap(
        lambda d: st.sampled_from(
            [json.dumps(d, allow_nan=True), yaml.safe_dump(d, sort_keys=False, allow_unicode=True)]
        )
    )
    return st.one_of(st.text(), token_text, mangled, near)


# -- checks -------------------------------------------------------------------------------------


def check_error(call: Callable[[], Any], location: re.Pattern[str]) -> None:
    try:
        call()
    except UnhardcodedError as exc:
        message = str(exc)
        assert message.strip(), "empty message"
        assert location.match(message), message


def located(source: str) -> re.Pattern[str]:
    # The source, then a line, a field path, or what the document as a whole should be.
    return re.compile(
        re.escape(source)
        + r": (line \d+|invalid (YAML|JSON)|a (policy|catalog) is a mapping|expected a mapping|[A-Za-z_\[][^\n]*?: )",
        re.DOTALL,
    )


# -- policies -----------------------------------------------------------------------------------


@FUZZ
@given(text=texts_of(POLICY))
@example(text="fallback:\n  on: [timeout]\nname: 2024-13-45\n")
@example(text="a: !!bool maybe")
@example(
    text='{"schema": "sigma-pol/v1", "name": "x", "rules": [{"id": "a", "field": "bench_intelligence", "op": "gte", "value": NaN}]}'
)
@example(text="[" * 5000)
@example(text="- " * 3000)
def test_load_policy_text(text: str):
    check_error(lambda: load_policy(text, source="fuzz.yaml"), located("fuzz.yaml"))


@FUZZ
@given(doc=st.one_of(json_values, documents_near(POLICY)))
def test_validate_policy_document(doc: Any):
    def run() -> None:
        policy = validate_policy(doc, source="doc.json")
        assert re.fullmatch(r"\d+-\d+", policy.fingerprint)  # a valid policy always has a fingerprint

    check_error(run, located("doc.json"))


# -- catalogs -----------------------------------------------------------------------------------


@FUZZ
@given(text=texts_of(CATALOG))
@example(
    text="schema: unhardcoded-catalog/v1\nmodels:\n  - {id: a, provider: p, price_input_per_mtok: .inf, price_output_per_mtok: 1}\n"
)
@example(text="{" * 5000)
def test_catalog_from_text(text: str):
    def run() -> None:
        catalog = Catalog.from_text(text, source="fuzz-catalog.yaml")
        assert re.fullmatch(r"[0-9a-f]{16}", catalog.version)  # a valid catalog always has a version

    check_error(run, located("fuzz-catalog.yaml"))


@FUZZ
@given(doc=st.one_of(json_values, documents_near(CATALOG)))
def test_catalog_from_document(doc: Any):
    def run() -> None:
        assert len(Catalog.from_document(doc, source="c.json").version) == 16

    check_error(run, located("c.json"))


# -- requests -----------------------------------------------------------------------------------

REQUEST_LOCATION = re.compile(
    r"(request body |(messages|tools|max_tokens|max_completion_tokens|stream)(\[\d+\])?[.:\[])"
)


@FUZZ
@given(body=st.one_of(json_values, documents_near(REQUEST)))
@example(body={"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": None, "max_tokens": "x"})
def test_features_from_request(body: Any):
    def run() -> None:
        features = features_from_request(body)
        assert features.input_tokens >= 4 and features.output_tokens >= 1

    check_error(run, REQUEST_LOCATION)


# -- providers files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-providers")


@FUZZ
@given(text=texts_of(PROVIDERS), suffix=st.sampled_from([".yaml", ".json", ".txt"]))
@example(text="providers:\n  - {name: a, base_url: 'http://[::1', api_key: sk-secret}\n", suffix=".yaml")
def test_load_providers(fuzz_dir: Path, text: str, suffix: str):
    path = fuzz_dir / f"providers{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_error(lambda: load_providers(path), located(str(path)))


@pytest.mark.parametrize(
    "text", ["[" * 5000, "providers: 2024-13-45\n", "providers: !!int x\n", "!!bool", "a: !!timestamp x\n"]
)
def test_load_providers_hostile_text(fuzz_dir: Path, text: str):
    path = fuzz_dir / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    check_error(lambda: load_providers(path), located(str(path)))

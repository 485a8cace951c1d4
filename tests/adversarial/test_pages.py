"""Hostile strings in stored receipts, served by a real processor: pages escape them, JSON stays JSON.

Receipts are built from decisions of the real engine, then given hostile policy
names, model ids, request ids, rule messages and workflow names (markup, quotes,
control characters, line separators, template syntax), and stored in the
SQLite store a processor then serves. Every page must carry none of them as
markup; every JSON answer must parse and give the string back exactly.
"""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest

from processor_fixtures import ProcessorProcess, make_decision
from unhardcoded.receipts import Receipt, SQLiteReceiptStore
from unhardcoded.router.decision import WorkflowRef

CORPUS: list[tuple[str, str]] = [
    ("script-tag", "<script>alert(1)</script>"),
    ("img-onerror", '"><img src=x onerror=alert(1)>'),
    ("single-quote-attr", "' onmouseover='alert(1)' x='"),
    ("close-title", "</title><script>alert(document.cookie)</script>"),
    ("close-style", "</style><script>alert(1)</script>"),
    ("html-comment", "<!-- --><script>alert(1)</script>"),
    ("control-chars", "a\x00b\x1b[31mred\x07\x08\r\nc"),
    ("line-separators", "a\u2028b\u2029c"),
    ("javascript-url", "javascript:alert(1)"),
    ("template", "{{7*7}}${7*7}<%= 7*7 %>"),
    ("entity", "&lt;script&gt;&amp;"),
    ("bidi-override", "\u202egnp.exe"),
    ("json-breaker", '"}],"x":{"y":"'),
    ("long", "<b>" * 20_000),
]
HOSTILE_INPUTS = len(CORPUS)


class _Tags(HTMLParser):
    """Every element and attribute a browser would make of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs


def _page_tags(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


def _hostile_receipt(i: int, text: str) -> Receipt:
    rng = random.Random(100 + i)
    # Ids go in URL paths, where Starlette's path routes stop at a line break: a newline in an id is a 404.
    tag = text[:200].replace("\n", " ")
    d = make_decision(
        rng,
        f"req-{i}-{tag}",
        hops=1,
        workflow=WorkflowRef(id=f"wf-{i}-{tag}", name=text, node=text[:100], step=0),
    )
    r = Receipt.from_decision(d)
    rejected = [rej.model_copy(update={"message": text, "rule": text[:100]}) for rej in r.rejected]
    return r.model_copy(
        update={
            "policy": r.policy.model_copy(update={"name": text}),
            "rejected": rejected,
            "answered_by": text[:300],
            "candidates": [text[:300], *r.candidates],
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("pages")
    db = base / "receipts.db"
    store = SQLiteReceiptStore(db)
    receipts = [_hostile_receipt(i, text) for i, (_, text) in enumerate([*CORPUS, ("plain", "plain")])]
    try:
        store.put_many([(r, None) for r in receipts])
        for r in receipts:
            store.put_workflow(r.workflow.id, r.workflow.name, r.trace_id, finished=True)
    finally:
        store.close()
    p = ProcessorProcess(str(db), log=base / "processor.log").start()
    yield p, receipts
    p.stop()


def _no_markup(page: str, text: str, plain: _Tags) -> None:
    """The page has exactly the elements and attribute names of the same page made of a plain string."""
    tags = _page_tags(page)
    assert {"script", "img"}.isdisjoint(tags.tags)
    assert sorted(set(tags.tags)) == sorted(set(plain.tags))
    assert not [name for name, _ in tags.attributes if name.startswith("on")]
    assert not [v for name, v in tags.attributes if name == "href" and (v or "").lower().startswith("javascript")]
    if any(c in text for c in "<>&"):
        assert text not in page


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[c[0] for c in CORPUS])
def test_hostile_strings_are_escaped_on_pages_and_exact_in_json(served, index):
    p, receipts = served
    r, plain = receipts[index], receipts[-1]
    text = CORPUS[index][1]

    def pages(receipt: Receipt) -> tuple[str, str]:
        page = httpx.get(f"{p.url}/r/{quote(receipt.request_id, safe='')}", timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        wf = httpx.get(f"{p.url}/w/{quote(receipt.workflow.id, safe='')}", timeout=30)
        assert wf.status_code == 200
        return page.text, wf.text

    plain_page, plain_wf = pages(plain)
    page, wf = pages(r)
    _no_markup(page, text, _page_tags(plain_page))
    _no_markup(wf, text, _page_tags(plain_wf))

    doc = httpx.get(f"{p.url}/receipts/{quote(r.request_id, safe='')}", timeout=30)
    assert doc.status_code == 200
    got = json.loads(doc.text)["receipt"]
    assert got["request_id"] == r.request_id and got["policy"]["name"] == text
    assert [x["message"] for x in got["rejected"]] == [text] * len(r.rejected)

    if len(text) < 10_000:  # longer is more than a client puts in a URL
        listed = httpx.get(f"{p.url}/receipts", params={"policy": text, "limit": 5}, timeout=30)
        assert listed.status_code == 200
        assert [item["receipt"]["request_id"] for item in json.loads(listed.text)["items"]] == [r.request_id]

    workflow = httpx.get(f"{p.url}/workflows/{quote(r.workflow.id, safe='')}", timeout=30)
    assert workflow.status_code == 200 and json.loads(workflow.text)["workflow"]["name"] == text

    rollup = httpx.get(f"{p.url}/rollups", params={"by": "policy"}, timeout=30)
    assert rollup.status_code == 200 and text in [row["key"] for row in json.loads(rollup.text)["rows"]]
    assert p.get("/healthz").status_code == 200

"""receipts/backends.py against small fake Jaeger/Tempo HTTP servers: the requests it makes, and its errors."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from unhardcoded.cli import main as cli_main
from unhardcoded.receipts.backends import BackendError, JaegerSource, TempoSource

pytestmark = pytest.mark.e2e


class Fake:
    def __init__(self, routes):
        self.routes, self.seen = routes, []
        fake = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                fake.seen.append((u.path, urllib.parse.parse_qs(u.query)))
                status, body = fake.routes(u.path, urllib.parse.parse_qs(u.query))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    made = []

    def make(routes):
        f = Fake(routes)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_tempo_search_quotes_the_request_id_in_traceql(fake):
    f = fake(lambda path, q: (200, {"traces": []}))
    assert TempoSource(f.url).receipt('req_"x') is None
    path, q = f.seen[0]
    assert path == "/api/search"
    assert q["q"] == ['{ span."unhardcoded.request.id" = "req_\\"x" }']
    assert int(q["end"][0]) - int(q["start"][0]) <= 168 * 3600  # Tempo refuses longer ranges


def test_tempo_fetches_each_trace_found(fake):
    def routes(path, q):
        if path == "/api/search":
            return 200, {"traces": [{"traceID": "abc"}, {"traceID": "def"}]}
        return 404, b"not found"

    f = fake(routes)
    assert TempoSource(f.url).fetch_request("req_1") == []
    assert [p for p, _ in f.seen] == ["/api/search", "/api/traces/abc", "/api/traces/def"]


def test_jaeger_searches_by_tag_in_every_service_or_the_named_one(fake):
    def routes(path, q):
        if path == "/api/services":
            return 200, {"data": ["a", "b"]}
        return 200, {"data": []}

    f = fake(routes)
    assert JaegerSource(f.url).receipt("req_1") is None
    searches = [q for p, q in f.seen if p == "/api/traces"]
    assert [q["service"] for q in searches] == [["a"], ["b"]]
    assert json.loads(searches[0]["tags"][0]) == {"unhardcoded.request.id": "req_1"}
    f.seen.clear()
    JaegerSource(f.url + "/?service=checkout").receipt("req_1")
    assert [(p, q.get("service")) for p, q in f.seen] == [("/api/traces", ["checkout"])]


@pytest.mark.parametrize("flag", ["--jaeger", "--tempo"])
def test_backend_errors_are_one_line_exit_2(fake, flag, capsys):
    f = fake(lambda path, q: (500, b"boom"))
    assert cli_main(["receipt", "req_1", flag, f.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unhardcoded: ") and "HTTP 500" in err and err.count("\n") == 1


def test_unreachable_backend_is_a_backend_error():
    with pytest.raises(BackendError, match=r"refused|connect"):
        TempoSource("http://127.0.0.1:1").receipt("req_1")

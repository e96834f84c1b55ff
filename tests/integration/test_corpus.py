"""Conformance: every request of the HTTP/1.1 corpus (tests/data/http_corpus.json, from the
llhttp and gunicorn parser suites, graded against RFC 9112) sent to one live server per parser
(--http httptools, --http h11) at once, whose app records what it saw (tests/apps/recorder.py).
Each case must pass with each parser, and get the same outcome from both: the same responses
(status, and what the app saw), and the same end of the connection.

Per `expect`:
  accept        every response is the app's 200 and the app saw exactly `messages`
                (method, path + query, body). Counted separately, two refusals pass too: a
                400 for an HTTP/1.1 request without Host (RFC 9112 3.2), and a 501 for a
                Transfer-Encoding other than plain "chunked" (RFC 9112 6.1: a server without
                that coding SHOULD answer 501; the corpus itself grades the byte-identical
                llhttp/transfer-encoding#13 `reject` but gunicorn/valid/009 `accept`).
                gunicorn cases carry no `messages`: their first request line and the body
                in the note are checked. An absolute-form URL is compared by its path and
                query, all that an ASGI app is given of it.
  reject        the app sees nothing, and the server answers 4xx/5xx or closes
  reject-after  the app sees at most the first N messages ("first N message(s) OK" in the
                note), and nothing after the server's first error response
  others        (should-reject, should-accept, either, close-after, limit, incomplete, info)
                recorded only
The asserted HTTP/1.1 cases without Host (most of llhttp's) are sent a second time with a
Host field (ids ending in +host): otherwise their 400 says nothing about what they test.
After every case, whatever its category: the worker has the same PID, a fresh connection
gets a 200, and the server logged no traceback or error. The summary (per category,
pass/fail, plus one line per case) is printed at the end of the module and written to
tests/data/corpus-results.txt.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from .conftest import PARSERS, on_each, running_servers
from .wire import LogWatch, describe, exchange, parse_responses

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "http_corpus.json"
RESULTS_FILE = DATA / "corpus-results.txt"
APP = "tests.apps.recorder:app"
ASSERTED = ("accept", "reject", "reject-after")

if not CORPUS.exists():
    pytest.skip(f"HTTP corpus not found at {CORPUS} (see tests/data/README.md)",
                allow_module_level=True)

CASES = json.loads(CORPUS.read_text(encoding="utf-8"))
# parser -> id -> (expect, verdict, what happened, outcome as compared between the parsers)
RESULTS: dict[str, dict[str, tuple[str, str, str, tuple]]] = {parser: {} for parser in PARSERS}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with running_servers([APP, "--workers", "1"], tmp_path_factory.mktemp("corpus")) as servers:
        for server in servers.values():
            server.initial_workers = sorted(server.worker_pids())
            server.log_watch = LogWatch(server)
        yield servers


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if RESULTS[PARSERS[0]]:
        text = format_summary()
        print("\n" + text)
        RESULTS_FILE.write_text(text)


def format_summary() -> str:
    first = RESULTS[PARSERS[0]]
    same = sum(1 for case_id, result in first.items()
               if all(RESULTS[p].get(case_id, ())[3:] == result[3:] for p in PARSERS))
    lines = ["HTTP/1.1 corpus against duck-prefork (tests/integration/test_corpus.py): "
             f"{len(first)} of {len(CASES) + len(HOST_VARIANTS)} cases run (the corpus, and "
             "again with Host for HTTP/1.1 cases without it: +host), with each parser "
             f"({', '.join(PARSERS)}): the same outcome from all for {same} of {len(first)}"]
    for parser in PARSERS:
        lines += ["", f"--http {parser}:"] + category_table(RESULTS[parser])
    lines += ["", "not re-sent with Host:"]
    lines += [f"  {case_id}: {why}" for case_id, why in NO_HOST_VARIANT.items()]
    lines += ["", f"per case (--http {PARSERS[0]}): id | expect | verdict | what the server did"]
    for case in CASES + HOST_VARIANTS:
        if case["id"] in first:
            expect, verdict, outcome, _ = first[case["id"]]
            lines.append(f"{case['id']} | {expect} | {verdict} | {outcome}")
    return "\n".join(lines) + "\n"


def category_table(results: dict) -> list[str]:
    counts: dict[str, Counter] = {}
    for expect, verdict, _, _ in results.values():
        counts.setdefault(expect, Counter())[verdict.split(":")[0]] += 1
    lines = [f"{'expect':<18} {'cases':>5} {'pass':>5} {'fail':>5}  notes"]
    asserted = [e + suffix for suffix in ("", "+host") for e in ASSERTED]
    order = asserted + sorted(set(counts) - set(asserted))
    for expect in order:
        c = counts.get(expect, Counter())
        total = sum(c.values())
        passed = c["pass"] + c["pass-400-no-host"] + c["pass-501-te"] + c["recorded"]
        notes = []
        if c["pass-400-no-host"]:
            notes.append(f"{c['pass-400-no-host']} passes are a 400 for a missing Host")
        if c["pass-501-te"]:
            notes.append(f"{c['pass-501-te']} a 501 for a transfer coding other than chunked")
        note = "; ".join(notes)
        if expect not in asserted:
            note = "not asserted: only that the worker survives"
        lines.append(f"{expect:<18} {total:>5} {passed:>5} {c['FAIL']:>5}  {note}")
    return lines


# --- what each case expects ----------------------------------------------------------------

REQUEST_LINE = re.compile(r"^(\S+) (\S+) HTTP/(\d\.\d)\r?\n")
NOTE_BODY = re.compile(r"""body=(b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")""")
NOTE_FIRST_N = re.compile(r"first (\d+) message\(s\) OK")


def head_fields(raw: str, name: str) -> list[str]:
    """The values of field `name` in the first header section."""
    head = re.split(r"\r?\n\r?\n", raw, maxsplit=1)[0]
    values = []
    for line in re.split(r"\r?\n", head)[1:]:
        field, colon, value = line.partition(":")
        if colon and field.lower() == name:
            values.append(value.strip(" \t"))
    return values


def lacks_host_on_1_1(raw: str) -> bool:
    """An HTTP/1.1 request with no Host field: 400 is the right answer (RFC 9112 3.2)."""
    return " HTTP/1.1" in raw.split("\n", 1)[0] and not head_fields(raw, "host")


def unsupported_coding(raw: str) -> bool:
    """Transfer-Encoding present and not just "chunked": 501 is a right answer."""
    codings = [c.strip().lower() for v in head_fields(raw, "transfer-encoding")
               for c in v.split(",")]
    return bool(codings) and codings != ["chunked"]


def origin_url(url: str) -> str:
    """What an ASGI app can see of a request target: raw_path + "?" + query. For the
    absolute form (RFC 9112 3.2.2) that is the part after the authority, as in
    duck_prefork.asgi.pipeline.split_target."""
    if not url.startswith("/") and "://" in url:
        rest = url.split("://", 1)[1]
        cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
        url = rest[cut:]
        if not url.startswith("/"):
            url = "/" + url
    return url


def expected_messages(case: dict) -> tuple[list[dict], bool]:
    """(messages the app must see, whether that list is complete). gunicorn's cases give only
    the first request's body, in the note; its method and target come from the request line."""
    if case.get("messages") is not None:
        return [dict(m, url=origin_url(m["url"])) for m in case["messages"]], True
    line = REQUEST_LINE.match(case["raw"])
    body = NOTE_BODY.search(case["note"])
    assert line and body, f"cannot derive the expected parse of {case['id']}"
    value = ast.literal_eval(body.group(1))
    value = value.decode("latin-1") if isinstance(value, bytes) else value
    return [{"method": line.group(1), "url": origin_url(line.group(2)), "body": value}], False


def as_message(recorded: dict) -> dict:
    return {"method": recorded["method"], "url": recorded["path"], "body": recorded["body"]}


def judge(case: dict, responses: list, closed: bool) -> tuple[str, str | None]:
    """(verdict, failure message or None) for the asserted categories."""
    expect = case["expect"]
    seen = [r.recorded for r in responses]
    app_count = sum(1 for r in seen if r is not None)
    statuses = [r.status for r in responses]
    if expect == "accept":
        expected, complete = expected_messages(case)
        got = [as_message(r) for r in seen if r is not None]
        errors = [r for r in responses if r.recorded is None]
        no_host = lacks_host_on_1_1(case["raw"])
        if no_host and [r.status for r in errors] == [400] and responses[-1].status == 400:
            # the request without Host is refused; whatever came before it must be right
            if got == expected[:len(got)]:
                return "pass-400-no-host", None
        if [r.status for r in responses] == [501] and unsupported_coding(case["raw"]):
            return "pass-501-te", None
        if errors:
            return "FAIL", f"expected only app 200s, got statuses {statuses}"
        if complete and got != expected:
            return "FAIL", f"app saw {got}, expected {expected}"
        if not complete and got[:1] != expected:
            return "FAIL", f"app saw {got[:1]} first, expected {expected}"
        bad = [r.status for r in responses if r.status != 200 or not r.complete]
        if bad:
            return "FAIL", f"app responses not a complete 200: {statuses}"
        return "pass", None
    if expect == "reject":
        if app_count:
            return "FAIL", f"the app saw {app_count} request(s): {[s for s in seen if s]}"
        if not any(400 <= s < 600 for s in statuses) and not closed:
            return "FAIL", "no 4xx/5xx and the connection was left open (server waits for more)"
        return "pass", None
    if expect == "reject-after":
        match = NOTE_FIRST_N.search(case["note"])
        limit = int(match.group(1)) if match else len(responses)
        if app_count > limit:
            return "FAIL", f"the app saw {app_count} requests, at most {limit} allowed: {seen}"
        first_error = next((i for i, r in enumerate(seen) if r is None), len(seen))
        if any(r is not None for r in seen[first_error:]):
            return "FAIL", f"an app response after the error response: {statuses}"
        return "pass", None
    return "recorded", None


def run_case(servers: dict, case: dict, category: str) -> None:
    """Send one case to the server of each parser, judge each, record the results; fail if one
    failed, or if the parsers' outcomes differ."""
    results = on_each(servers, lambda server: run_on(server, case, category))
    failures = []
    for parser, (verdict, failure, outcome, compared) in results.items():
        RESULTS[parser][case["id"]] = (category, verdict, outcome, compared)
        if failure:
            failures.append(f"--http {parser}: {outcome}")
    assert not failures, f"{case['id']} ({case['expect']}: {case['note']}): {failures}"
    outcomes = {parser: result[3] for parser, result in results.items()}
    assert len(set(outcomes.values())) == 1, \
        f"{case['id']}: the parsers differ: " + "; ".join(
            f"--http {parser}: {result[2]}" for parser, result in results.items())


def run_on(server, case: dict, category: str) -> tuple[str, str | None, str, tuple]:
    """Send one case, judge it, check the worker: (verdict, failure or None, what happened,
    the outcome to compare between parsers)."""
    raw = case["raw"].encode("latin-1")
    expected = len(case.get("messages") or [])

    def enough(data: bytes) -> bool:  # all expected app responses in: only a short grace
        parsed = parse_responses(data)
        return expected > 0 and sum(1 for r in parsed.responses if r.complete) >= expected

    ex = exchange(server.port, raw, idle=1.0, done=enough)
    parsed = parse_responses(ex.data)
    outcome = describe(ex, parsed)
    if case["expect"] in ASSERTED:
        verdict, failure = judge(case, parsed.responses, ex.closed)
    else:
        verdict, failure = "recorded", None

    # Whatever the client sent, the worker lives on and serves the next connection.
    workers = sorted(server.worker_pids())
    alive = statuses = None
    if workers == server.initial_workers:
        ok = exchange(server.port, b"GET /alive HTTP/1.1\r\nHost: corpus\r\n"
                      b"Connection: close\r\n\r\n", idle=5.0)
        responses = parse_responses(ok.data).responses
        statuses = [r.status for r in responses]
        alive = statuses == [200] and responses[0].recorded is not None
    problems = server.log_watch.new_problems()
    if not alive:
        verdict = "FAIL"
        failure = (f"worker not serving after this case: workers {server.initial_workers} -> "
                   f"{workers}, next request got {statuses}")
        server.initial_workers = sorted(server.worker_pids())  # judge later cases on their own
    elif problems:
        verdict = "FAIL"
        failure = f"the server logged a problem: {problems[-500:]!r}"
    if failure:
        outcome += f" -- {failure}"
    compared = (tuple((r.status, r.header("x-recorded-json"), r.body, r.complete)
                      for r in parsed.responses), parsed.error, ex.closed)
    return verdict, failure, outcome, compared


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_corpus_case(servers, case):
    run_case(servers, case, case["expect"])


# Most llhttp cases, and some gunicorn ones, are HTTP/1.1 without Host: the 400 they rightly
# get says nothing about the defect (or the parse) the case is about. Each is sent a second
# time with a Host field after every request line, and judged without the Host exception.
FIRST_LINE_1_1 = re.compile(r"[!-~]+ [^ \r\n]+ HTTP/1\.1\r\n")
REQUEST_LINES_1_1 = re.compile(r"(?:^|(?<=\n))[!-~]+ [^ \r\n]+ HTTP/1\.1\r\n")


def with_host(case: dict) -> dict:
    raw = REQUEST_LINES_1_1.sub(lambda m: m.group(0) + "Host: corpus.test\r\n", case["raw"])
    return dict(case, id=case["id"] + "+host", raw=raw)


# Cases whose grade rests on the missing Host or on the source parser's own policy, not on
# RFC 9112: with a Host field they are no longer what their grade says.
NO_HOST_VARIANT = {
    "llhttp/content-length#16": "llhttp resets its parser mid-stream; over a socket the "
                                "123-byte body takes in the next request",
    "llhttp/invalid#14": "MKCOLA is a valid token method (RFC 9110 9.1); llhttp has a method "
                         "whitelist (the corpus regrades ANNOUNCE to info for that reason)",
    "gunicorn/invalid/003c": "-bl is a valid token method; lowercase methods are gunicorn "
                             "policy (the corpus grades -BLARGH accept)",
    "gunicorn/invalid/017": "an 8189-byte field line: a gunicorn limit, within our 8190",
}
HOST_VARIANTS = [with_host(case) for case in CASES
                 if case["expect"] in ASSERTED and lacks_host_on_1_1(case["raw"])
                 and FIRST_LINE_1_1.match(case["raw"]) and case["id"] not in NO_HOST_VARIANT]


@pytest.mark.parametrize("case", HOST_VARIANTS, ids=[case["id"] for case in HOST_VARIANTS])
def test_corpus_case_with_host(servers, case):
    run_case(servers, case, case["expect"] + "+host")

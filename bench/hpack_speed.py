"""What HPACK costs per header block: ours (duck_prefork/http2/hpack.py, compiled when this
checkout has run `setup.py build_ext --inplace`) against the hpack package h2 uses.

    .venv/bin/python bench/hpack_speed.py            # LOOPS=20000 REPS=7

Blocks: an h2load request (:method GET, :path /, :scheme http, :authority, user-agent, accept,
accept-encoding; Huffman-coded, as nghttp2 sends it), decoded by a fresh decoder (the first
request of a connection: literals, Huffman) and by one that has seen it (every later request:
all indexed); and a hello-world response (:status 200, content-type, content-length, server,
date) encoded by an encoder that has sent it before (the steady state: every field indexed),
and with a new date each block (once a second in a server). Each figure is the best of REPS
runs of LOOPS blocks, in ns per block: on a shared machine the best run is the least
disturbed one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not the venv's

from duck_prefork import build  # noqa: E402
from duck_prefork.http2 import hpack as ours  # noqa: E402

LOOPS = int(os.environ.get("LOOPS", "20000"))
REPS = int(os.environ.get("REPS", "7"))

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
           (b":authority", b"127.0.0.1:8000"), (b"user-agent", b"h2load nghttp2/1.52.0"),
           (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"),
            (b"content-length", b"13"), (b"server", b"duck-prefork"),
            (b"date", b"Mon, 07 Dec 2026 06:00:00 GMT")]


def best_ns(run: Callable[[int], None]) -> float:
    """The best of REPS runs of run(LOOPS), in ns per loop."""
    best = float("inf")
    for _ in range(REPS):
        start = time.perf_counter_ns()
        run(LOOPS)
        best = min(best, (time.perf_counter_ns() - start) / LOOPS)
    return best


def decode_first(make: Callable[[], Callable[[bytes], object]], block: bytes) -> float:
    def run(loops: int) -> None:
        for _ in range(loops):
            make()(block)
    return best_ns(run)


def decode_again(decode: Callable[[bytes], object], first: bytes, again: bytes) -> float:
    decode(first)

    def run(loops: int) -> None:
        for _ in range(loops):
            decode(again)
    return best_ns(run)


def encode_same(encode: Callable[[list[tuple[bytes, bytes]]], bytes]) -> float:
    encode(RESPONSE)

    def run(loops: int) -> None:
        for _ in range(loops):
            encode(RESPONSE)
    return best_ns(run)


def encode_new_date(encode: Callable[[list[tuple[bytes, bytes]]], bytes]) -> float:
    responses = [RESPONSE[:4] + [(b"date", b"Mon, 07 Dec 2026 06:%02d:%02d GMT" % divmod(i, 60))]
                 for i in range(3600)]
    encode(RESPONSE)

    def run(loops: int) -> None:
        for i in range(loops):
            encode(responses[i % 3600])
    return best_ns(run)


def main() -> None:
    encoder = hpack.Encoder()  # as nghttp2: Huffman, incremental indexing
    first, again = encoder.encode(REQUEST), encoder.encode(REQUEST)
    assert ours.Decoder().decode(first) == REQUEST
    compiled = ours.__file__.endswith(".so")
    print(f"duck-prefork hpack: {build.DESCRIPTION} ({os.path.basename(ours.__file__)}); "
          f"hpack {hpack.__version__}; Python {sys.version.split()[0]}; "
          f"load average {os.getloadavg()[0]:.2f}; LOOPS={LOOPS} REPS={REPS}")
    if not compiled:
        print("(the pure-Python build: run `setup.py build_ext --inplace` for the compiled one)")

    def reference_decoder() -> Callable[[bytes], object]:
        return hpack.Decoder().decode

    rows = [
        (f"decode request, first ({len(first)} B)",
         decode_first(lambda: ours.Decoder().decode, first),
         decode_first(reference_decoder, first)),
        (f"decode request, again ({len(again)} B)",
         decode_again(ours.Decoder().decode, first, again),
         decode_again(hpack.Decoder().decode, first, again)),
        ("encode response, same", encode_same(ours.Encoder().encode),
         encode_same(hpack.Encoder().encode)),
        ("encode response, new date", encode_new_date(ours.Encoder().encode),
         encode_new_date(hpack.Encoder().encode)),
    ]
    print(f"{'ns per block':34} {'ours':>8} {'hpack':>8} {'hpack/ours':>10}")
    for what, mine, theirs in rows:
        print(f"{what:34} {mine:8.0f} {theirs:8.0f} {theirs / mine:9.1f}x")


if __name__ == "__main__":
    main()

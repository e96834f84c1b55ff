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

    .venv/bin/python bench/hpack_speed.py instr      # N1=1000 N2=5000

counts instructions per block instead (valgrind, as bench/instr: each case runs N1 and N2
times under `valgrind --tool=cachegrind`, and (Ir(N2) - Ir(N1)) / (N2 - N1) is its cost,
independent of the machine's load).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
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


def request_blocks() -> tuple[bytes, bytes]:
    encoder = hpack.Encoder()  # as nghttp2: Huffman, incremental indexing
    return encoder.encode(REQUEST), encoder.encode(REQUEST)


def case_loop(case: str, library: str) -> Callable[[int], None]:
    """run(loops) for one case of one library, set up and warmed (for `instr`)."""
    first, again = request_blocks()
    new_decoder = ours.Decoder if library == "ours" else hpack.Decoder
    new_encoder = ours.Encoder if library == "ours" else hpack.Encoder
    responses = [RESPONSE[:4] + [(b"date", b"Mon, 07 Dec 2026 06:%02d:%02d GMT" % divmod(i, 60))]
                 for i in range(3600)]
    decoder, encoder = new_decoder(), new_encoder()
    decoder.decode(first)
    encoder.encode(RESPONSE)

    def decode_first(loops: int) -> None:
        for _ in range(loops):
            new_decoder().decode(first)

    def decode_again(loops: int) -> None:
        for _ in range(loops):
            decoder.decode(again)

    def encode_same(loops: int) -> None:
        for _ in range(loops):
            encoder.encode(RESPONSE)

    def encode_new_date(loops: int) -> None:
        for i in range(loops):
            encoder.encode(responses[i % 3600])
    return {"decode_first": decode_first, "decode_again": decode_again,
            "encode_same": encode_same, "encode_new_date": encode_new_date}[case]


CASES = ("decode_first", "decode_again", "encode_same", "encode_new_date")


def instructions() -> None:
    """Instructions per block of each case, ours and hpack's, with valgrind."""
    n1, n2 = int(os.environ.get("N1", "1000")), int(os.environ.get("N2", "5000"))
    print(f"duck-prefork hpack: {build.DESCRIPTION}; hpack {hpack.__version__}; "
          f"valgrind cachegrind, N1={n1} N2={n2}")
    print(f"{'instructions per block':34} {'ours':>8} {'hpack':>8} {'hpack/ours':>10}")
    with tempfile.TemporaryDirectory() as work:
        for case in CASES:
            counts = []
            for library in ("ours", "hpack"):
                irs = []
                for n in (n1, n2):
                    out = os.path.join(work, f"{case}-{library}-{n}")
                    run = subprocess.run(
                        ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                         "--branch-sim=no", f"--cachegrind-out-file={out}",
                         sys.executable, __file__, "run", case, library, str(n)],
                        capture_output=True, text=True, check=True,
                        env={**os.environ, "PYTHONHASHSEED": "0"})
                    irs.append(int(re.findall(r"I\s*refs:\s*([\d,]+)", run.stderr)[-1]
                                   .replace(",", "")))
                counts.append((irs[1] - irs[0]) / (n2 - n1))
            print(f"{case:34} {counts[0]:8.0f} {counts[1]:8.0f} "
                  f"{counts[1] / counts[0]:9.1f}x")


def main() -> None:
    if sys.argv[1:2] == ["instr"]:
        instructions()
        return
    if sys.argv[1:2] == ["run"]:  # one case, for valgrind: run CASE LIBRARY LOOPS
        case_loop(sys.argv[2], sys.argv[3])(int(sys.argv[4]))
        return
    first, again = request_blocks()
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

# Sourced by bench/run, bench/balance and bench/respawn: the tools they need and their venv.
#
# The venv (BENCH_VENV, default bench/.venv; created with $PYTHON, default python3) holds this
# checkout (pip install -e) and the peers at the versions the shared yardstick
# (../shared/bench/peers.sh) measured: they are checked on every run, and installed again if
# missing or if pyproject.toml (duck-prefork's own dependencies) changed since.
# shellcheck shell=bash

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${BENCH_VENV:-$HERE/.venv}
PY=$VENV/bin/python
# pip requirement specifiers of the peers; duck-prefork brings uvloop, h11, httptools, psutil.
PEERS=("uvicorn==0.54.*" "httptools>=0.6" "gunicorn==27.*" "gunicorn_h1c==0.6.*" "granian==2.8.*")

say() { echo "bench/$(basename "$0"): $*" >&2; }
die() { say "$*"; exit 1; }

need_tools() {  # wrk, taskset, and 2 CPUs
    command -v wrk >/dev/null || die "wrk not found: apt-get install -y wrk"
    command -v taskset >/dev/null || die "taskset not found: apt-get install -y util-linux"
    (( $(nproc) >= 2 )) || die "needs 2 CPUs: the servers run on CPU 1, wrk on CPU 0"
}

stamp() {  # what the venv was installed from
    { cat "$ROOT/pyproject.toml"; echo "${PEERS[*]}"; } | sha256sum | cut -d ' ' -f 1
}

venv_ready() {  # duck-prefork from this checkout (-I: not found via the cwd) and every peer pin
    [[ -x $VENV/bin/duck-prefork && $(cat "$VENV/.bench-stamp" 2>/dev/null) == "$(stamp)" ]] &&
        "$PY" -I - "$ROOT" "${PEERS[@]}" 2>/dev/null <<'EOF'
import pathlib, sys
from importlib.metadata import version
import duck_prefork, psutil, uvloop
root, *pins = sys.argv[1:]
if pathlib.Path(duck_prefork.__file__).resolve().parents[1] != pathlib.Path(root).resolve():
    sys.exit(1)
for pin in pins:
    if "==" in pin:  # "name==X.Y.*": the installed version starts with X.Y.
        name, wanted = pin.split("==")
        if not (version(name) + ".").startswith(wanted.rstrip("*")):
            sys.exit(1)
    else:
        version(pin.split(">=")[0])
EOF
}

ensure_venv() {
    if [[ ! -x $PY ]]; then
        say "creating the benchmark venv $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    if ! venv_ready; then
        say "installing duck-prefork (editable, from $ROOT) and ${PEERS[*]} into $VENV"
        "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT" "${PEERS[@]}" >&2
        stamp > "$VENV/.bench-stamp"
        venv_ready || die "$VENV still lacks duck-prefork from $ROOT or one of ${PEERS[*]}"
    fi
}

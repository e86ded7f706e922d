#!/usr/bin/env bash
# The README's test command. Installs what the integration tests need on a fresh Debian machine
# (a mosquitto broker and its command-line clients, used as an independent MQTT peer; Python 3
# with aiohttp for the official W3C Trace Context suite), then runs every test target and the doc
# tests. Each test starts its own broker on a free loopback port and stops it when it ends;
# nothing listens on a fixed port.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

have_mosquitto() {
    { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
        command -v mosquitto_pub >/dev/null 2>&1 &&
        command -v mosquitto_sub >/dev/null 2>&1
}

# tests/tls.rs makes its certificates with the openssl command.
have_openssl() { command -v openssl >/dev/null 2>&1; }

if ! have_mosquitto || ! have_openssl; then
    echo "scripts/test.sh: installing mosquitto, mosquitto-clients and openssl" >&2
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends \
        mosquitto mosquitto-clients openssl
fi

# tests/w3c_conformance.rs runs the official W3C Trace Context suite (tests/w3c-trace-context),
# a Python 3 program that needs aiohttp.
have_python() { command -v python3 >/dev/null 2>&1; }
have_aiohttp() { python3 -c 'import aiohttp' >/dev/null 2>&1; }
install_apt_aiohttp() {
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends \
        python3 python3-aiohttp
}
if ! have_python; then
    echo "scripts/test.sh: installing python3 and python3-aiohttp" >&2
    install_apt_aiohttp
elif ! have_aiohttp; then
    echo "scripts/test.sh: installing aiohttp for $(command -v python3)" >&2
    # A Debian system Python refuses pip (PEP 668): take its packaged aiohttp instead.
    python3 -m pip install aiohttp || install_apt_aiohttp
fi

cargo test --all-targets
cargo test --doc
# The examples (sensor -> gateway -> collector into SQLite) end to end against mosquitto.
cargo test --features examples --test examples_e2e
# With bound instruments the duration histograms take another path: the metrics tests prove the
# measurements arrive (the feature also turns the SDK's half on).
cargo test --features bound-instruments --test metrics --lib

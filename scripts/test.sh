#!/usr/bin/env bash
# The README's test command. Installs what the integration tests need on a fresh Debian machine
# (a mosquitto broker and its command-line clients, used as an independent MQTT peer), then runs
# every test target and the doc tests. Each test starts its own broker on a free loopback port and
# stops it when it ends; nothing listens on a fixed port.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mosquitto() {
    { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
        command -v mosquitto_pub >/dev/null 2>&1 &&
        command -v mosquitto_sub >/dev/null 2>&1
}

# tests/tls.rs makes its certificates with the openssl command.
have_openssl() { command -v openssl >/dev/null 2>&1; }

if ! have_mosquitto || ! have_openssl; then
    echo "scripts/test.sh: installing mosquitto, mosquitto-clients and openssl" >&2
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends \
        mosquitto mosquitto-clients openssl
fi

cargo test --all-targets
cargo test --doc
# The examples (sensor -> gateway -> collector into SQLite) end to end against mosquitto.
cargo test --features examples --test examples_e2e

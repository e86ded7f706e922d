#!/usr/bin/env bash
# The README's demo command: a temperature sensor, a gateway and a collector talk over MQTT
# through an MQTT broker embedded in the same process (rumqttd), then the demo prints the
# waterfall of one complete trace and a summary of the metrics, and exits.
#
# Needs only Rust (cargo). The first run compiles the demo in release mode (a few minutes on a
# small machine); later runs start at once. Options go to the demo, for example:
#
#   scripts/demo.sh --readings 10 --mqtt 3
#   scripts/demo.sh --broker localhost:1883     # any broker instead of the embedded one
#   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 DEMO_FEATURES=demo,otlp scripts/demo.sh
#
# `scripts/demo.sh --help` lists them all.
set -euo pipefail
cd "$(dirname "$0")/.."

features="${DEMO_FEATURES:-demo}"
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ] && [ -z "${DEMO_FEATURES:-}" ]; then
    features="demo,otlp"
fi

exec cargo run --quiet --release --features "$features" --example demo -- "$@"

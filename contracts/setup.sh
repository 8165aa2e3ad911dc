#!/usr/bin/env bash
# Installs the tools of the cross-language contract checks into target/contracts, once per
# change of contracts/package-lock.json or contracts/requirements.txt:
#   target/contracts/node   @asyncapi/parser (the reference AsyncAPI parser), with Node.js
#   target/contracts/venv   a Python venv with jsonschema and psycopg, for consumer.py
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/contracts
mkdir -p "$tools/node"

if ! cmp -s contracts/package-lock.json "$tools/node/package-lock.json" \
    || [ ! -d "$tools/node/node_modules/@asyncapi/parser" ]; then
    echo "installing @asyncapi/parser into $tools/node"
    cp contracts/package.json contracts/package-lock.json "$tools/node/"
    npm ci --prefix "$tools/node" --ignore-scripts --no-audit --no-fund --loglevel=error
fi

if ! cmp -s contracts/requirements.txt "$tools/venv/requirements.txt" \
    || [ ! -x "$tools/venv/bin/python" ]; then
    echo "creating the Python venv $tools/venv"
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet -r contracts/requirements.txt
    cp contracts/requirements.txt "$tools/venv/requirements.txt"
fi

#!/usr/bin/env python3
"""A consumer in another language: validates stored events against the exported contracts.

It reads only what a consumer outside the Rust code has: index.json and the schema files.
Every row (stream type, event type as stored, schema version, payload) is resolved through the
index, aliases and retired entries included, and validated with the JSON Schema the row's
version declares. The committed samples are validated too, and a deliberately wrong payload
must be rejected, so a check that accepts anything fails.

    consumer.py --schemas examples/schemas --sqlite examples/out/orders.db
    consumer.py --schemas examples/schemas --postgres postgres://... --pg-schema es_orders_example
    consumer.py --schemas examples/schemas            # samples and the self-check only

Exits 0 when every event validates, 1 when one does not (each is printed), 2 on bad usage.
"""

import argparse
import copy
import json
import pathlib
import sqlite3
import sys

from jsonschema import Draft202012Validator


class Contracts:
    def __init__(self, directory):
        self.directory = pathlib.Path(directory)
        self.index = json.loads((self.directory / "index.json").read_text())
        self.validators = {}

    def resolve(self, stream_type, event_type, version):
        """The index entry of a stored row's files, or None."""
        for event in self.index["events"]:
            names = [event["event_type"], *event.get("aliases", [])]
            if event["stream_type"] == stream_type and event_type in names:
                for entry in event["versions"]:
                    if entry["version"] == version:
                        return entry
        for retired in self.index.get("retired", []):
            if retired["stream_type"] == stream_type and retired["event_type"] == event_type:
                for entry in retired.get("versions", []):
                    if entry["version"] == version:
                        return entry
        return None

    def validator(self, schema_file):
        if schema_file not in self.validators:
            schema = json.loads((self.directory / schema_file).read_text())
            Draft202012Validator.check_schema(schema)
            self.validators[schema_file] = Draft202012Validator(schema)
        return self.validators[schema_file]

    def problems(self, stream_type, event_type, version, payload):
        """Why a row does not match its contract; empty when it does."""
        entry = self.resolve(stream_type, event_type, version)
        if entry is None:
            return [f"no schema for `{stream_type}/{event_type}` version {version} in index.json"]
        validator = self.validator(entry["schema"])
        return [
            f"{entry['schema']}: at /{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(payload)
        ]

    def samples(self):
        for event in self.index["events"]:
            for entry in event["versions"]:
                payload = json.loads((self.directory / entry["sample"]).read_text())
                yield event["stream_type"], event["event_type"], entry["version"], payload


def sqlite_rows(path):
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT stream_type, event_type, schema_version, payload FROM es_events ORDER BY position"
        for stream_type, event_type, version, payload in connection.execute(query):
            yield stream_type, event_type, version, json.loads(payload)
    finally:
        connection.close()


def postgres_rows(url, schema):
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as connection:
        query = sql.SQL(
            "SELECT stream_type, event_type, schema_version, payload FROM {}.events "
            "ORDER BY transaction_id::text::numeric, position"
        ).format(sql.Identifier(schema))
        for stream_type, event_type, version, payload in connection.execute(query):
            yield stream_type, event_type, int(version), payload


def wrong(payload):
    """A copy of an object payload that breaks its schema: a required field with a value of a
    type no JSON Schema type of it allows (an object where a scalar belongs, or a string)."""
    if not isinstance(payload, dict) or not payload:
        return None
    broken = copy.deepcopy(payload)
    name = sorted(broken)[0]
    broken[name] = {"not": "the declared type"} if not isinstance(broken[name], dict) else "x"
    return broken


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", required=True, help="the directory of index.json")
    parser.add_argument("--sqlite", help="an es-sqlite database file")
    parser.add_argument("--postgres", help="a PostgreSQL URL")
    parser.add_argument("--pg-schema", default="es", help="the es-postgres schema (default es)")
    arguments = parser.parse_args()
    contracts = Contracts(arguments.schemas)

    # Stored rows first, so that the self-check below breaks a real stored payload.
    sources = []
    if arguments.sqlite:
        sources.append((f"sqlite {arguments.sqlite}", sqlite_rows(arguments.sqlite)))
    if arguments.postgres:
        sources.append(
            (f"postgres schema {arguments.pg_schema}", postgres_rows(arguments.postgres, arguments.pg_schema))
        )
    sources.append(("sample", contracts.samples()))

    failed = 0
    a_valid_object = None
    for source, rows in sources:
        count = 0
        for stream_type, event_type, version, payload in rows:
            count += 1
            problems = contracts.problems(stream_type, event_type, version, payload)
            for problem in problems:
                print(f"FAIL {source}: {stream_type}/{event_type} v{version}: {problem}")
            failed += bool(problems)
            if not problems and a_valid_object is None and wrong(payload) is not None:
                a_valid_object = (stream_type, event_type, version, payload)
        if count == 0 and source != "sample":
            print(f"FAIL {source}: no events found; run the examples first")
            failed += 1
        print(f"{source}: {count} events checked")

    # The self-check: a wrong payload of a type with required fields must be rejected.
    if a_valid_object is None:
        print("FAIL self-check: no payload with fields to break was found")
        failed += 1
    else:
        stream_type, event_type, version, payload = a_valid_object
        rejected = contracts.problems(stream_type, event_type, version, wrong(payload))
        if rejected:
            print(f"self-check: a wrong {stream_type}/{event_type} v{version} payload is rejected: {rejected[0]}")
        else:
            print(f"FAIL self-check: the wrong payload {json.dumps(wrong(payload))} of {stream_type}/{event_type} v{version} was accepted")
            failed += 1

    print(f"consumer: {'all events match their contracts' if not failed else f'{failed} failures'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

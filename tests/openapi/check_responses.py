#!/usr/bin/env python3
"""Checks real HTTP answers of a switchboard host against its OpenAPI document.

Usage: check_responses.py DOCUMENT SAMPLES

DOCUMENT is the host's `/api/openapi.json`; SAMPLES is a JSON list of answers the test
recorded: `{"method", "path", "status", "body"}`, `path` being the document's path template
(`/api/agents/{agent}/runs/claim`) and `body` the parsed JSON body (`null` for none).

Each answer must be documented (the path, the method and the status) and its body must be
valid against the documented schema, checked with openapi-schema-validator's OAS 3.1 validator
(JSON Schema 2020-12 with the OpenAPI vocabulary). Checks are strict: every object schema is
closed (`unevaluatedProperties: false`), so a field the host sends but the document does not
describe fails too. An answer documented without a body must come without one.

Prints one line per answer and exits 1 when any does not conform.
"""

from __future__ import annotations

import copy
import json
import sys

from openapi_schema_validator import OAS31Validator


def closed(schema, in_all_of=False):
    """The schema with every object that lists `properties` closed to other properties.

    A member of an `allOf` is left open (its siblings add properties); the `allOf` holder is
    closed instead, which in JSON Schema 2020-12 sees the properties its members evaluated.
    """
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "allOf":
            out[key] = [closed(member, in_all_of=True) for member in value]
        elif key in ("properties", "$defs", "patternProperties"):
            out[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "oneOf", "anyOf", "prefixItems"):
            out[key] = closed(value)
        else:
            out[key] = value
    if not in_all_of and ("properties" in schema or "allOf" in schema):
        out.setdefault("unevaluatedProperties", False)
    return out


def main() -> int:
    document_path, samples_path = sys.argv[1], sys.argv[2]
    with open(document_path, encoding="utf-8") as f:
        document = json.load(f)
    with open(samples_path, encoding="utf-8") as f:
        samples = json.load(f)
    components = copy.deepcopy(document.get("components", {}))
    # Components referenced straight from an allOf stay open (see `closed`).
    in_all_of = set()

    def find_all_of_refs(node):
        if isinstance(node, dict):
            for member in node.get("allOf", []):
                ref = member.get("$ref", "") if isinstance(member, dict) else ""
                if ref.startswith("#/components/schemas/"):
                    in_all_of.add(ref.rsplit("/", 1)[1])
            for value in node.values():
                find_all_of_refs(value)
        elif isinstance(node, list):
            for value in node:
                find_all_of_refs(value)

    find_all_of_refs(document)
    schemas = components.get("schemas", {})
    for name, schema in list(schemas.items()):
        schemas[name] = closed(schema, in_all_of=name in in_all_of)

    failures = 0
    for sample in samples:
        method, path, status = sample["method"].lower(), sample["path"], str(sample["status"])
        label = f"{method.upper()} {path} -> {status}"
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            print(f"FAIL {label}: the document has no such operation")
            failures += 1
            continue
        response = operation.get("responses", {}).get(status)
        if response is None:
            print(f"FAIL {label}: the document lists no {status} answer for it")
            failures += 1
            continue
        content = response.get("content", {})
        body = sample["body"]
        if not content:
            if body is not None:
                print(f"FAIL {label}: documented without a body, but one came: {body!r}")
                failures += 1
            else:
                print(f"ok   {label} (no body)")
            continue
        media = content.get("application/json")
        if media is None:
            print(f"FAIL {label}: not documented as application/json: {sorted(content)}")
            failures += 1
            continue
        schema = {"components": components, "allOf": [closed(media.get("schema", {}))]}
        errors = sorted(OAS31Validator(schema).iter_errors(body), key=lambda e: list(e.path))
        if errors:
            failures += 1
            print(f"FAIL {label}:")
            for error in errors[:5]:
                where = "/".join(str(p) for p in error.absolute_path) or "(body)"
                print(f"     at {where}: {error.message}")
        else:
            print(f"ok   {label}")
    print(f"{len(samples) - failures} of {len(samples)} answers conform")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

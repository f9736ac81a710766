#!/usr/bin/env python3
"""Checks live admin API answers against docs/admin-openapi.yaml.

usage: python3 tests/openapi_check.py docs/admin-openapi.yaml SAMPLES_DIR

SAMPLES_DIR holds the JSON bodies the integration tests wrote when run with
FUSEBOX_OPENAPI_SAMPLES=SAMPLES_DIR, one file per answer, named
`<operationId>.<status>.<anything>.json`. The script

1. validates the spec itself as OpenAPI 3.0 (openapi-spec-validator);
2. validates every sample against the schema of its operation's response for that
   status (openapi-schema-validator's OAS 3.0 dialect: `nullable`, formats included);
   a status the spec does not document for that operation is an error;
3. fails when an operation with a JSON 2xx response has no 2xx sample, so a test that
   stopped writing samples cannot make the check pass vacuously.

Needs: pip install pyyaml openapi-spec-validator   (brings openapi-schema-validator)
"""

import json
import pathlib
import sys

import yaml
from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_spec

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def resolve(spec, node):
    """Follows a `$ref` to `#/components/...` (responses may be references)."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise SystemExit(f"only local references are supported: {ref}")
        node = spec
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def operations(spec):
    """operationId -> {status: JSON schema or None (not JSON)}."""
    ops = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            op_id = op.get("operationId")
            if not op_id:
                raise SystemExit(f"{method.upper()} {path} has no operationId")
            responses = {}
            for status, resp in op["responses"].items():
                resp = resolve(spec, resp)
                media = resp.get("content", {}).get("application/json")
                responses[str(status)] = media["schema"] if media else None
            ops[op_id] = responses
    return ops


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    spec_path, samples_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    spec = yaml.safe_load(spec_path.read_text())
    version = str(spec.get("openapi", ""))
    if not version.startswith("3.0."):
        raise SystemExit(f"{spec_path}: expected OpenAPI 3.0.x, found {version!r}")
    validate_spec(spec)
    print(f"{spec_path}: valid OpenAPI {version}")

    ops = operations(spec)
    samples = sorted(samples_dir.glob("*.json"))
    if not samples:
        raise SystemExit(f"no samples in {samples_dir}: run the tests with FUSEBOX_OPENAPI_SAMPLES set")

    failures = []
    seen = {}
    for sample in samples:
        op_id, status = sample.name.split(".")[:2]
        if op_id not in ops:
            failures.append(f"{sample.name}: no operation {op_id!r} in the spec")
            continue
        responses = ops[op_id]
        if status in responses:
            schema = responses[status]
        elif "default" in responses:
            schema = responses["default"]
        else:
            failures.append(f"{sample.name}: status {status} is not documented for {op_id}")
            continue
        if schema is None:
            failures.append(f"{sample.name}: {op_id} {status} is not documented as JSON")
            continue
        seen.setdefault(op_id, set()).add(status)
        body = json.loads(sample.read_text())
        # The schema sits in a document that carries the components its $refs name.
        root = {"allOf": [schema], "components": spec["components"]}
        validator = OAS30Validator(root, format_checker=oas30_format_checker)
        errors = list(validator.iter_errors(body))
        if errors:
            err = best_match(errors)
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            failures.append(f"{sample.name}: at {where}: {err.message}")

    for op_id, responses in sorted(ops.items()):
        wanted = {s for s, schema in responses.items() if s.startswith("2") and schema is not None}
        if wanted and not wanted & seen.get(op_id, set()):
            failures.append(f"{op_id}: no 2xx sample (statuses seen: {sorted(seen.get(op_id, []))})")

    for op_id in sorted(seen):
        print(f"  {op_id}: statuses {', '.join(sorted(seen[op_id]))}")
    print(f"{len(samples)} samples checked against {len(ops)} operations")
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()

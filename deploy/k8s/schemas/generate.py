"""Writes keda.sh_v1alpha1_scaledobject.json: the JSON Schema of a KEDA ScaledObject.

The schema comes from the cloudcoil-models-keda package on PyPI, whose models are generated from
the ScaledObject CustomResourceDefinition (openAPIV3Schema) of the KEDA release in its version.
Turned into one self-contained JSON Schema and made strict as the API server is with
`kubectl apply --validate=strict`: an object with known properties takes no others.

    python3 -m venv /tmp/keda-schema
    /tmp/keda-schema/bin/pip install cloudcoil-models-keda==2.16.1.0
    /tmp/keda-schema/bin/python deploy/k8s/schemas/generate.py
"""

import json
from importlib.metadata import version
from pathlib import Path

from cloudcoil.models.keda.v1alpha1 import ScaledObject

OUT = Path(__file__).with_name("keda.sh_v1alpha1_scaledobject.json")


def simplify(node, defs, seen=()):
    """Inlines $refs, drops pydantic's `null` alternatives, titles and defaults, closes objects."""
    if isinstance(node, list):
        return [simplify(n, defs, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            raise SystemExit(f"recursive definition {name}")
        return simplify(defs[name], defs, (*seen, name))
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            merged.update(options[0])
            return simplify(merged, defs, seen)
    out = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key == "properties":
            out[key] = {name: simplify(v, defs, seen) for name, v in value.items()}
        else:
            out[key] = simplify(value, defs, seen)
    if out.get("type") == "object" and out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def main():
    raw = ScaledObject.model_json_schema(by_alias=True, mode="validation")
    schema = simplify({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {}))
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "spec"})
    schema["properties"]["apiVersion"] = {"type": "string", "const": "keda.sh/v1alpha1"}
    schema["properties"]["kind"] = {"type": "string", "const": "ScaledObject"}
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://keda.sh/schemas/keda.sh/v1alpha1/scaledobject.json",
        "title": "ScaledObject (keda.sh/v1alpha1)",
        "description": (
            "KEDA ScaledObject, from the CustomResourceDefinition of KEDA "
            f"{version('cloudcoil-models-keda').rsplit('.', 1)[0]} (via cloudcoil-models-keda "
            f"{version('cloudcoil-models-keda')}); objects are closed to unknown fields. "
            "Written by deploy/k8s/schemas/generate.py."
        ),
        **schema,
    }
    OUT.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""Validates rendered Kubernetes manifests; run by deploy/check.sh.

    validate.py --kubernetes-version 1.37.0 --schemas deploy/k8s/schemas \
        [--complete LABEL=FILE]... [LABEL=FILE]...

Each FILE is the output of `kubectl kustomize` for the overlay or base named LABEL. Every object
is validated strictly (unknown fields are errors): built-in kinds by kubernetes-validate against
the OpenAPI schemas of that Kubernetes release, KEDA ScaledObjects against the vendored JSON
Schema in deploy/k8s/schemas. Then the cross-object rules of these manifests are checked (config
references resolve, NATS routes match the replica count, ...).

Renders given with --complete are whole deployments (the overlays): the rules across objects
apply to them. Prints one line per object or rule, tab-separated: `ok<TAB>what` or
`FAIL<TAB>what<TAB>why`; exits 1 if anything failed. With --self-test, first checks that strict
validation does reject unknown fields.
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

# Custom resources with a vendored schema: (apiVersion, kind) -> schema file.
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
}


class Report:
    def __init__(self):
        self.failed = 0

    def ok(self, what):
        print(f"ok\t{what}", flush=True)

    def fail(self, what, why):
        self.failed += 1
        why = " ".join(str(why).split())
        print(f"FAIL\t{what}\t{why}", flush=True)

    def check(self, what, failures):
        if failures:
            self.fail(what, "; ".join(failures))
        else:
            self.ok(what)


def name_of(obj):
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = meta.get("name", "<no name>")
    return f"{obj.get('kind', '<no kind>')} {namespace + '/' if namespace else ''}{name}"


def error_text(error):
    path = "/".join(str(p) for p in error.absolute_path)
    return f"{error.message} (at /{path})" if path else error.message


def validate_object(obj, version, schemas):
    """Returns None when valid, else why not."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in schemas:
        validator = jsonschema.Draft202012Validator(schemas[key])
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        return "; ".join(error_text(e) for e in errors) or None
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {key[0]} {key[1]} in Kubernetes {version} or deploy/k8s/schemas"
    except kubernetes_validate.ValidationError as e:
        return error_text(e)
    return None


def duration_seconds(text):
    """Seconds of a humantime-like duration (30s, 1m30s, 2h); None if not one."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(n) * units[u] for n, u in parts)


def pod_specs(objects):
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet"):
            yield obj, obj["spec"]["template"]["spec"]


def env_of(container, config_maps):
    """The environment of a container: its ConfigMaps' data, then its own env."""
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in config_maps:
            env.update(config_maps[ref["name"]].get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def check_rules(label, objects, report):
    """Rules across objects that no schema expresses."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    config_maps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    accounts = by_kind.get("ServiceAccount", {})

    # Every ConfigMap, Secret and ServiceAccount a pod names is part of the render.
    missing = []
    for owner, spec in pod_specs(objects):
        where = name_of(owner)
        if spec.get("serviceAccountName") and spec["serviceAccountName"] not in accounts:
            missing.append(f"{where}: ServiceAccount {spec['serviceAccountName']}")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                missing.append(f"{where}: ConfigMap {volume['configMap']['name']}")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                missing.append(f"{where}: Secret {volume['secret']['secretName']}")
        for container in spec.get("containers", []):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                pool = config_maps if "configMapRef" in source else secrets
                if ref["name"] not in pool:
                    missing.append(f"{where}: {ref['name']}")
    report.check(f"{label}: every ConfigMap, Secret and ServiceAccount referenced exists", missing)

    # Every Service selects pods of some workload of the render.
    orphans = []
    for service in services.values():
        selector = service["spec"].get("selector", {})
        if not any(
            selector.items() <= owner["spec"]["template"]["metadata"]["labels"].items()
            for owner, _ in pod_specs(objects)
        ):
            orphans.append(name_of(service))
    report.check(f"{label}: every Service selects a workload", orphans)

    # Workers: killed only after their drain grace (TASKWIRE_GRACE, 30s by default) is over.
    late = []
    for owner, spec in pod_specs(objects):
        labels = owner["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") != "worker":
            continue
        period = spec.get("terminationGracePeriodSeconds", 30)
        for container in spec["containers"]:
            grace = duration_seconds(env_of(container, config_maps).get("TASKWIRE_GRACE", "30s"))
            if grace is None or period <= grace:
                late.append(f"{name_of(owner)}: terminationGracePeriodSeconds {period} <= TASKWIRE_GRACE")
    report.check(f"{label}: worker termination grace exceeds TASKWIRE_GRACE", late)

    # NATS: one route per replica, and no stream with more replicas than servers.
    nats = by_kind.get("StatefulSet", {}).get("nats")
    if nats:
        problems = []
        replicas = nats["spec"].get("replicas", 1)
        config_name = next(
            v["configMap"]["name"] for v in nats["spec"]["template"]["spec"]["volumes"] if "configMap" in v
        )
        cluster = config_maps.get(config_name, {}).get("data", {}).get("cluster.conf", "")
        routes = re.findall(r"nats://nats-(\d+)\.nats-headless:6222", cluster)
        if replicas > 1 and sorted(map(int, routes)) != list(range(replicas)):
            problems.append(f"{replicas} replicas but routes to nats-{', nats-'.join(routes) or '(none)'}")
        if replicas == 1 and re.search(r"^\s*cluster\s*{", cluster, re.M):
            problems.append("one replica with a cluster block (JetStream would wait for peers)")
        wanted = {
            int(cm.get("data", {}).get("TASKWIRE_REPLICAS", "1"))
            for cm in config_maps.values()
            if "TASKWIRE_REPLICAS" in cm.get("data", {})
        }
        if any(w > replicas for w in wanted):
            problems.append(f"TASKWIRE_REPLICAS={max(wanted)} with {replicas} NATS server(s)")
        report.check(f"{label}: NATS routes and stream replicas match {replicas} server(s)", problems)

    # KEDA: each ScaledObject scales a Deployment of the render, which no longer sets replicas.
    for scaled in by_kind.get("ScaledObject", {}).values():
        problems = []
        target = scaled["spec"]["scaleTargetRef"]
        deployment = deployments.get(target["name"])
        if target.get("kind", "Deployment") != "Deployment" or deployment is None:
            problems.append(f"target Deployment {target['name']} is not in the render")
        elif "replicas" in deployment["spec"]:
            problems.append(f"Deployment {target['name']} sets replicas, which an apply would reset")
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger.get("metadata", {})
            if trigger["type"] == "nats-jetstream" and meta.get("stream") != "TASKWIRE_TASKS":
                problems.append(f"trigger {trigger.get('name')}: stream {meta.get('stream')}")
        report.check(f"{label}: {name_of(scaled)} targets a Deployment it alone scales", problems)

    # With NATS users (auth.conf of the prod overlay), every consumer KEDA scales on is one that
    # some worker user may pull from.
    auth = "".join(cm.get("data", {}).get("auth.conf", "") for cm in config_maps.values())
    if "authorization" in auth:
        unpulled = [
            trigger["metadata"]["consumer"]
            for scaled in by_kind.get("ScaledObject", {}).values()
            for trigger in scaled["spec"]["triggers"]
            if trigger["type"] == "nats-jetstream"
            and f'"$JS.API.CONSUMER.MSG.NEXT.TASKWIRE_TASKS.{trigger["metadata"]["consumer"]}"' not in auth
        ]
        report.check(f"{label}: every consumer KEDA scales on has a NATS user that may pull from it",
                     [f"no user may pull from {c}" for c in unpulled])


def self_test(version, schemas, report):
    """Strict validation must reject unknown fields, for built-in kinds and for ScaledObjects."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe"},
        "spec": {
            "replica": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "probe"},
        "spec": {
            "scaleTargetRef": {"name": "probe"},
            "triggers": [{"type": "nats-jetstream", "metadata": {}, "lagTreshold": "1"}],
        },
    }
    for obj, typo in ((deployment, "spec.replica"), (scaled, "spec.triggers[0].lagTreshold")):
        what = f"self-test: strict validation rejects unknown field {obj['kind']} {typo}"
        if validate_object(obj, version, schemas):
            report.ok(what)
        else:
            report.fail(what, "accepted")
    fixed = copy.deepcopy(scaled)
    del fixed["spec"]["triggers"][0]["lagTreshold"]
    why = validate_object(fixed, version, schemas)
    what = "self-test: a minimal ScaledObject is accepted"
    report.fail(what, why) if why else report.ok(what)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--schemas", type=Path, required=True)
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--complete", action="append", default=[], metavar="LABEL=FILE")
    parser.add_argument("renders", nargs="*", metavar="LABEL=FILE")
    args = parser.parse_args()

    schemas = {key: json.loads((args.schemas / file).read_text()) for key, file in CUSTOM_SCHEMAS.items()}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    report = Report()
    if args.self_test:
        self_test(args.kubernetes_version, schemas, report)

    renders = [(r, False) for r in args.renders] + [(r, True) for r in args.complete]
    for render, complete in renders:
        label, _, file = render.partition("=")
        try:
            objects = [o for o in yaml.safe_load_all(Path(file).read_text()) if o]
        except yaml.YAMLError as e:
            report.fail(label, f"{file} is not YAML: {e}")
            continue
        if not objects:
            report.fail(label, "rendered no objects")
            continue
        for obj in objects:
            why = validate_object(obj, args.kubernetes_version, schemas)
            what = f"{label}: {name_of(obj)}"
            report.fail(what, why) if why else report.ok(what)
        if complete:
            check_rules(label, objects, report)

    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

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


def containers_of(spec):
    """Every container of a pod spec: init containers (native sidecars among them), then the
    others."""
    return spec.get("initContainers", []) + spec.get("containers", [])


def image_has_version(image):
    """Whether an image names a tag or a digest (a bare placeholder such as `taskwire-worker`
    does not: no `images:` entry of the kustomizations replaced it)."""
    return "@" in image or ":" in image.rsplit("/", 1)[-1]


def pod_problems(spec, claims=()):
    """What the API server or the kubelet would refuse in a pod spec that its schema allows:
    containers without an image, mounts of volumes the pod lacks, probes on ports the container
    does not name, lifecycle hooks with more than one handler (as a patch that adds one to a
    hook which had another leaves). `claims`: the volumes a StatefulSet's claim templates add."""
    problems = []
    volumes = {v["name"] for v in spec.get("volumes", [])} | set(claims)
    for container in containers_of(spec):
        name = container["name"]
        image = container.get("image")
        if not image:
            problems.append(f"container {name} has no image (a patch for a container of another name?)")
        elif not image_has_version(image):
            problems.append(f"container {name}: image {image} has no tag or digest (no images: entry?)")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"container {name} mounts {mount['name']}, no volume of the pod")
        ports = {p["name"] for p in container.get("ports", []) if "name" in p}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            for action in ("httpGet", "tcpSocket"):
                port = ((container.get(kind) or {}).get(action) or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"container {name}: {kind} on port {port}, which it does not name")
        for hook, handler in (container.get("lifecycle") or {}).items():
            actions = [a for a in ("exec", "httpGet", "tcpSocket", "sleep") if a in (handler or {})]
            if len(actions) != 1:
                found = ", ".join(actions) or "none"
                problems.append(f"container {name}: {hook} has {len(actions)} handlers ({found}), not one")
    return problems


def socket_volume(container, path):
    """The volume a container mounts at a folder holding `path`, if any."""
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount["name"]
    return None


def sidecar_problems(spec, config_maps):
    """For a pod whose worker runtime serves an upstream in the pod (a container with
    TASKWIRE_UPSTREAM: deploy/k8s/components/worker-sidecar), whether the app keeps answering
    while the runtime drains; None for other pods. Kubernetes sends SIGTERM to every regular
    container at once, after its preStop hook: the runtime, without one, drains at once; each
    other container must wait in its preStop at least TASKWIRE_GRACE (a sleep beyond it, or an
    exec or httpGet that waits for the runtime's end), and the pod's grace period must outlast
    that wait so that the app still has time to stop."""
    runtimes = [c for c in containers_of(spec) if "TASKWIRE_UPSTREAM" in env_of(c, config_maps)]
    if not runtimes:
        return None
    problems = []
    period = spec.get("terminationGracePeriodSeconds", 30)
    for runtime in runtimes:
        name = runtime["name"]
        env = env_of(runtime, config_maps)
        grace = duration_seconds(env.get("TASKWIRE_GRACE", "30s")) or 30
        apps = [c for c in spec.get("containers", []) if c is not runtime]
        if runtime in spec.get("initContainers", []):
            problems.append(
                f"{name} is an init container: as a native sidecar it gets SIGTERM only after the app stopped"
            )
        if not apps:
            problems.append(f"{name} has no app container beside it")
        upstream = env["TASKWIRE_UPSTREAM"]
        if upstream.startswith("unix:"):
            path = upstream.removeprefix("unix:").removeprefix("//")
            volume = socket_volume(runtime, path)
            if volume is None:
                problems.append(f"{name}: no volume holds the upstream's socket {path}")
            elif not any(socket_volume(app, path) == volume for app in apps):
                problems.append(f"{name}: no app container mounts volume {volume} (socket {path})")
        elif upstream.startswith("http://"):
            host = upstream[len("http://"):].split("/")[0].rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost", "[::1]"):
                problems.append(f"{name}: TASKWIRE_UPSTREAM {upstream} is not in the pod")
        else:
            problems.append(f"{name}: TASKWIRE_UPSTREAM {upstream} is no unix:/// or http:// address")
        for app in apps:
            app_name = app["name"]
            pre_stop = (app.get("lifecycle") or {}).get("preStop")
            if not pre_stop:
                problems.append(f"container {app_name} has no preStop: it would stop under the runtime's calls")
            elif "sleep" in pre_stop:
                seconds = pre_stop["sleep"].get("seconds", 0)
                if seconds <= grace:
                    problems.append(
                        f"container {app_name}: preStop sleeps {seconds}s, not beyond TASKWIRE_GRACE ({grace:g}s)"
                    )
                if period <= seconds:
                    problems.append(
                        f"terminationGracePeriodSeconds {period} leaves {app_name} no time after its preStop ({seconds}s)"
                    )
    return problems


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
        for container in containers_of(spec):
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
        for container in containers_of(spec):
            env = env_of(container, config_maps)
            # Containers that run taskwire (a worker's own server beside the runtime does not).
            if not any(key.startswith("TASKWIRE_") for key in env):
                continue
            grace = duration_seconds(env.get("TASKWIRE_GRACE", "30s"))
            if grace is None or period <= grace:
                late.append(f"{name_of(owner)}: terminationGracePeriodSeconds {period} <= TASKWIRE_GRACE")
    report.check(f"{label}: worker termination grace exceeds TASKWIRE_GRACE", late)

    # Pod specs as the API server and the kubelet take them.
    problems = []
    for owner, spec in pod_specs(objects):
        claims = [c["metadata"]["name"] for c in owner["spec"].get("volumeClaimTemplates", [])]
        problems += [f"{name_of(owner)}: {p}" for p in pod_problems(spec, claims)]
    report.check(f"{label}: every container has a versioned image, its volumes and its probe ports", problems)

    # Workers whose runtime is a sidecar of their own gRPC server.
    for owner, spec in pod_specs(objects):
        problems = sidecar_problems(spec, config_maps)
        if problems is not None:
            report.check(f"{label}: {name_of(owner)}: the app answers until the runtime has drained", problems)

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
    # The rules on pod specs must find what they are there for.
    sidecar = {
        "terminationGracePeriodSeconds": 45,
        "containers": [
            {"name": "app", "image": "app:1", "lifecycle": {"preStop": {"sleep": {"seconds": 35}}},
             "volumeMounts": [{"name": "upstream", "mountPath": "/run/taskwire"}]},
            {"name": "runtime", "image": "runtime:1",
             "env": [{"name": "TASKWIRE_UPSTREAM", "value": "unix:///run/taskwire/upstream.sock"}],
             "ports": [{"name": "metrics", "containerPort": 9464}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
             "volumeMounts": [{"name": "upstream", "mountPath": "/run/taskwire"}]},
        ],
        "volumes": [{"name": "upstream", "emptyDir": {}}],
    }
    why = "; ".join(pod_problems(sidecar) + sidecar_problems(sidecar, {}))
    what = "self-test: a worker pod with its runtime as a sidecar passes the pod rules"
    report.fail(what, why) if why else report.ok(what)
    broken = copy.deepcopy(sidecar)
    app, runtime = broken["containers"]
    app["lifecycle"]["preStop"]["exec"] = {"command": ["true"]}
    del app["volumeMounts"]
    runtime["image"] = "runtime"
    runtime["readinessProbe"]["httpGet"]["port"] = "http"
    broken["initContainers"] = [{"name": "bare", "volumeMounts": [{"name": "gone", "mountPath": "/x"}]}]
    found = len(pod_problems(broken))
    what = ("self-test: the pod rules find an imageless container, an untagged image, an unknown "
            "volume and port, a hook with two handlers")
    report.fail(what, f"found {found} of 5") if found != 5 else report.ok(what)
    for change, fault in (
        (lambda app, pod: app.pop("lifecycle"), "an app without preStop"),
        (lambda app, pod: app["lifecycle"]["preStop"]["sleep"].update(seconds=30),
         "a preStop no longer than TASKWIRE_GRACE"),
        (lambda app, pod: pod.update(terminationGracePeriodSeconds=35), "a grace period that ends with the preStop"),
        (lambda app, pod: app.pop("volumeMounts"), "an app without the socket's volume"),
        (lambda app, pod: pod.update(initContainers=[pod["containers"].pop()]), "the runtime as a native sidecar"),
    ):
        pod = copy.deepcopy(sidecar)
        change(pod["containers"][0], pod)
        what = f"self-test: the sidecar rule rejects {fault}"
        report.ok(what) if sidecar_problems(pod, {}) else report.fail(what, "accepted")

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

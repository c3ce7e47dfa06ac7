// A real nats-server, gateway and Rust test worker for the tests, on loopback ports they choose.

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { Client, type ClientOptions } from "../src";
import { AdminDefinition } from "../src/gen/taskwire/v1/tasks";

export const ROOT = path.resolve(__dirname, "..", "..", "..", "..");
const READY_WITHIN_MS = 30_000;
const STOP_WITHIN_MS = 15_000;

/** The tasks the tests use; the system is ready once a worker has registered them all. */
const TASKS = [
  "examples.magic.v1.Magic/Add",
  "examples.chaos.v1.Chaos/Flaky",
  "examples.chaos.v1.Chaos/Sleep",
  "examples.flow.v1.Flow/Split",
];

export interface System {
  /** host:port of the gateway. */
  address: string;
  /** The NATS URL the gateway and the workers use. */
  natsUrl: string;
  /** A folder that is removed with the system. */
  store: string;
  stop(): Promise<void>;
}

export interface SystemOptions {
  /** More environment of the gateway: TASKWIRE_TLS_CERT, TASKWIRE_AUTH_TOKENS, ... */
  gatewayEnv?: NodeJS.ProcessEnv;
  /** How to reach that gateway (TLS, a token allowed to `read`), to see the worker register. */
  client?: ClientOptions;
  /** Whether the Rust test worker runs (true by default); without it, nothing serves tasks. */
  testWorker?: boolean;
}

/** A started process, with the end of what it wrote to stderr for error messages. */
export class Process {
  private stderr = "";
  readonly child: ChildProcess;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(command, args, { env, stdio: ["ignore", "ignore", "pipe"] });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr = (this.stderr + chunk).slice(-4000);
    });
    this.child.on("error", (err) => {
      this.stderr += `\n${err.message}`;
    });
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** Why it is not running, for an error message. */
  describeExit(): string {
    const how = this.child.exitCode !== null ? `code ${this.child.exitCode}` : `signal ${this.child.signalCode}`;
    return `${this.name} exited with ${how}${this.stderr ? `:\n${this.stderr.trim()}` : ""}`;
  }

  /** SIGTERM, then SIGKILL if it has not ended in time. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const ended = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), STOP_WITHIN_MS);
    await ended;
    clearTimeout(timer);
  }
}

export function binary(name: string): string {
  const file = path.join(process.env["TASKWIRE_BIN_DIR"] ?? path.join(ROOT, "target", "debug"), name);
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run cargo build --workspace --bins first`);
  return file;
}

function natsServer(): string {
  const candidates = [process.env["TASKWIRE_NATS_SERVER"], path.join(ROOT, ".tools", "venv", "bin", "nats-server")];
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) candidates.push(path.join(dir, "nats-server"));
  const found = candidates.find((file) => file !== undefined && file !== "" && fs.existsSync(file));
  if (found === undefined) throw new Error("nats-server not found: run make tools, or set TASKWIRE_NATS_SERVER");
  return found;
}

/**
 * The JSON file a process writes once it listens, read with `read`; undefined while it is not
 * there (or not whole). `file` may find the path anew each time.
 */
function readPorts<T>(file: () => string | undefined, read: (ports: Record<string, unknown>) => T | undefined): T | undefined {
  const found = file();
  if (found === undefined || !fs.existsSync(found)) return undefined;
  try {
    return read(JSON.parse(fs.readFileSync(found, "utf8")) as Record<string, unknown>);
  } catch {
    return undefined;
  }
}

/** nats-server's ports file in `dir` (`--ports_file_dir`): `<binary>_<pid>.ports`. */
function natsPortsFile(dir: string, pid: number | undefined): string | undefined {
  const name = fs.readdirSync(dir).find((file) => file.endsWith(`_${pid}.ports`));
  return name === undefined ? undefined : path.join(dir, name);
}

/** Polls `ready` until it is true; it may throw, and its last error is in the message of a timeout. */
export async function until(what: string, ready: () => Promise<boolean>, running: Process[] = [], withinMs = READY_WITHIN_MS): Promise<void> {
  const deadline = Date.now() + withinMs;
  let last: unknown;
  while (Date.now() < deadline) {
    const dead = running.find((p) => p.exited);
    if (dead !== undefined) throw new Error(dead.describeExit());
    try {
      if (await ready()) return;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`${what} within ${withinMs / 1000} s${last === undefined ? "" : `; last: ${String(last)}`}`);
}

/** Whether the gateway lists all of `tasks` as registered. */
export async function registered(address: string, options: ClientOptions, tasks: readonly string[] = TASKS): Promise<boolean> {
  const client = new Client(address, options);
  try {
    const { taskTypes } = await client.unary(AdminDefinition, "listTaskTypes", {}, { timeout: 2 });
    const names = new Set(taskTypes.map((t) => t.name));
    return tasks.every((task) => names.has(task));
  } finally {
    client.close();
  }
}

/**
 * Starts nats-server, the gateway and the test worker; resolves once the worker's tasks are
 * registered, as seen by a client with `options.client` (without the test worker, once the
 * gateway listens).
 */
export async function startSystem(options: SystemOptions = {}): Promise<System> {
  const store = fs.mkdtempSync(path.join(os.tmpdir(), "taskwire-ts-"));
  const processes: Process[] = [];
  // Should the tests end without stop() (a crash, a signal), the processes end with them.
  const killAll = () => {
    processes.forEach((p) => p.exited || p.child.kill("SIGKILL"));
    fs.rmSync(store, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    killAll();
    process.kill(process.pid, signal);
  };
  process.on("exit", killAll);
  process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
  const stop = async () => {
    for (const p of [...processes].reverse()) await p.stop();
    process.off("exit", killAll).off("SIGINT", onSignal).off("SIGTERM", onSignal);
    fs.rmSync(store, { recursive: true, force: true });
  };
  try {
    // Every port is the listener's choice, read from the ports file it writes.
    const ports = path.join(store, "ports");
    fs.mkdirSync(ports);
    const nats = new Process("nats-server", natsServer(), ["-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", ports, "-sd", path.join(store, "jetstream")], process.env);
    processes.push(nats);
    let natsUrl: string | undefined;
    await until("nats-server wrote no ports file", async () => {
      natsUrl = readPorts(() => natsPortsFile(ports, nats.child.pid), (p) => (p["nats"] as string[] | undefined)?.[0]);
      return natsUrl !== undefined;
    }, processes);

    const env = { ...process.env, TASKWIRE_NATS_URL: natsUrl, TASKWIRE_LOG: "warn" };
    const gatewayPorts = path.join(ports, "gateway.json");
    processes.push(new Process("the gateway", binary("taskwire-gateway"), [], { ...env, ...options.gatewayEnv, TASKWIRE_GATEWAY_ADDR: "127.0.0.1:0", TASKWIRE_PORTS_FILE: gatewayPorts }));
    if (options.testWorker ?? true) processes.push(new Process("the test worker", binary("taskwire-test-worker"), [], env));
    let address = "";
    await until("the gateway wrote no ports file", async () => {
      address = readPorts(() => gatewayPorts, (p) => p["grpc"] as string | undefined) ?? "";
      return address !== "";
    }, processes);
    if (options.testWorker ?? true) {
      await until(`the worker did not register ${TASKS.join(", ")}`, () => registered(address, options.client ?? {}), processes);
    }
    return { address, natsUrl: natsUrl ?? "", store, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

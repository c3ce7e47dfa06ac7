// Serving tasks: the handlers of a generated service, run by taskwire's worker runtime.
//
//     import { Worker, TaskError } from "@taskwire/client";
//     import { MagicDefinition } from "@taskwire/client/gen/examples/magic/v1/magic";
//
//     const worker = new Worker({ natsUrl: "nats://127.0.0.1:4222" });
//     const magic = worker.service(MagicDefinition);
//     magic.add.handler(async (args, ctx) => ({ sum: args.arg1 + args.arg2 + args.arg3 }));
//     await worker.run();
//
// The handlers are served by an @grpc/grpc-js server on a Unix socket, and run() starts the
// worker runtime (the `taskwire-worker` binary) as its child. The runtime does everything a
// worker does with the broker (pulls, attempts, retries, limits, cancels, heartbeats, metrics,
// drain) and calls a handler once per attempt, with the task's own method path and the
// attempt: the calls go many to a frame on one stream (`taskwire.v1.TaskHandlers/Serve`).

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { BinaryWriter } from "@bufbuild/protobuf/wire";
import * as grpc from "@grpc/grpc-js";

import type { MethodDefinition, ServiceDefinition } from "./client";
import { descriptorSet, type ProtoMetadata } from "./descriptors";
import {
  type HandlerCall,
  type HandlerCalls,
  type HandlerOutcome,
  type HandlerOutcomes,
  ReportProgressRequest,
  SubmitChildRequest,
  WaitForChildrenRequest,
  type WaitForChildrenResponse,
  TaskContextClient,
  TaskHandlersService,
} from "./gen/taskwire/v1/worker";
import { fromRpc } from "./errors";
import type { SubmitResponse, TaskInfo } from "./gen/taskwire/v1/tasks";
import { type Seconds, type SubmitOptions, submitOptions } from "./options";
import type { Schema } from "./schema";
import { describes, generatedSchema } from "./service";

const VERSION = "0.1.0";

/** The metadata of a call from the runtime (docs/protocol.md). */
export const TASK_METADATA = {
  taskId: "taskwire-task-id",
  task: "taskwire-task",
  attempt: "taskwire-attempt",
  maxAttempts: "taskwire-max-attempts",
  context: "taskwire-context",
} as const;

// Larger than any NATS server stores: a result too large is refused by the broker, and the
// task's dead letter says so.
const MAX_MESSAGE = 256 * 1024 * 1024;

// At most this many bytes of results go in one frame of the stream of calls (a larger result
// goes alone).
const FRAME_BYTES = 4 << 20;

/** How long one progress report may take. */
const REPORT_TIMEOUT_MS = 10_000;
/** How long a child's submit may take: its runtime tries a gateway several times. */
const CHILD_TIMEOUT_MS = 60_000;

/** The protoMetadata export of a generated module (ts-proto's outputSchema=true). */
export type ServiceSchema = Schema & ProtoMetadata;

/**
 * A task's own failure. A retryable one (the default) is tried again while attempts are left,
 * after the task's backoff or after `retryAfter` milliseconds; `retryable: false` fails the
 * task at once, with a dead letter.
 */
export class TaskError extends Error {
  override name = "TaskError";
  readonly retryable: boolean;
  /** Milliseconds until the next attempt, instead of the task's backoff. */
  readonly retryAfter: number | undefined;

  constructor(message: string, { retryable = true, retryAfter }: { retryable?: boolean; retryAfter?: number } = {}) {
    super(message);
    if (retryAfter !== undefined && !(Number.isFinite(retryAfter) && retryAfter >= 0)) {
      throw new RangeError(`retryAfter must be a number of milliseconds, 0 or more, not ${retryAfter}`);
    }
    this.retryAfter = retryAfter;
    this.retryable = retryable || retryAfter !== undefined;
  }
}

/**
 * Thrown by `TaskContext.waitForChildren` while some child has not ended: let it end the
 * handler. The task is then parked, holding no worker, and runs again from its start once its
 * children have ended.
 */
export class WaitingForChildren extends Error {
  override name = "WaitingForChildren";

  constructor() {
    super("waiting for its children");
  }
}

/** A message of the task's own that goes with a progress report. */
export interface ProgressDetails {
  /** The message's full type name, e.g. "examples.chaos.v1.StepsDone". */
  type: string;
  /** The message as protobuf bytes, e.g. `StepsDone.encode({ done, left }).finish()`. */
  value: Uint8Array;
}

/** What a running task knows about itself, and how it reports progress. */
export class TaskContext {
  /** The task's id. */
  readonly id: string;
  /** The task's full name, e.g. "examples.magic.v1.Magic/Add". */
  readonly task: string;
  /** This attempt, from 1. */
  readonly attempt: number;
  /** The attempts the task has in all. */
  readonly maxAttempts: number;
  /** When the attempt's time limit ends, if it has one. */
  readonly deadline: Date | undefined;
  /** Aborted once the task is cancelled, runs out of time or its worker stops for good. */
  readonly signal: AbortSignal;
  /** The call's metadata, `traceparent` included. */
  readonly metadata: grpc.Metadata;
  private reports: Promise<void> = Promise.resolve();

  /** @internal */
  constructor(
    metadata: grpc.Metadata,
    deadline: Date | undefined,
    signal: AbortSignal,
    private readonly reporter: Reporter,
  ) {
    this.metadata = metadata;
    this.id = text(metadata, TASK_METADATA.taskId);
    this.task = text(metadata, TASK_METADATA.task);
    this.attempt = whole(text(metadata, TASK_METADATA.attempt), 1);
    this.maxAttempts = whole(text(metadata, TASK_METADATA.maxAttempts), 1);
    this.deadline = deadline;
    this.signal = signal;
  }

  /** True once the task was cancelled, ran out of time or its worker is stopping for good: stop soon. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /**
   * Reports progress (0 to 100) with a message and, optionally, a message of the task's own;
   * watchers see it as a `running` event, before the task's result: the handler's answer waits
   * for its reports. Reports are sent in order; the promise resolves once this one is through
   * (a report that fails is logged, and never rejects).
   */
  progress(percent: number, message = "", details?: ProgressDetails): Promise<void> {
    const request = ReportProgressRequest.fromPartial({
      taskId: this.id,
      attempt: this.attempt,
      progress: {
        percent: Number(percent),
        message,
        details: details === undefined ? undefined : Buffer.from(details.value),
        detailsType: details?.type ?? "",
      },
    });
    const address = text(this.metadata, TASK_METADATA.context);
    this.reports = this.reports.then(() => this.reporter.report(address, request));
    return this.reports;
  }

  /**
   * Submits a child task (`task`, e.g. "examples.chaos.v1.Chaos/Sleep", with its input message
   * type and value) and resolves to its id. The child records this task as its parent, Get
   * lists it among this task's children, and cancelling this task cancels it. Its id comes from
   * this task's id and its place among the children this attempt submitted (or its
   * `idempotencyKey`), so an attempt that runs again after a retry finds the children it
   * submitted before rather than submitting them twice: submit them one after another. Rejects
   * with a GatewayError when the child is refused (FAILED_PRECONDITION once this task was
   * cancelled).
   */
  async submitChild<I>(
    task: string,
    type: { encode(message: I): { finish(): Uint8Array } },
    args: I,
    options: SubmitOptions = {},
  ): Promise<string> {
    const request = SubmitChildRequest.fromPartial({
      taskId: this.id,
      attempt: this.attempt,
      child: { task, argsProto: Buffer.from(type.encode(args).finish()), options: submitOptions(options) },
    });
    const response = await this.reporter.submitChild(text(this.metadata, TASK_METADATA.context), request);
    return response.taskId;
  }

  /**
   * The outcomes of this task's children (each as Get answers it, in the order they were
   * submitted) once they have all ended. While some have not, throws WaitingForChildren: let
   * it end the handler. The task then waits (state WAITING) holding no worker, and runs again
   * from its start once the last child has ended; the children it submits again are found
   * rather than submitted twice, and this then answers their outcomes.
   */
  async waitForChildren(): Promise<TaskInfo[]> {
    const request = WaitForChildrenRequest.fromPartial({ taskId: this.id, attempt: this.attempt });
    const response = await this.reporter.waitForChildren(text(this.metadata, TASK_METADATA.context), request);
    if (!response.ended) throw new WaitingForChildren();
    return response.children;
  }

  /** @internal Waits for the reports made so far. */
  flush(): Promise<void> {
    return this.reports;
  }
}

function text(metadata: grpc.Metadata, key: string): string {
  const value = metadata.get(key)[0];
  return typeof value === "string" ? value : "";
}

function whole(value: string, fallback: number): number {
  const n = Number.parseInt(value, 10);
  return Number.isFinite(n) ? n : fallback;
}

/** Calls to the runtime's taskwire.v1.TaskContext (progress reports, children), one client per address. */
class Reporter {
  private readonly clients = new Map<string, TaskContextClient>();

  private client(address: string): TaskContextClient {
    let client = this.clients.get(address);
    if (client === undefined) {
      const target = address.startsWith("http://") ? address.slice("http://".length) : address;
      client = new TaskContextClient(target, grpc.credentials.createInsecure());
      this.clients.set(address, client);
    }
    return client;
  }

  submitChild(address: string, request: SubmitChildRequest): Promise<SubmitResponse> {
    if (address === "") {
      return Promise.reject(new Error("this call came without a taskwire-context address: it was not made by a worker runtime"));
    }
    const deadline = new Date(Date.now() + CHILD_TIMEOUT_MS);
    return new Promise((resolve, reject) => {
      this.client(address).submitChild(request, new grpc.Metadata(), { deadline }, (err, response) => {
        if (err) reject(fromRpc(err));
        else resolve(response);
      });
    });
  }

  waitForChildren(address: string, request: WaitForChildrenRequest): Promise<WaitForChildrenResponse> {
    if (address === "") {
      return Promise.reject(new Error("this call came without a taskwire-context address: it was not made by a worker runtime"));
    }
    const deadline = new Date(Date.now() + CHILD_TIMEOUT_MS);
    return new Promise((resolve, reject) => {
      this.client(address).waitForChildren(request, new grpc.Metadata(), { deadline }, (err, response) => {
        if (err) reject(fromRpc(err));
        else resolve(response);
      });
    });
  }

  report(address: string, request: ReportProgressRequest): Promise<void> {
    if (address === "") return Promise.resolve();
    const client = this.client(address);
    const deadline = new Date(Date.now() + REPORT_TIMEOUT_MS);
    return new Promise((resolve) => {
      client.reportProgress(request, new grpc.Metadata(), { deadline }, (err) => {
        if (err) console.warn(`taskwire: progress of task ${request.taskId} not reported: ${err.message}`);
        resolve();
      });
    });
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

type InputOf<M> = M extends { requestType: { decode(input: Uint8Array): infer I } } ? I : never;
type OutputOf<M> = M extends { responseType: { fromPartial(object: infer P): unknown } } ? P : never;

/** A task's handler: its input message and context in, its output message (fields left out are zero) out. */
export type Handler<I, O> = (args: I, ctx: TaskContext) => O | Promise<O>;

/** One task of a service, to attach its handler to. */
export interface TaskHandlers<I, O> {
  /** The full task name, e.g. "examples.magic.v1.Magic/Add". */
  readonly task: string;
  /** Serves the task with `handler`; returns it. */
  handler<H extends Handler<I, O>>(handler: H): H;
}

type UnaryKeys<S extends ServiceDefinition> = {
  [K in keyof S["methods"] & string]: S["methods"][K] extends { requestStream: false; responseStream: false } ? K : never;
}[keyof S["methods"] & string];

/** The tasks of a service, by their generated (camelCase) rpc names: `magic.add.handler(...)`. */
export type ServiceHandlers<S extends ServiceDefinition> = {
  readonly [K in UnaryKeys<S>]: TaskHandlers<InputOf<S["methods"][K]>, OutputOf<S["methods"][K]>>;
};

/** Handlers of some of a service's tasks, by their generated (camelCase) rpc names. */
export type ServiceImplementation<S extends ServiceDefinition> = {
  readonly [K in UnaryKeys<S>]?: Handler<InputOf<S["methods"][K]>, OutputOf<S["methods"][K]>>;
};

interface Message {
  decode(input: Uint8Array): unknown;
  encode(message: never): { finish(): Uint8Array };
  fromPartial(object: never): unknown;
}

/** One task a worker can serve. */
interface Task {
  readonly name: string;
  readonly service: string;
  readonly method: string;
  readonly input: Message;
  readonly output: Message;
  handler: Handler<unknown, unknown> | undefined;
}

export interface WorkerOptions {
  /** NATS server URL(s), comma separated (TASKWIRE_NATS_URL). */
  natsUrl?: string;
  /** Tasks of one type that run at once (TASKWIRE_CONCURRENCY). */
  concurrency?: number;
  /** Seconds the broker waits for an ack before it delivers a task again (TASKWIRE_ACK_WAIT). */
  ackWait?: Seconds;
  /** Seconds running tasks may take to finish once the worker is told to stop (TASKWIRE_GRACE). */
  grace?: Seconds;
  /** host:port of /metrics and /healthz, e.g. "0.0.0.0:9464", or "off" (TASKWIRE_METRICS_ADDR). */
  metricsAddr?: string;
  /** More environment for the runtime, e.g. `{ TASKWIRE_LOG: "debug" }`. */
  env?: Readonly<Record<string, string>>;
}

export interface RunOptions {
  /** Whether SIGTERM and SIGINT stop the worker (true by default). */
  signals?: boolean;
}

/** The runtime stopped by itself with an error; what it printed says why. */
export class WorkerExited extends Error {
  override name = "WorkerExited";

  constructor(
    readonly binary: string,
    readonly exitCode: number | null,
    readonly signal: NodeJS.Signals | null,
  ) {
    super(`the worker runtime (${binary}) stopped with ${exitCode !== null ? `exit code ${exitCode}` : `signal ${signal}`}`);
  }
}

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The worker runtime's binary: TASKWIRE_WORKER_BIN, else `taskwire-worker` on PATH. */
export function runtimeBinary(): string {
  const given = process.env["TASKWIRE_WORKER_BIN"]?.trim();
  if (given) {
    if (!executable(given)) throw new Error(`TASKWIRE_WORKER_BIN=${given}: no such executable file`);
    return given;
  }
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    if (dir === "") continue;
    const file = path.join(dir, "taskwire-worker");
    if (executable(file)) return file;
  }
  throw new Error(
    "the taskwire worker runtime is missing: put taskwire-worker on PATH, or set TASKWIRE_WORKER_BIN to its path",
  );
}

// The `grpc-status-details-bin` of a retryable failure: a google.rpc.Status { code = 1;
// message = 2; details = 3 } whose detail is an Any { type_url = 1; value = 2 } of a
// google.rpc.RetryInfo { retry_delay = 1 }, a google.protobuf.Duration { seconds = 1; nanos = 2 }.
function retryInfo(code: grpc.status, message: string, millis: number): Buffer {
  const seconds = Math.floor(millis / 1000);
  const nanos = Math.round((millis - seconds * 1000) * 1e6);
  const delay = new BinaryWriter().uint32(8).int64(seconds).uint32(16).int32(nanos).finish();
  const info = new BinaryWriter().uint32(10).bytes(delay).finish();
  const any = new BinaryWriter().uint32(10).string("type.googleapis.com/google.rpc.RetryInfo").uint32(18).bytes(info).finish();
  const status = new BinaryWriter().uint32(8).int32(code).uint32(18).string(message).uint32(26).bytes(any).finish();
  return Buffer.from(status);
}

function failure(code: grpc.status, details: string, metadata?: grpc.Metadata): Partial<grpc.StatusObject> {
  return { code, details, metadata: metadata ?? new grpc.Metadata() };
}

/**
 * Serves tasks: their handlers, and the worker runtime that calls them. Settings left out come
 * from the environment (TASKWIRE_NATS_URL, TASKWIRE_CONCURRENCY, ...), which the runtime reads.
 */
export class Worker {
  /** The TASKWIRE_* settings given to the constructor, as the runtime reads them. */
  readonly settings: Readonly<Record<string, string>>;
  private readonly tasks = new Map<string, Task>();
  private readonly schemas = new Map<string, ServiceSchema>();
  private readonly reporter = new Reporter();
  private child: ChildProcess | undefined;
  private running = false;
  private stopping = false;

  constructor(options: WorkerOptions = {}) {
    const settings: Record<string, string> = {};
    if (options.natsUrl !== undefined) {
      if (options.natsUrl.trim() === "") throw new TypeError('natsUrl must be a URL, e.g. "nats://127.0.0.1:4222"');
      settings["TASKWIRE_NATS_URL"] = options.natsUrl;
    }
    if (options.concurrency !== undefined) {
      if (!Number.isInteger(options.concurrency) || options.concurrency < 1) {
        throw new RangeError(`concurrency must be a whole number, 1 or more, not ${options.concurrency}`);
      }
      settings["TASKWIRE_CONCURRENCY"] = String(options.concurrency);
    }
    for (const [name, seconds, env] of [
      ["ackWait", options.ackWait, "TASKWIRE_ACK_WAIT"],
      ["grace", options.grace, "TASKWIRE_GRACE"],
    ] as const) {
      if (seconds === undefined) continue;
      if (!Number.isFinite(seconds) || seconds < 0) throw new RangeError(`${name} must be seconds, 0 or more, not ${seconds}`);
      settings[env] = `${Math.round(seconds * 1000)}ms`;
    }
    if (options.metricsAddr !== undefined) {
      const address = options.metricsAddr;
      const colon = address.lastIndexOf(":");
      if (address !== "off" && (colon <= 0 || !/^\d+$/.test(address.slice(colon + 1)))) {
        throw new TypeError(`metricsAddr must be host:port (e.g. "0.0.0.0:9464") or "off", not ${JSON.stringify(address)}`);
      }
      settings["TASKWIRE_METRICS_ADDR"] = address;
    }
    this.settings = { ...options.env, ...settings };
  }

  /**
   * The tasks of a generated service definition (`MagicDefinition`), to attach handlers to:
   * `worker.service(MagicDefinition).add.handler(async (args, ctx) => ({ sum: ... }))`.
   * `schema` is the generated module's `protoMetadata`; it may be left out for the services
   * generated into this package.
   */
  service<S extends ServiceDefinition>(definition: S, schema?: ServiceSchema): ServiceHandlers<S> {
    this.declareService(definition, schema);
    const handles: Record<string, TaskHandlers<unknown, unknown>> = {};
    for (const [key, method] of Object.entries(definition.methods)) {
      if (method.requestStream || method.responseStream) continue;
      const task = this.declare(definition, method);
      handles[key] = {
        task: task.name,
        handler: (handler) => {
          if (typeof handler !== "function") throw new TypeError(`the handler of ${task.name} must be a function`);
          task.handler = handler as Handler<unknown, unknown>;
          return handler;
        },
      };
    }
    const known = Object.keys(handles).sort().join(", ");
    return new Proxy(handles, {
      get(target, name, receiver) {
        if (typeof name === "string" && !(name in target) && name !== "then" && name !== "toJSON") {
          throw new TypeError(`${definition.fullName} has no task ${name}; it has ${known}`);
        }
        return Reflect.get(target, name, receiver);
      },
    }) as unknown as ServiceHandlers<S>;
  }

  /**
   * Serves the tasks of a service that `implementation` has a handler for, by their generated
   * (camelCase) rpc names: `worker.addService(MagicDefinition, { add: async (args, ctx) => ... })`.
   */
  addService<S extends ServiceDefinition>(definition: S, implementation: ServiceImplementation<S>, schema?: ServiceSchema): void {
    const handlers = implementation as Record<string, unknown>;
    const tasks = this.service(definition, schema) as Record<string, TaskHandlers<unknown, unknown>>;
    let served = 0;
    // The methods of a class instance are on its prototype.
    for (const key of Object.keys(definition.methods)) {
      const handler = handlers[key];
      if (handler === undefined) continue;
      if (typeof handler !== "function") throw new TypeError(`${key} of the implementation of ${definition.fullName} is not a function`);
      // A method keeps its `this`.
      tasks[key]?.handler((args: unknown, ctx: TaskContext) => (handler as Handler<unknown, unknown>).call(implementation, args, ctx));
      served += 1;
    }
    if (served === 0) throw new TypeError(`the implementation of ${definition.fullName} has no handler of its tasks`);
  }

  private declareService(definition: ServiceDefinition, schema: ServiceSchema | undefined): void {
    const found = schema ?? this.schemas.get(definition.fullName) ?? generatedSchema(definition);
    if (found === undefined) {
      throw new TypeError(
        `no descriptors of ${definition.fullName}: pass its generated module's protoMetadata (ts-proto with outputSchema=true) as worker.service(definition, protoMetadata)`,
      );
    }
    if (!describes(found, definition)) {
      throw new TypeError(`the protoMetadata of ${found.fileDescriptor.name} does not describe ${definition.fullName} as its definition has it`);
    }
    this.schemas.set(definition.fullName, found);
  }

  private declare(definition: ServiceDefinition, method: MethodDefinition): Task {
    const name = `${definition.fullName}/${method.name}`;
    let task = this.tasks.get(name);
    if (task === undefined) {
      task = {
        name,
        service: definition.fullName,
        method: method.name,
        input: method.requestType as unknown as Message,
        output: method.responseType as unknown as Message,
        handler: undefined,
      };
      this.tasks.set(name, task);
    }
    return task;
  }

  /**
   * Serves the handlers and runs the worker runtime beside them until `stop()` or SIGTERM or
   * SIGINT; then drains: the runtime stops pulling, lets running tasks finish for up to its
   * grace period and releases the rest to other workers. A second signal ends the grace at
   * once. Rejects (WorkerExited) when the runtime stops by itself with an error, say when NATS
   * cannot be reached; what it printed says why.
   */
  async run({ signals = true }: RunOptions = {}): Promise<void> {
    if (this.running) throw new Error("the worker is running already");
    const served = [...this.tasks.values()].filter((task) => task.handler !== undefined);
    if (served.length === 0) throw new Error("the worker serves no task: attach a handler with worker.service(...).<task>.handler(...)");
    const binary = runtimeBinary();
    this.running = true;
    this.stopping = false;
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), "taskwire-worker-"));
    const server = new grpc.Server({
      "grpc.max_receive_message_length": MAX_MESSAGE,
      "grpc.max_send_message_length": MAX_MESSAGE,
    });
    const onSignal = (signal: NodeJS.Signals) => this.signal(signal);
    try {
      const socket = path.join(folder, "handlers.sock");
      this.addHandlers(server, served);
      await new Promise<void>((resolve, reject) =>
        server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
      );
      const descriptors = path.join(folder, "services.binpb");
      fs.writeFileSync(descriptors, this.descriptorSet(served));
      const args = ["--upstream", `unix://${socket}`, "--descriptors", descriptors, "--exit-with-stdin"];
      for (const task of served.map((t) => t.name).sort()) args.push("--task", task);
      const env = { TASKWIRE_UPSTREAM_NAME: `node taskwire/${VERSION}`, ...process.env, ...this.settings };
      if (signals) process.on("SIGTERM", onSignal).on("SIGINT", onSignal);
      if (this.stopping) return;
      const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
        // Its standard input is a pipe of ours: when this process ends, however it ends, the
        // runtime sees it close and stops too. In a process group of its own, it gets the
        // signals of a terminal (Ctrl-C) once, from here.
        const child = spawn(binary, args, { env, stdio: ["pipe", "inherit", "inherit"], detached: true });
        this.child = child;
        child.once("error", reject);
        child.once("exit", (code, signal) => resolve({ code, signal }));
      });
      if (exit.code !== 0 && !(this.stopping && exit.code === null)) {
        throw new WorkerExited(binary, exit.code, exit.signal);
      }
    } finally {
      process.off("SIGTERM", onSignal).off("SIGINT", onSignal);
      this.child?.stdin?.destroy();
      this.child = undefined;
      await shutdown(server);
      this.reporter.close();
      fs.rmSync(folder, { recursive: true, force: true });
      this.running = false;
    }
  }

  /** Begins the drain, as SIGTERM does; a second call ends it. */
  stop(): void {
    this.signal("SIGTERM");
  }

  private signal(signal: NodeJS.Signals): void {
    this.stopping = true;
    const child = this.child;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill(signal);
  }

  /** The descriptors of the served services, with only the methods that have handlers. */
  private descriptorSet(served: readonly Task[]): Uint8Array {
    const methods = new Map<string, Set<string>>();
    for (const task of served) {
      const kept = methods.get(task.service) ?? new Set<string>();
      kept.add(task.method);
      methods.set(task.service, kept);
    }
    const schemas = [...methods.keys()].sort().map((service) => this.schemas.get(service) as ServiceSchema);
    return descriptorSet(schemas, methods);
  }

  private addHandlers(server: grpc.Server, served: readonly Task[]): void {
    const byService = new Map<string, Task[]>();
    for (const task of served) byService.set(task.service, [...(byService.get(task.service) ?? []), task]);
    for (const [service, tasks] of byService) {
      const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
      const implementation: grpc.UntypedServiceImplementation = {};
      for (const task of tasks) {
        definition[task.method] = {
          path: `/${service}/${task.method}`,
          requestStream: false,
          responseStream: false,
          requestSerialize: (message: unknown) => Buffer.from(task.input.encode(message as never).finish()),
          requestDeserialize: (bytes: Buffer) => task.input.decode(bytes),
          responseSerialize: (message: unknown) => Buffer.from(task.output.encode(message as never).finish()),
          responseDeserialize: (bytes: Buffer) => task.output.decode(bytes),
          originalName: task.method,
        };
        implementation[task.method] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          this.call(task, call).then(
            (result) => callback(null, result),
            (status: Partial<grpc.StatusObject>) => callback(status),
          );
        };
      }
      server.addService(definition, implementation);
    }
    server.addService(TaskHandlersService, { serve: this.serveStream(served) });
  }

  /** One attempt as a gRPC call of the task's method. */
  private async call(task: Task, call: grpc.ServerUnaryCall<unknown, unknown>): Promise<unknown> {
    const controller = new AbortController();
    const cancel = () => controller.abort(new Error("the attempt was stopped"));
    call.once("cancelled", cancel);
    if (call.cancelled) cancel();
    const ctx = new TaskContext(call.metadata, deadlineOf(call.getDeadline()), controller.signal, this.reporter);
    try {
      return await this.attempt(task, call.request, ctx);
    } finally {
      call.off("cancelled", cancel);
    }
  }

  /** Runs the handler: its answer, or (rejected) the status that says what its failure means. */
  private async attempt(task: Task, request: unknown, ctx: TaskContext): Promise<unknown> {
    const handler = task.handler as Handler<unknown, unknown>;
    let result: unknown;
    try {
      result = await handler(request, ctx);
    } catch (err) {
      await ctx.flush();
      throw this.failure(task, ctx, err);
    }
    await ctx.flush();
    if (typeof result !== "object" || result === null) {
      const got = result === null ? "null" : typeof result;
      throw failure(grpc.status.INTERNAL, `the handler of ${task.name} returned ${got}, not its output message`);
    }
    try {
      return task.output.fromPartial(result as never);
    } catch (err) {
      throw failure(grpc.status.INTERNAL, `the handler of ${task.name} returned what is not its output message: ${describe(err)}`);
    }
  }

  /**
   * `taskwire.v1.TaskHandlers/Serve`: the runtime's calls, many on one stream, each run at once;
   * the outcomes that are ready by the next turn of the event loop go back together.
   */
  private serveStream(served: readonly Task[]): grpc.handleBidiStreamingCall<HandlerCalls, HandlerOutcomes> {
    const byPath = new Map(served.map((task) => [`/${task.name}`, task]));
    return (stream) => {
      // The calls running, by id: how to stop each.
      const running = new Map<bigint, AbortController>();
      let ready: HandlerOutcome[] = [];
      let flushing = false;
      const flush = () => {
        flushing = false;
        while (ready.length > 0) {
          let taken = 0;
          let size = 0;
          while (taken < ready.length && (taken === 0 || size + ready[taken].result.length <= FRAME_BYTES)) {
            size += ready[taken].result.length;
            taken++;
          }
          stream.write({ outcomes: ready.slice(0, taken) });
          ready = ready.slice(taken);
        }
      };
      const answer = (outcome: HandlerOutcome) => {
        ready.push(outcome);
        if (!flushing) {
          flushing = true;
          setImmediate(flush);
        }
      };
      const stopAll = () => {
        for (const controller of running.values()) controller.abort(new Error("the attempt was stopped"));
        running.clear();
      };
      stream.on("data", (frame: HandlerCalls) => {
        for (const id of frame.cancels) {
          const controller = running.get(id);
          if (controller !== undefined) {
            running.delete(id);
            controller.abort(new Error("the attempt was stopped"));
          }
        }
        for (const call of frame.calls) this.streamed(call, byPath.get(call.method), running, answer);
      });
      stream.on("end", () => {
        stopAll();
        stream.end();
      });
      stream.on("error", stopAll);
      stream.on("cancelled", stopAll);
    };
  }

  /** One call of the stream, answered through `answer` unless it is cancelled first. */
  private streamed(
    call: HandlerCall,
    task: Task | undefined,
    running: Map<bigint, AbortController>,
    answer: (outcome: HandlerOutcome) => void,
  ): void {
    const outcome = (fields: Partial<HandlerOutcome>): HandlerOutcome => ({
      id: call.id,
      code: 0,
      result: Buffer.alloc(0),
      message: "",
      details: Buffer.alloc(0),
      ...fields,
    });
    if (task === undefined) {
      answer(outcome({ code: grpc.status.UNIMPLEMENTED, message: `this worker does not serve ${call.method}` }));
      return;
    }
    let request: unknown;
    try {
      request = task.input.decode(call.argument);
    } catch (err) {
      answer(outcome({ code: grpc.status.INVALID_ARGUMENT, message: `the arguments of ${task.name} do not decode: ${describe(err)}` }));
      return;
    }
    const metadata = new grpc.Metadata();
    metadata.set(TASK_METADATA.taskId, call.taskId);
    metadata.set(TASK_METADATA.task, call.task);
    metadata.set(TASK_METADATA.attempt, String(call.attempt));
    metadata.set(TASK_METADATA.maxAttempts, String(call.maxAttempts));
    metadata.set(TASK_METADATA.context, call.context);
    if (call.traceparent !== "") metadata.set("traceparent", call.traceparent);
    if (call.tracestate !== "") metadata.set("tracestate", call.tracestate);
    const deadline = call.timeoutMs > 0n ? new Date(Date.now() + Number(call.timeoutMs)) : undefined;
    const controller = new AbortController();
    running.set(call.id, controller);
    const ctx = new TaskContext(metadata, deadline, controller.signal, this.reporter);
    // A call cancelled meanwhile is no longer read.
    const finished = (fields: Partial<HandlerOutcome>) => {
      if (running.delete(call.id)) answer(outcome(fields));
    };
    this.attempt(task, request, ctx).then(
      (result) => finished({ result: Buffer.from(task.output.encode(result as never).finish()) }),
      (status: Partial<grpc.StatusObject>) => {
        const details = status.metadata?.get("grpc-status-details-bin")[0];
        finished({
          code: status.code ?? grpc.status.UNKNOWN,
          message: status.details ?? "",
          details: Buffer.isBuffer(details) ? details : Buffer.alloc(0),
        });
      },
    );
  }

  private failure(task: Task, ctx: TaskContext, err: unknown): Partial<grpc.StatusObject> {
    // The runtime parks the task: what the attempt answers is not stored.
    if (err instanceof WaitingForChildren) return failure(grpc.status.ABORTED, err.message);
    if (err instanceof TaskError) {
      if (!err.retryable) return failure(grpc.status.FAILED_PRECONDITION, err.message);
      if (err.retryAfter === undefined) return failure(grpc.status.UNAVAILABLE, err.message);
      const trailers = new grpc.Metadata();
      trailers.set("grpc-status-details-bin", retryInfo(grpc.status.UNAVAILABLE, err.message, err.retryAfter));
      return failure(grpc.status.UNAVAILABLE, err.message, trailers);
    }
    if (ctx.cancelled) {
      // Stopped by its cancel (an abort of ctx.signal, most likely): nobody waits for the answer.
      return failure(grpc.status.CANCELLED, describe(err));
    }
    // A bug in the task: it fails at once, as a panic does.
    console.error(`taskwire: task ${task.name} ${ctx.id} threw:`, err);
    return failure(grpc.status.INTERNAL, describe(err));
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

function deadlineOf(deadline: grpc.Deadline): Date | undefined {
  if (deadline instanceof Date) return deadline;
  return Number.isFinite(deadline) ? new Date(deadline) : undefined;
}

/** Closes the server: at once when no call is open, else when they end, at most a second later. */
function shutdown(server: grpc.Server): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 1000);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// The client, task handles, and the outcome of a finished task.

import * as grpc from "@grpc/grpc-js";

import { fromRpc, TaskCancelled, TaskExpired, TaskFailed, TimeoutError } from "./errors";
import {
  CancelManyRequest,
  CancelRequest,
  GetRequest,
  ListTasksRequest,
  type TaskFilter,
  SubmitRequest,
  type SubmitResponse,
  type TaskInfo,
  TasksDefinition,
  TaskState,
  WaitRequest,
  WatchRequest,
} from "./gen/taskwire/v1/tasks";
import { descriptorHashOption, duration, type Seconds, type SubmitOptions, submitOptions } from "./options";

/** Turns a message into protobuf bytes and back: every generated message (AddArgs, ...) is one. */
export interface Codec<T> extends Encoder<T>, Decoder<T> {}

/** Writes a message as protobuf bytes. */
export interface Encoder<T> {
  encode(message: T): { finish(): Uint8Array };
}

/** Reads a task's output from its protobuf bytes. */
export interface Decoder<T> {
  decode(input: Uint8Array): T;
}

/** One rpc of a generated service definition (e.g. `MagicDefinition.methods.add`). */
export interface MethodDefinition {
  readonly name: string;
  readonly requestType: Encoder<never>;
  readonly responseType: Decoder<unknown>;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
}

/** A generated service definition: `MagicDefinition`, `TasksDefinition`, `AdminDefinition`, ... */
export interface ServiceDefinition {
  readonly name: string;
  readonly fullName: string;
  readonly methods: { readonly [key: string]: MethodDefinition };
}

export type RequestOf<M> = M extends { requestType: Encoder<infer I> } ? I : never;
export type ResponseOf<M> = M extends { responseType: Decoder<infer O> } ? O : never;

/** Unary rpcs of a service, by their generated (camelCase) names. */
export type UnaryMethodsOf<S extends ServiceDefinition> = {
  [K in keyof S["methods"] & string]: S["methods"][K] extends { requestStream: false; responseStream: false } ? K : never;
}[keyof S["methods"] & string];

export type StateName =
  | "unspecified"
  | "queued"
  | "scheduled"
  | "running"
  | "retrying"
  | "succeeded"
  | "failed"
  | "cancelled"
  | "expired"
  | "waiting"
  | "unrecognized";

const STATE_NAMES: Record<TaskState, StateName> = {
  [TaskState.TASK_STATE_UNSPECIFIED]: "unspecified",
  [TaskState.TASK_STATE_QUEUED]: "queued",
  [TaskState.TASK_STATE_SCHEDULED]: "scheduled",
  [TaskState.TASK_STATE_RUNNING]: "running",
  [TaskState.TASK_STATE_RETRYING]: "retrying",
  [TaskState.TASK_STATE_SUCCEEDED]: "succeeded",
  [TaskState.TASK_STATE_FAILED]: "failed",
  [TaskState.TASK_STATE_CANCELLED]: "cancelled",
  [TaskState.TASK_STATE_EXPIRED]: "expired",
  [TaskState.TASK_STATE_WAITING]: "waiting",
  [TaskState.UNRECOGNIZED]: "unrecognized",
};

const FINAL = new Set([
  TaskState.TASK_STATE_SUCCEEDED,
  TaskState.TASK_STATE_FAILED,
  TaskState.TASK_STATE_CANCELLED,
  TaskState.TASK_STATE_EXPIRED,
]);

/** `succeeded`, `running`, ... for a TaskState. */
export function stateName(state: TaskState): StateName {
  return STATE_NAMES[state] ?? "unrecognized";
}

/** Whether a task in this state is done for good. */
export function isFinal(state: TaskState): boolean {
  return FINAL.has(state);
}

/** Which tasks a list or a bulk cancel takes; every field given must hold. */
export interface TaskQuery {
  /** A task type, or a pattern where `*` stands for any run of characters. */
  task?: string;
  states?: StateName[];
  /** Changed within this many seconds: finished, for finished states only; else submitted. */
  since?: Seconds;
  /** Text the error holds (letter case aside). */
  error?: string;
  /** An idempotency key (with `task` naming its type). */
  key?: string;
  workflow?: string;
  parent?: string;
}

const STATE_OF = new Map<string, TaskState>(
  Object.entries(STATE_NAMES).map(([state, name]) => [name, Number(state) as TaskState]),
);

/** A `taskwire.v1.TaskFilter` from a query; a state that is none says which are. */
export function taskFilter(query: TaskQuery): TaskFilter {
  const states = (query.states ?? []).map((name) => {
    const state = STATE_OF.get(name);
    if (state === undefined || name === "unspecified" || name === "unrecognized") {
      throw new RangeError(
        `state ${JSON.stringify(name)} is none of queued, scheduled, running, retrying, waiting, succeeded, failed, cancelled, expired`,
      );
    }
    return state;
  });
  const filter: Partial<TaskFilter> = {
    task: query.task ?? "",
    states,
    errorContains: query.error ?? "",
    idempotencyKey: query.key ?? "",
    workflowId: query.workflow ?? "",
    parentId: query.parent ?? "",
  };
  // The gateway counts it back from its own clock.
  if (query.since !== undefined) filter.within = duration(query.since, "since");
  return filter as TaskFilter;
}

/** The output bytes as they are. */
export const RAW: Decoder<Uint8Array> = { decode: (input) => input };

/**
 * The result of a finished task, decoded by `output`; throws TaskFailed (or TaskCancelled,
 * TaskExpired) when it did not succeed, TimeoutError when it is not finished.
 */
export function outcome<O>(info: TaskInfo, output: Decoder<O>): O {
  if (info.state === TaskState.TASK_STATE_SUCCEEDED) return output.decode(info.result);
  if (!isFinal(info.state)) {
    throw new TimeoutError(grpc.status.DEADLINE_EXCEEDED, `task ${info.taskId} is still ${stateName(info.state)}`);
  }
  const kind =
    info.state === TaskState.TASK_STATE_CANCELLED
      ? TaskCancelled
      : info.state === TaskState.TASK_STATE_EXPIRED
        ? TaskExpired
        : TaskFailed;
  const message = info.error?.message || stateName(info.state);
  throw new kind(info.taskId, message, info.error?.retryable ?? false, info.attempt);
}

/** PEM-encoded certificates for a TLS channel; `{}` trusts the system's roots. */
export interface TlsOptions {
  /** Root certificates that the gateway's certificate must chain to. */
  ca?: Buffer;
  /** Client certificate and its private key, for gateways that require client authentication. */
  cert?: Buffer;
  key?: Buffer;
  /** The name to check the gateway's certificate against, when it differs from the address. */
  serverName?: string;
}

export interface ClientOptions {
  /** Connect with TLS; without it the channel is plaintext. */
  tls?: TlsOptions;
  /** Sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** Further @grpc/grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** Seconds until the call gives up with DEADLINE_EXCEEDED. */
  timeout?: Seconds;
}

function channelCredentials(tls: TlsOptions | undefined): grpc.ChannelCredentials {
  if (tls === undefined) return grpc.credentials.createInsecure();
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls.cert and tls.key go together: give both for client authentication, or neither");
  }
  return grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

function channelOptions(options: ClientOptions): grpc.ChannelOptions {
  const serverName = options.tls?.serverName;
  if (serverName === undefined) return { ...options.channelOptions };
  return { ...options.channelOptions, "grpc.ssl_target_name_override": serverName, "grpc.default_authority": serverName };
}

function bearer(token: string): grpc.Interceptor {
  if (token === "" || /[\r\n]/.test(token)) {
    throw new TypeError("token must be a non-empty string on one line");
  }
  const value = `Bearer ${token}`;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", value);
        next(metadata, listener);
      },
    });
}

function deadline(timeout: Seconds | undefined): Partial<grpc.CallOptions> {
  if (timeout === undefined) return {};
  return { deadline: new Date(Date.now() + timeout * 1000) };
}

function serializer<T>(codec: Encoder<T>): (message: T) => Buffer {
  return (message) => Buffer.from(codec.encode(message).finish());
}

/** One channel to a gateway; cheap to share. */
export class Client {
  readonly address: string;
  readonly credentials: grpc.ChannelCredentials;
  /**
   * Options for a generated @grpc/grpc-js client that shares this client's channel and token:
   * `new MagicClient(client.address, client.credentials, client.grpcOptions)`.
   */
  readonly grpcOptions: Partial<grpc.ClientOptions>;
  private readonly rpc: grpc.Client;

  constructor(address = "127.0.0.1:50051", options: ClientOptions = {}) {
    if (address === "") throw new TypeError('address must be host:port, e.g. "127.0.0.1:50051"');
    this.address = address;
    this.credentials = channelCredentials(options.tls);
    const channel = new grpc.Channel(address, this.credentials, channelOptions(options));
    const interceptors = options.token === undefined ? [] : [bearer(options.token)];
    this.grpcOptions = { channelOverride: channel, interceptors };
    this.rpc = new grpc.Client(address, this.credentials, this.grpcOptions);
  }

  /** Closes the channel, for this client and every generated client built on `grpcOptions`. */
  close(): void {
    this.rpc.close();
  }

  /** Calls a unary rpc of a generated service definition: `client.unary(AdminDefinition, "listTaskTypes", {})`. */
  unary<S extends ServiceDefinition, K extends UnaryMethodsOf<S>>(
    service: S,
    method: K,
    request: RequestOf<S["methods"][K]>,
    options: CallOptions = {},
  ): Promise<ResponseOf<S["methods"][K]>> {
    const definition = service.methods[method];
    if (definition === undefined) {
      throw new TypeError(`${service.fullName} has no rpc ${method}; it has ${Object.keys(service.methods).join(", ")}`);
    }
    const codec = definition.requestType as Encoder<RequestOf<S["methods"][K]>>;
    const output = definition.responseType as Decoder<ResponseOf<S["methods"][K]>>;
    const path = `/${service.fullName}/${definition.name}`;
    return new Promise((resolve, reject) => {
      this.rpc.makeUnaryRequest(
        path,
        serializer(codec),
        (bytes: Buffer) => output.decode(bytes),
        request,
        new grpc.Metadata(),
        deadline(options.timeout),
        (err, response) => (err ? reject(fromRpc(err)) : resolve(response as ResponseOf<S["methods"][K]>)),
      );
    });
  }

  /**
   * Stores `task` (its full name, e.g. "examples.magic.v1.Magic/Add") with `args`, its input
   * message as protobuf bytes, and returns a handle; `output` decodes the result (raw bytes
   * without it). A typed stub (`service(MagicDefinition, client)`) does all this for you, and
   * sends the task's schema fingerprint (the `descriptorHash` option) too.
   */
  submit(task: string, args: Uint8Array, options?: SubmitOptions): Promise<TaskHandle<Uint8Array>>;
  submit<O>(task: string, args: Uint8Array, options: SubmitOptions | undefined, output: Decoder<O>): Promise<TaskHandle<O>>;
  async submit<O>(
    task: string,
    args: Uint8Array,
    options: SubmitOptions = {},
    output?: Decoder<O>,
  ): Promise<TaskHandle<O | Uint8Array>> {
    const request = SubmitRequest.fromPartial({
      task,
      argsProto: Buffer.from(args),
      options: submitOptions(options),
      descriptorHash: descriptorHashOption(options),
    });
    const response = await this.store(request);
    return new TaskHandle<O | Uint8Array>(this, response.taskId, output ?? RAW);
  }

  /** Stores `task` with its arguments as proto3 JSON; returns the task id. */
  async submitJson(task: string, argsJson: string, options: SubmitOptions = {}): Promise<string> {
    const request = SubmitRequest.fromPartial({
      task,
      argsJson,
      options: submitOptions(options),
      descriptorHash: descriptorHashOption(options),
    });
    const response = await this.store(request);
    return response.taskId;
  }

  private store(request: SubmitRequest): Promise<SubmitResponse> {
    return this.unary(TasksDefinition, "submit", request);
  }

  /** A handle on a task submitted before, by its id. */
  handle(taskId: string): TaskHandle<Uint8Array>;
  handle<O>(taskId: string, output: Decoder<O>): TaskHandle<O>;
  handle<O>(taskId: string, output?: Decoder<O>): TaskHandle<O | Uint8Array> {
    return new TaskHandle<O | Uint8Array>(this, taskId, output ?? RAW);
  }

  /** The current state of a task, with its result once it has one. */
  get(taskId: string): Promise<TaskInfo> {
    return this.unary(TasksDefinition, "get", GetRequest.fromPartial({ taskId }));
  }

  /** Waits up to `timeout` seconds (at most 300) for the task's result; TimeoutError after. */
  wait(taskId: string, timeout: Seconds = 30): Promise<TaskInfo> {
    const request = WaitRequest.fromPartial({ taskId, timeout: duration(timeout, "timeout") });
    return this.unary(TasksDefinition, "wait", request, { timeout: timeout + 5 });
  }

  /** Cancels a task that has not finished; FAILED_PRECONDITION for one that has. */
  cancel(taskId: string): Promise<TaskInfo> {
    return this.unary(TasksDefinition, "cancel", CancelRequest.fromPartial({ taskId }));
  }

  /**
   * The tasks the broker keeps that match, page after page (`Tasks.List`): those not finished
   * first, then the finished ones in the order they finished.
   */
  async *listTasks(filter: TaskQuery = {}, limit = Infinity): AsyncGenerator<TaskInfo, void, undefined> {
    let pageToken = "";
    let found = 0;
    for (;;) {
      const page = await this.unary(
        TasksDefinition,
        "list",
        ListTasksRequest.fromPartial({ filter: taskFilter(filter), pageToken }),
      );
      for (const info of page.tasks) {
        if (found >= limit) return;
        found += 1;
        yield info;
      }
      if (!page.nextPageToken) return;
      pageToken = page.nextPageToken;
    }
  }

  /** Cancels every task that matches and has not finished; how many it cancelled. */
  async cancelMany(filter: TaskQuery): Promise<number> {
    const answer = await this.unary(
      TasksDefinition,
      "cancelMany",
      CancelManyRequest.fromPartial({ filter: taskFilter(filter) }),
    );
    return Number(answer.cancelled);
  }

  /** The task's current state, then every change until its final state. */
  async *watch(taskId: string): AsyncGenerator<TaskInfo, void, undefined> {
    const method = TasksDefinition.methods.watch;
    const call = this.rpc.makeServerStreamRequest(
      `/${TasksDefinition.fullName}/${method.name}`,
      serializer(method.requestType),
      (bytes: Buffer) => method.responseType.decode(bytes),
      WatchRequest.fromPartial({ taskId }),
      new grpc.Metadata(),
      {},
    );
    let ended = false;
    try {
      for await (const info of call) yield info as TaskInfo;
      ended = true;
    } catch (err) {
      ended = true;
      throw fromRpc(err);
    } finally {
      if (!ended) {
        // The caller stopped early: end the stream, whose status is then CANCELLED.
        call.on("error", () => undefined);
        call.cancel();
      }
    }
  }
}

/** A submitted task; `O` is its output message. */
export class TaskHandle<O = Uint8Array> {
  constructor(
    readonly client: Client,
    readonly id: string,
    private readonly output: Decoder<O>,
  ) {}

  toString(): string {
    return `TaskHandle(${this.id})`;
  }

  /** Everything the gateway knows about the task now. */
  info(): Promise<TaskInfo> {
    return this.client.get(this.id);
  }

  /** `queued`, `scheduled`, `running`, `retrying`, `waiting`, `succeeded`, `failed`, `cancelled` or `expired`. */
  async state(): Promise<StateName> {
    return stateName((await this.info()).state);
  }

  /**
   * Waits up to `timeout` seconds (30 by default) for the result: the output message. Rejects
   * with TaskFailed (or TaskCancelled, TaskExpired) when the task did not succeed, TimeoutError
   * when it is not done in time.
   */
  async get({ timeout = 30 }: { timeout?: Seconds } = {}): Promise<O> {
    return outcome(await this.client.wait(this.id, timeout), this.output);
  }

  /** Cancels the task: a queued or scheduled task never runs, a running one is told to stop. */
  async cancel(): Promise<void> {
    await this.client.cancel(this.id);
  }

  /** The task's current state, then every change until its final state. */
  watch(): AsyncGenerator<TaskInfo, void, undefined> {
    return this.client.watch(this.id);
  }
}

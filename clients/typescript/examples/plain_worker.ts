// The example tasks as a plain @grpc/grpc-js server, without taskwire's SDK: any gRPC server of
// the task contracts is a worker once taskwire's worker runtime serves it.
//
//     node dist/examples/plain_worker.js unix:/tmp/tasks.sock       # or 127.0.0.1:PORT
//     taskwire-worker --upstream unix:///tmp/tasks.sock             # or http://127.0.0.1:PORT
//
// For each attempt the runtime calls the task's own method (`/examples.magic.v1.Magic/Add`)
// with the attempt in the metadata (taskwire-task-id, taskwire-attempt, ...), the attempt's
// time limit as the deadline, and a cancel of the task as the call's cancellation. The status
// of the answer decides: OK is the result; UNAVAILABLE (and the other "try again" codes)
// retries; FAILED_PRECONDITION (and the other codes that say the input cannot work) fails the
// task at once; INTERNAL and UNKNOWN fail it at once as a crash. Progress goes to the
// taskwire.v1.TaskContext service at the call's `taskwire-context` address.
//
// The runtime learns the services from this server's reflection. @grpc/reflection hands out
// the descriptors without custom options, (taskwire.v1.task) among them, so the tasks then run
// with the default options; to keep the ones the protos declare, give the runtime the protos:
// `taskwire-worker --upstream ... --proto examples/chaos/v1/chaos.proto --proto
// examples/magic/v1/magic.proto --proto-path proto` (or a descriptor set with --descriptors).

import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";

import {
  type ChaosServer,
  ChaosService,
  protoMetadata as chaosProto,
  SleepArgs,
  SleepResult,
  StepsDone,
} from "../src/gen/examples/chaos/v1/chaos";
import { type MagicServer, MagicService, protoMetadata as magicProto } from "../src/gen/examples/magic/v1/magic";
import { FileDescriptorProto } from "../src/gen/google/protobuf/descriptor";
import type { TaskInfo } from "../src/gen/taskwire/v1/tasks";
import { ReportProgressRequest, SubmitChildRequest, TaskContextClient, WaitForChildrenRequest } from "../src/gen/taskwire/v1/worker";

interface Metadata {
  fileDescriptor: object;
  dependencies?: Metadata[];
}

/** The encoded descriptors of proto files and of every file they import, for reflection. */
function fileDescriptors(files: readonly Metadata[], out = new Map<string, Buffer>()): Buffer[] {
  for (const file of files) {
    const descriptor = FileDescriptorProto.fromPartial(file.fileDescriptor as FileDescriptorProto);
    const name = descriptor.name ?? "";
    if (out.has(name)) continue;
    out.set(name, Buffer.from(FileDescriptorProto.encode(descriptor).finish()));
    fileDescriptors(file.dependencies ?? [], out);
  }
  return [...out.values()];
}

/** A failure the runtime reads from the status: retried when `code` says "try again". */
function fail(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  return { code, details };
}

function attemptOf(call: grpc.ServerUnaryCall<unknown, unknown>): number {
  return Number(call.metadata.get("taskwire-attempt")[0] ?? 1);
}

/** Aborted when the call is cancelled: the task was cancelled, ran out of time, or its worker stops. */
function cancellation(call: grpc.ServerUnaryCall<unknown, unknown>): AbortSignal {
  const controller = new AbortController();
  call.once("cancelled", () => controller.abort());
  if (call.cancelled) controller.abort();
  return controller.signal;
}

/** Runs `answer`, and gives the runtime its result or the status it rejected with. */
function unary<I, O>(answer: (call: grpc.ServerUnaryCall<I, O>) => Promise<O>): grpc.handleUnaryCall<I, O> {
  return (call, callback) => {
    answer(call).then(
      (result) => callback(null, result),
      (err: unknown) => {
        const code = (err as { code?: unknown } | null)?.code;
        if (typeof code === "number") callback(err as Partial<grpc.StatusObject>);
        // The call was cancelled: nobody waits for the answer.
        else if (call.cancelled) callback(fail(grpc.status.CANCELLED, "stopped"));
        else callback(fail(grpc.status.INTERNAL, err instanceof Error ? `${err.name}: ${err.message}` : String(err)));
      },
    );
  };
}

/** Progress clients, by the runtime's context address (`http://127.0.0.1:PORT`). */
const contexts = new Map<string, TaskContextClient>();

function contextOf(address: string): TaskContextClient {
  let client = contexts.get(address);
  if (client === undefined) {
    client = new TaskContextClient(address.replace(/^http:\/\//, ""), grpc.credentials.createInsecure());
    contexts.set(address, client);
  }
  return client;
}

/** Submits a child of the call's task through the runtime's context service. */
function submitChild(call: grpc.ServerUnaryCall<unknown, unknown>, task: string, args: Uint8Array): Promise<string> {
  const client = contextOf(String(call.metadata.get("taskwire-context")[0] ?? ""));
  const request = SubmitChildRequest.fromPartial({
    taskId: String(call.metadata.get("taskwire-task-id")[0] ?? ""),
    attempt: attemptOf(call),
    child: { task, argsProto: Buffer.from(args) },
  });
  return new Promise((resolve, reject) => {
    client.submitChild(request, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, (err, response) => {
      if (err) reject(fail(grpc.status.UNAVAILABLE, `child not submitted: ${err.message}`));
      else resolve(response.taskId);
    });
  });
}

/**
 * The outcomes of the call's children once all have ended; while some have not, the call ends
 * (any failure does: the runtime parks the task and calls again when they have).
 */
function waitForChildren(call: grpc.ServerUnaryCall<unknown, unknown>): Promise<TaskInfo[]> {
  const client = contextOf(String(call.metadata.get("taskwire-context")[0] ?? ""));
  const request = WaitForChildrenRequest.fromPartial({
    taskId: String(call.metadata.get("taskwire-task-id")[0] ?? ""),
    attempt: attemptOf(call),
  });
  return new Promise((resolve, reject) => {
    client.waitForChildren(request, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, (err, response) => {
      if (err) reject(fail(grpc.status.UNAVAILABLE, `cannot wait for the children: ${err.message}`));
      else if (!response.ended) reject(fail(grpc.status.ABORTED, "waiting for its children"));
      else resolve(response.children);
    });
  });
}

function progress(call: grpc.ServerUnaryCall<unknown, unknown>, percent: number, message: string, details: Uint8Array): Promise<void> {
  const address = String(call.metadata.get("taskwire-context")[0] ?? "");
  if (address === "") return Promise.resolve();
  const client = contextOf(address);
  const request = ReportProgressRequest.fromPartial({
    taskId: String(call.metadata.get("taskwire-task-id")[0] ?? ""),
    attempt: attemptOf(call),
    progress: { percent, message, details: Buffer.from(details), detailsType: "examples.chaos.v1.StepsDone" },
  });
  return new Promise((resolve) => {
    client.reportProgress(request, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err) => {
      if (err) console.warn(`progress not reported: ${err.message}`);
      resolve();
    });
  });
}

const magic: MagicServer = {
  add: unary(async (call) => ({ sum: call.request.arg1 + call.request.arg2 + call.request.arg3 })),
};

async function sleepy(call: grpc.ServerUnaryCall<SleepArgs, SleepResult>): Promise<SleepResult> {
  await sleep(Number(call.request.millis), undefined, { signal: cancellation(call) });
  return { label: call.request.label, attempt: attemptOf(call) };
}

// Runs of each Flaky key on this server, across attempts and replays.
const flakyRuns = new Map<string, number>();

const chaos: ChaosServer = {
  sleep: unary(async (call) => {
    const result = await sleepy(call);
    if (result.label.startsWith("oversized-result")) {
      // A result larger than any NATS server takes.
      result.label = result.label.repeat(Math.floor((2 * 1024 * 1024) / result.label.length) + 1);
    }
    return result;
  }),
  // At most five run at once across all workers, at most 20 start a second: the runtime
  // keeps to the limits (max_concurrency, rate_limit in the proto).
  limited: unary(sleepy),
  paced: unary(sleepy),
  flaky: unary(async (call) => {
    const args = call.request;
    const attempt = attemptOf(call);
    let run = attempt;
    if (args.key) {
      run = (flakyRuns.get(args.key) ?? 0) + 1;
      flakyRuns.set(args.key, run);
    }
    if (args.succeedOnAttempt === 0 || run < args.succeedOnAttempt) {
      const code = args.permanent ? grpc.status.FAILED_PRECONDITION : grpc.status.UNAVAILABLE;
      throw fail(code, `failing on purpose on attempt ${attempt}`);
    }
    return { attempt };
  }),
  steps: unary(async (call) => {
    const args = call.request;
    const signal = cancellation(call);
    let reports = Promise.resolve();
    for (let step = 1; step <= args.steps; step++) {
      await sleep(Number(args.stepMillis), undefined, { signal });
      const details = StepsDone.encode({ done: step, left: args.steps - step }).finish();
      const percent = (100 * step) / args.steps;
      reports = reports.then(() => progress(call, percent, `step ${step} of ${args.steps}`, details));
    }
    // The reports reach watchers before the result does.
    await reports;
    return { label: args.label, steps: args.steps };
  }),
  panic: unary(async (call) => {
    throw new Error(call.request.message);
  }),
  charge: unary(async (call) => ({ orderId: call.request.orderId })),
  spawn: unary(async (call) => {
    const args = call.request;
    const children: string[] = [];
    for (let i = 0; i < args.count; i++) {
      const child = SleepArgs.encode({ millis: args.childMillis, label: `${args.label}-${i}` }).finish();
      children.push(await submitChild(call, "examples.chaos.v1.Chaos/Sleep", child));
      await sleep(Number(args.gapMillis));
    }
    const attempt = attemptOf(call);
    if (args.failFirst && attempt === 1) throw fail(grpc.status.UNAVAILABLE, "spawn: the first attempt fails");
    const labels = args.wait ? (await waitForChildren(call)).map((child) => SleepResult.decode(child.result).label) : [];
    return { children, attempt, labels };
  }),
};

function main(): void {
  const address = process.argv[2];
  if (address === undefined || address === "") {
    console.error("usage: node plain_worker.js unix:/path/to.sock | 127.0.0.1:PORT");
    process.exit(64);
  }
  const server = new grpc.Server();
  server.addService(MagicService, magic);
  server.addService(ChaosService, chaos);
  const files = fileDescriptors([magicProto, chaosProto]);
  const definitions = Object.fromEntries(
    ["examples.magic.v1.Magic", "examples.chaos.v1.Chaos"].map((name) => [name, { fileDescriptorProtos: files }]),
  );
  new ReflectionService(definitions as unknown as ConstructorParameters<typeof ReflectionService>[0]).addToServer(server);
  server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`cannot listen on ${address}: ${err.message}`);
      process.exit(1);
    }
    console.log(`listening on ${address.startsWith("unix:") ? address : address.replace(/:\d+$/, `:${port}`)}`);
  });
  const stop = () => {
    server.tryShutdown(() => {
      for (const client of contexts.values()) client.close();
    });
  };
  process.once("SIGTERM", stop).once("SIGINT", stop);
}

main();

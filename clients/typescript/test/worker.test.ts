// Serving tasks: the Worker against a real worker runtime, gateway and nats-server, the example
// worker under SIGTERM, and a plain @grpc/grpc-js server served by the runtime directly.

import * as assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";

import { FileDescriptorSet, MethodOptions } from "ts-proto-descriptors";

import * as taskwire from "../src";
import { ChaosDefinition, protoMetadata as chaosSchema } from "../src/gen/examples/chaos/v1/chaos";
import { type AddArgs, MagicDefinition, protoMetadata as magicSchema } from "../src/gen/examples/magic/v1/magic";
import { TaskOptions } from "../src/gen/taskwire/v1/options";
import { AdminDefinition, type TaskInfo } from "../src/gen/taskwire/v1/tasks";
import { binary, Process, registered, startSystem, type System, until } from "./system";

/** dist/, where the examples are compiled to. */
const DIST = path.resolve(__dirname, "..");
process.env["TASKWIRE_WORKER_BIN"] ||= binary("taskwire-worker");

const ADD = "examples.magic.v1.Magic/Add";
const CHAOS = ["Sleep", "Flaky", "Steps", "Panic"].map((m) => `examples.chaos.v1.Chaos/${m}`);

/** Resolves with what `check` finds (not undefined) once it does; polls, up to `ms`. */
async function eventually<T>(what: string, check: () => T | undefined | Promise<T | undefined>, ms = 30_000): Promise<T> {
  let found: T | undefined;
  await until(
    `no ${what}`,
    async () => {
      found = await check();
      return found !== undefined;
    },
    [],
    ms,
  );
  return found as T;
}

/** A promise with its resolve function. */
function signal<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function failureOf(info: TaskInfo): { message: string; retryable: boolean } {
  return { message: info.error?.message ?? "", retryable: info.error?.retryable ?? false };
}

describe("a worker's descriptors", () => {
  it("carry the task options of the protos", () => {
    const set = FileDescriptorSet.decode(taskwire.descriptorSet([chaosSchema, magicSchema]));
    const names = set.file.map((f) => f.name);
    assert.deepEqual(names.slice(-2), ["examples/chaos/v1/chaos.proto", "examples/magic/v1/magic.proto"]);
    for (const dependency of ["google/protobuf/descriptor.proto", "taskwire/v1/options.proto"]) {
      assert.ok(names.indexOf(dependency) < names.indexOf("examples/chaos/v1/chaos.proto"), `${dependency} comes first`);
    }
    const chaos = set.file.find((f) => f.name === "examples/chaos/v1/chaos.proto");
    const flaky = chaos?.service[0]?.method.find((m) => m.name === "Flaky");
    // (taskwire.v1.task) is field 52117 of MethodOptions, a message.
    const raw = (flaky?.options as MethodOptions & { _unknownFields?: Record<number, Uint8Array[]> })._unknownFields?.[(52117 << 3) | 2];
    assert.ok(raw?.[0] !== undefined, "Flaky has its task options");
    const declared = TaskOptions.decode(raw[0].subarray(1));
    assert.equal(declared.maxAttempts, 3);
    assert.equal(declared.backoffInitial, "100ms");
    assert.equal(declared.backoffMax, "1s");
  });

  it("keep only the methods asked for", () => {
    const served = new Map([["examples.chaos.v1.Chaos", new Set(["Sleep"])]]);
    const set = FileDescriptorSet.decode(taskwire.descriptorSet([chaosSchema], served));
    const chaos = set.file.find((f) => f.name === "examples/chaos/v1/chaos.proto");
    assert.deepEqual(chaos?.service[0]?.method.map((m) => m.name), ["Sleep"]);
  });
});

describe("a Worker, before it runs", () => {
  it("says which task a service lacks", () => {
    const chaos = new taskwire.Worker().service(ChaosDefinition);
    assert.throws(() => (chaos as unknown as Record<string, unknown>)["nap"], /examples.chaos.v1.Chaos has no task nap; it has /);
  });

  it("serves the methods of an object or a class instance", () => {
    class Magic {
      offset = 1n;
      add(args: AddArgs) {
        return { sum: args.arg1 + this.offset };
      }
    }
    const worker = new taskwire.Worker();
    worker.addService(MagicDefinition, new Magic());
    assert.throws(() => worker.addService(ChaosDefinition, {}), /the implementation of examples.chaos.v1.Chaos has no handler/);
  });

  it("refuses to run with no handler", async () => {
    const worker = new taskwire.Worker();
    worker.service(MagicDefinition);
    await assert.rejects(worker.run({ signals: false }), /serves no task/);
  });

  it("says where the runtime is looked for when it is missing", async () => {
    const saved = { bin: process.env["TASKWIRE_WORKER_BIN"], path: process.env["PATH"] };
    process.env["TASKWIRE_WORKER_BIN"] = "";
    process.env["PATH"] = fs.mkdtempSync(path.join(os.tmpdir(), "taskwire-empty-"));
    try {
      assert.throws(() => taskwire.runtimeBinary(), /put taskwire-worker on PATH, or set TASKWIRE_WORKER_BIN/);
      process.env["TASKWIRE_WORKER_BIN"] = path.join(process.env["PATH"], "nothing");
      assert.throws(() => taskwire.runtimeBinary(), /TASKWIRE_WORKER_BIN=.*nothing: no such executable file/);
    } finally {
      fs.rmSync(process.env["PATH"], { recursive: true, force: true });
      for (const [name, value] of [["TASKWIRE_WORKER_BIN", saved.bin], ["PATH", saved.path]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it("refuses settings the runtime would refuse", () => {
    assert.throws(() => new taskwire.Worker({ concurrency: 0 }), /concurrency must be a whole number/);
    assert.throws(() => new taskwire.Worker({ grace: -1 }), /grace must be seconds/);
    assert.throws(() => new taskwire.Worker({ metricsAddr: "9464" }), /metricsAddr must be host:port/);
    assert.deepEqual(new taskwire.Worker({ grace: 1.5, concurrency: 4 }).settings, {
      TASKWIRE_CONCURRENCY: "4",
      TASKWIRE_GRACE: "1500ms",
    });
  });

  it("rejects run() with the runtime's exit code when it stops with an error", async () => {
    const worker = new taskwire.Worker({ env: { TASKWIRE_CONCURRENCY: "none", TASKWIRE_LOG: "error" } });
    worker.service(MagicDefinition).add.handler(() => ({ sum: 0n }));
    const err = await worker.run({ signals: false }).then(
      () => assert.fail("a runtime that cannot start must reject run()"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof taskwire.WorkerExited, String(err));
    assert.equal(err.exitCode, 64);
    assert.match(err.message, /stopped with exit code 64/);
  });

  it("makes TaskErrors retryable unless told otherwise", () => {
    assert.equal(new taskwire.TaskError("x").retryable, true);
    assert.equal(new taskwire.TaskError("x", { retryable: false }).retryable, false);
    assert.equal(new taskwire.TaskError("x", { retryable: false, retryAfter: 5 }).retryable, true);
    assert.throws(() => new taskwire.TaskError("x", { retryAfter: -1 }), /retryAfter must be a number of milliseconds/);
  });
});

describe("a Worker serving tasks", { timeout: 240_000 }, () => {
  let system: System;
  let client: taskwire.Client;
  let magic: taskwire.TaskService<typeof MagicDefinition>;
  let chaos: taskwire.TaskService<typeof ChaosDefinition>;
  let worker: taskwire.Worker;
  let running: Promise<void>;

  // What the handlers saw, by task id.
  const contexts = new Map<string, taskwire.TaskContext>();
  const attempts = new Map<string, number[]>();
  const started = new Map<string, () => void>();
  const aborted = new Map<string, () => void>();
  const gates = new Map<string, Promise<void>>();

  before(async () => {
    system = await startSystem({ testWorker: false });
    client = new taskwire.Client(system.address);
    magic = taskwire.service(MagicDefinition, client);
    chaos = taskwire.service(ChaosDefinition, client);

    worker = new taskwire.Worker({ natsUrl: system.natsUrl, grace: 10, env: { TASKWIRE_LOG: "warn" } });
    worker.addService(MagicDefinition, {
      add(args, ctx) {
        contexts.set(ctx.id, ctx);
        return { sum: args.arg1 + args.arg2 + args.arg3 };
      },
    });
    const tasks = worker.service(ChaosDefinition);
    tasks.flaky.handler((args, ctx) => {
      attempts.set(ctx.id, [...(attempts.get(ctx.id) ?? []), ctx.attempt]);
      if (args.key.startsWith("later") && ctx.attempt === 1) {
        throw new taskwire.TaskError("again in an hour", { retryAfter: 3_600_000 });
      }
      if (args.succeedOnAttempt === 0 || ctx.attempt < args.succeedOnAttempt) {
        throw new taskwire.TaskError(`no luck on attempt ${ctx.attempt}`, { retryable: !args.permanent });
      }
      return { attempt: ctx.attempt };
    });
    tasks.sleep.handler(async (args, ctx) => {
      ctx.signal.addEventListener("abort", () => aborted.get(args.label)?.());
      started.get(args.label)?.();
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      return { label: args.label, attempt: ctx.attempt };
    });
    tasks.steps.handler(async (args, ctx) => {
      started.get(args.label)?.();
      await gates.get(args.label);
      // Not awaited: the answer waits for the reports all the same.
      for (let step = 1; step <= args.steps; step++) void ctx.progress((100 * step) / args.steps, `step ${step} of ${args.steps}`);
      return { label: args.label, steps: args.steps };
    });
    tasks.panic.handler((args) => {
      throw new RangeError(args.message);
    });
    let ended: unknown;
    running = worker.run({ signals: false });
    running.then(
      () => (ended = new Error("the worker stopped")),
      (err: unknown) => (ended = err),
    );
    await until("the worker did not register its tasks", async () => {
      if (ended !== undefined) throw ended;
      return registered(system.address, {}, [ADD, ...CHAOS]);
    });
  });

  after(async () => {
    worker?.stop();
    await running;
    client?.close();
    await system?.stop();
  });

  it("registers the tasks with the options of their protos", async () => {
    const { taskTypes } = await client.unary(AdminDefinition, "listTaskTypes", {});
    const flaky = taskTypes.find((t) => t.name === chaos.flaky.task);
    assert.equal(flaky?.options?.maxAttempts, 3);
    assert.equal(flaky?.options?.backoffInitial, "100ms");
    assert.equal(flaky?.options?.backoffMax, "1s");
    const add = taskTypes.find((t) => t.name === ADD);
    assert.equal(add?.options?.timeout, "10s");
    assert.equal(add?.descriptorHash, magic.add.descriptorHash);
    // Only the tasks with handlers.
    assert.equal(taskTypes.find((t) => t.name === chaos.limited.task), undefined);
  });

  it("answers Add to a client, with the attempt in the context", async () => {
    const submitted = new Date();
    const handle = await magic.add({ arg1: 1n, arg2: 2n, arg3: 3n });
    assert.equal((await handle.get({ timeout: 30 })).sum, 6n);
    const ctx = contexts.get(handle.id);
    assert.equal(ctx?.task, ADD);
    assert.equal(ctx?.attempt, 1);
    assert.equal(ctx?.maxAttempts, 3);
    assert.ok(ctx?.deadline instanceof Date && ctx.deadline > submitted, "Add has a time limit (10s)");
    assert.equal(ctx?.cancelled, false);
  });

  it("retries a retryable TaskError, and fails with its message when attempts run out", async () => {
    const third = await chaos.flaky({ succeedOnAttempt: 3 });
    assert.equal((await third.get({ timeout: 30 })).attempt, 3);
    assert.deepEqual(attempts.get(third.id), [1, 2, 3]);

    const never = await chaos.flaky({ succeedOnAttempt: 0 });
    await assert.rejects(never.get({ timeout: 30 }), (err: unknown) => {
      assert.ok(err instanceof taskwire.TaskFailed, String(err));
      assert.equal(err.message, "no luck on attempt 3");
      assert.equal(err.retryable, true);
      assert.equal(err.attempt, 3);
      return true;
    });
    assert.deepEqual(attempts.get(never.id), [1, 2, 3]);
  });

  it("dead-letters a permanent TaskError at once", async () => {
    const handle = await chaos.flaky({ permanent: true });
    await assert.rejects(handle.get({ timeout: 30 }), taskwire.TaskFailed);
    const info = await handle.info();
    assert.equal(info.attempt, 1);
    assert.deepEqual(failureOf(info), { message: "no luck on attempt 1", retryable: false });
    assert.deepEqual(attempts.get(handle.id), [1]);
    const letter = await eventually("dead letter", async () => {
      const { deadLetters } = await client.unary(AdminDefinition, "listDeadLetters", { task: chaos.flaky.task, limit: 1000 });
      return deadLetters.find((d) => d.taskId === handle.id);
    });
    assert.equal(letter.reason, "permanent");
    assert.equal(letter.error, "no luck on attempt 1");
  });

  it("fails a task at once with the name and message of any other error", async () => {
    const handle = await chaos.panic({ message: "out of range" });
    await assert.rejects(handle.get({ timeout: 30 }), taskwire.TaskFailed);
    const info = await handle.info();
    assert.equal(info.attempt, 1);
    assert.deepEqual(failureOf(info), { message: "RangeError: out of range", retryable: false });
    const letter = await eventually("dead letter", async () => {
      const { deadLetters } = await client.unary(AdminDefinition, "listDeadLetters", { task: chaos.panic.task, limit: 1000 });
      return deadLetters.find((d) => d.taskId === handle.id);
    });
    assert.equal(letter.reason, "panic");
  });

  it("retries after the retryAfter of a TaskError rather than the backoff", async () => {
    const later = await chaos.flaky({ key: `later-${randomUUID()}`, succeedOnAttempt: 2 });
    await eventually("retry of the first", async () => ((await later.state()) === "retrying" ? true : undefined));
    // Flaky's backoff is 100 ms: a task that fails after the first did is tried again while
    // the first waits for its hour.
    const other = await chaos.flaky({ succeedOnAttempt: 2 });
    assert.equal((await other.get({ timeout: 30 })).attempt, 2);
    assert.deepEqual(attempts.get(later.id), [1]);
    assert.equal(await later.state(), "retrying");
    await later.cancel();
  });

  it("shows progress to watchers before the result", async () => {
    const label = `steps-${randomUUID()}`;
    const go = signal();
    gates.set(label, go.promise);
    const begun = signal();
    started.set(label, begun.resolve);
    const handle = await chaos.steps({ steps: 4, label });
    const seen: TaskInfo[] = [];
    const watched = (async () => {
      for await (const info of handle.watch()) {
        seen.push(info);
        // Once the watch has seen the task running, it lets it go on.
        if (taskwire.stateName(info.state) === "running") go.resolve();
      }
    })();
    await begun.promise;
    await watched;
    const states = seen.map((i) => taskwire.stateName(i.state));
    assert.equal(states.at(-1), "succeeded", states.join(", "));
    const reports = seen.filter((i) => i.progress !== undefined && i.progress.message !== "").map((i) => i.progress?.message);
    assert.deepEqual(reports, ["step 1 of 4", "step 2 of 4", "step 3 of 4", "step 4 of 4"]);
    const percents = seen.flatMap((i) => (i.progress?.message ? [i.progress.percent] : []));
    assert.deepEqual(percents, [25, 50, 75, 100]);
  });

  it("aborts the handler's signal when the task is cancelled", async () => {
    const label = `sleep-${randomUUID()}`;
    const begun = signal();
    const stopped = signal();
    started.set(label, begun.resolve);
    aborted.set(label, stopped.resolve);
    const handle = await chaos.sleep({ millis: 600_000n, label });
    await begun.promise;
    await handle.cancel();
    await stopped.promise;
    assert.equal(await handle.state(), "cancelled");
  });
});

describe("worker processes", { timeout: 240_000 }, () => {
  let system: System;
  let client: taskwire.Client;
  const started: Process[] = [];

  before(async () => {
    system = await startSystem({ testWorker: false });
    client = new taskwire.Client(system.address);
  });

  after(async () => {
    for (const p of started.reverse()) await p.stop();
    client?.close();
    await system?.stop();
  });

  it("the example worker lets a running task finish on SIGTERM, then stops", async () => {
    const runLog = path.join(system.store, "runs.log");
    const env = { ...process.env, TASKWIRE_NATS_URL: system.natsUrl, TASKWIRE_LOG: "warn", TASKWIRE_RUN_LOG: runLog };
    const example = new Process("the example worker", process.execPath, [path.join(DIST, "examples", "worker.js")], env);
    started.push(example);
    const chaos = taskwire.service(ChaosDefinition, client);
    await until("the example worker did not register Sleep", () => registered(system.address, {}, [chaos.sleep.task]), [example], 60_000);
    const handle = await chaos.sleep({ millis: 3000n, label: "drained" });
    const lines = () => (fs.existsSync(runLog) ? fs.readFileSync(runLog, "utf8").split("\n") : []);
    await eventually("start of the task", () => (lines().some((l) => l.startsWith(`start ${handle.id} 1 `)) ? true : undefined), 60_000);
    const exited = new Promise<number | null>((resolve) => example.child.once("exit", (code) => resolve(code)));
    example.child.kill("SIGTERM");
    assert.equal(await exited, 0, example.describeExit());
    // It ended after the task did.
    const [start, end] = [`start ${handle.id} 1 `, `end ${handle.id} 1 `].map((prefix) => lines().find((l) => l.startsWith(prefix)));
    assert.ok(end !== undefined, `${runLog} has the end of the run`);
    const [, , , startMicros, pid] = start?.split(" ") ?? [];
    assert.equal(pid, String(example.child.pid));
    assert.ok(Number(end.split(" ")[3]) >= Number(startMicros));
    const result = await handle.get({ timeout: 10 });
    assert.deepEqual(result, { label: "drained", attempt: 1 });
  });

  it("a plain @grpc/grpc-js server served by taskwire-worker --upstream answers Add", async () => {
    const socket = path.join(system.store, "plain.sock");
    const env = { ...process.env, TASKWIRE_NATS_URL: system.natsUrl, TASKWIRE_LOG: "warn" };
    const plain = new Process("the plain worker", process.execPath, [path.join(DIST, "examples", "plain_worker.js"), `unix:${socket}`], env);
    const runtime = new Process("taskwire-worker", binary("taskwire-worker"), ["--upstream", `unix://${socket}`], env);
    started.push(plain, runtime);
    // Charge is served by no other worker here: the runtime learnt it from the server's reflection.
    const learnt = [ADD, "examples.chaos.v1.Chaos/Charge"];
    await until("the runtime did not register what the plain server serves", () => registered(system.address, {}, learnt), [plain, runtime], 60_000);
    const magic = taskwire.service(MagicDefinition, client);
    const handle = await magic.add({ arg1: 40n, arg2: 1n, arg3: 1n });
    assert.equal((await handle.get({ timeout: 30 })).sum, 42n);
  });
});

// The TypeScript client against a real gateway, nats-server and Rust worker.

import * as assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";

import * as grpc from "@grpc/grpc-js";

import * as taskwire from "../src";
import { ChaosClient, ChaosDefinition, FlakyArgs } from "../src/gen/examples/chaos/v1/chaos";
import { AddArgs, AddResult, MagicClient, MagicDefinition } from "../src/gen/examples/magic/v1/magic";
import { AdminDefinition } from "../src/gen/taskwire/v1/tasks";
import { startSystem, type System } from "./system";

type Unary<I, O> = (
  request: I,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (err: grpc.ServiceError | null, response: O) => void,
) => grpc.ClientUnaryCall;

/** Calls a plain generated client's rpc; resolves with the response and the response headers. */
function direct<I, O>(rpc: Unary<I, O>, request: I, metadata = new grpc.Metadata()) {
  return new Promise<{ response: O; headers: grpc.Metadata }>((resolve, reject) => {
    let headers = new grpc.Metadata();
    const call = rpc(request, metadata, { deadline: Date.now() + 30_000 }, (err, response) =>
      err ? reject(err) : resolve({ response, headers }),
    );
    call.on("metadata", (received: grpc.Metadata) => {
      headers = received;
    });
  });
}

async function states(watch: AsyncIterable<taskwire.TaskInfo>): Promise<taskwire.StateName[]> {
  const seen: taskwire.StateName[] = [];
  for await (const info of watch) seen.push(taskwire.stateName(info.state));
  return seen;
}

const TASK_ID = /^[0-9a-f]{32}$/;

describe("the client against a real gateway", { timeout: 180_000 }, () => {
  let system: System;
  let client: taskwire.Client;
  let magic: taskwire.TaskService<typeof MagicDefinition>;
  let chaos: taskwire.TaskService<typeof ChaosDefinition>;

  before(async () => {
    system = await startSystem();
    client = new taskwire.Client(system.address);
    magic = taskwire.service(MagicDefinition, client);
    chaos = taskwire.service(ChaosDefinition, client);
  });

  after(async () => {
    client?.close();
    await system?.stop();
  });

  it("submits through a typed stub and gets the decoded result", async () => {
    const handle = await magic.add({ arg1: 1n, arg2: 2n, arg3: 3n });
    assert.match(handle.id, TASK_ID);
    const result: AddResult = await handle.get({ timeout: 10 });
    assert.equal(result.sum, 6n);
    assert.equal(await handle.state(), "succeeded");
    assert.equal(magic.add.task, "examples.magic.v1.Magic/Add");
  });

  it("takes submit options: a countdown schedules the task, a priority is accepted", async () => {
    const later = await magic.add({ arg1: 40n, arg2: 2n }, { countdown: 1.5, priority: "high" });
    assert.equal(await later.state(), "scheduled");
    assert.equal((await later.get({ timeout: 20 })).sum, 42n);
  });

  it("gives the same id for the same idempotency key", async () => {
    const key = `order-${randomUUID()}`;
    const first = await magic.add({ arg1: 7n }, { idempotencyKey: key });
    const again = await magic.add({ arg1: 7n }, { idempotencyKey: key });
    const other = await magic.add({ arg1: 7n }, { idempotencyKey: `${key}-other` });
    assert.equal(again.id, first.id);
    assert.notEqual(other.id, first.id);
    assert.equal((await again.get({ timeout: 10 })).sum, 7n);
  });

  it("lists tasks by filter and cancels those that match in bulk", async () => {
    const held = [];
    for (let n = 0n; n < 3n; n++) held.push(await magic.add({ arg1: n }, { countdown: 3600 }));
    const listed = [];
    for await (const info of client.listTasks({ task: "examples.magic.*", states: ["scheduled"], since: 600 })) {
      listed.push(info.taskId);
    }
    for (const handle of held) assert.ok(listed.includes(handle.id), `${handle.id} is listed`);
    assert.ok((await client.cancelMany({ task: "examples.magic.v1.Magic/Add", states: ["scheduled"] })) >= 3);
    for (const handle of held) assert.equal(await handle.state(), "cancelled");
    assert.equal(await client.cancelMany({ task: "examples.magic.v1.Magic/Add", states: ["scheduled"] }), 0);
    assert.throws(() => taskwire.taskFilter({ states: ["done" as taskwire.StateName] }), /none of queued/);
  });

  it("submits by task name with bytes or JSON, and follows a task by its id", async () => {
    const args = MagicDefinition.methods.add.requestType;
    const raw = await client.submit("examples.magic.v1.Magic/Add", args.encode(args.fromPartial({ arg1: 5n })).finish());
    assert.equal(AddResult.decode(await raw.get({ timeout: 10 })).sum, 5n);
    const id = await client.submitJson("examples.magic.v1.Magic/Add", '{"arg1": "20", "arg2": 22}');
    assert.equal((await client.handle(id, AddResult).get({ timeout: 10 })).sum, 42n);
  });

  it("answers a plain generated Magic client on the task's own method path", async () => {
    const plain = new MagicClient(system.address, grpc.credentials.createInsecure());
    try {
      const { response, headers } = await direct(plain.add.bind(plain), AddArgs.fromPartial({ arg1: 2n, arg2: 2n }));
      assert.equal(response.sum, 4n);
      const id = taskwire.taskIdOf(headers);
      assert.match(id ?? "", TASK_ID);
      assert.equal(await client.handle(id ?? "").state(), "succeeded");
    } finally {
      plain.close();
    }
  });

  it("answers at once with the task id when asked with taskwire-async", async () => {
    const plain = new MagicClient(client.address, client.credentials, client.grpcOptions);
    const metadata = new grpc.Metadata();
    metadata.set(taskwire.ASYNC_METADATA, "true");
    const { response, headers } = await direct(plain.add.bind(plain), AddArgs.fromPartial({ arg1: 40n, arg2: 2n }), metadata);
    assert.equal(response.sum, 0n, "the empty output message");
    const id = taskwire.taskIdOf(headers);
    assert.match(id ?? "", TASK_ID);
    assert.equal((await client.handle(id ?? "", AddResult).get({ timeout: 60 })).sum, 42n);
  });

  it("sends the schema fingerprint the workers registered", async () => {
    const { taskTypes } = await client.unary(AdminDefinition, "listTaskTypes", {});
    const add = taskTypes.find((t) => t.name === "examples.magic.v1.Magic/Add");
    assert.match(add?.descriptorHash ?? "", /^[0-9a-f]{64}$/);
    assert.equal(magic.add.descriptorHash, add?.descriptorHash);
    for (const name of ["flaky", "sleep", "steps"] as const) {
      const registered = taskTypes.find((t) => t.name === chaos[name].task);
      assert.equal(chaos[name].descriptorHash, registered?.descriptorHash, chaos[name].task);
    }
  });

  it("is refused with FAILED_PRECONDITION naming both versions when the schemas differ", async () => {
    const other = "0123456789ab".padEnd(64, "0");
    const registered = magic.add.descriptorHash ?? "";
    const says = ["examples.magic.v1.Magic/Add", "0123456789ab", registered.slice(0, 12)];
    const refused = (err: unknown) => {
      assert.ok(err instanceof taskwire.GatewayError, `${String(err)}`);
      assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
      for (const part of says) assert.ok(err.details.includes(part), `${err.details} should say ${part}`);
      return true;
    };
    await assert.rejects(magic.add({ arg1: 1n }, { descriptorHash: other }), refused);
    await assert.rejects(client.submitJson("examples.magic.v1.Magic/Add", "{}", { descriptorHash: other }), refused);
    // The same fingerprint by name is accepted.
    const id = await client.submitJson("examples.magic.v1.Magic/Add", '{"arg1": 3}', { descriptorHash: registered });
    assert.equal((await client.handle(id, AddResult).get({ timeout: 10 })).sum, 3n);
  });

  it("checks the fingerprint in taskwire-descriptor-hash on the task's own method path", async () => {
    const plain = new MagicClient(client.address, client.credentials, client.grpcOptions);
    const withHash = (hash: string) => {
      const metadata = new grpc.Metadata();
      metadata.set(taskwire.DESCRIPTOR_HASH_METADATA, hash);
      return metadata;
    };
    const args = AddArgs.fromPartial({ arg1: 2n, arg2: 3n });
    const ok = await direct(plain.add.bind(plain), args, withHash(magic.add.descriptorHash ?? ""));
    assert.equal(ok.response.sum, 5n);
    const err = await direct(plain.add.bind(plain), args, withHash("f".repeat(64))).then(
      () => assert.fail("another schema must be refused"),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(err.details, /ffffffffffff/);
  });

  it("rejects with TaskFailed carrying the task's error when a task fails for good", async () => {
    const handle = await chaos.flaky({ permanent: true });
    const failed = await handle.get({ timeout: 20 }).then(
      () => assert.fail("a permanent failure must not resolve"),
      (err: unknown) => err,
    );
    assert.ok(failed instanceof taskwire.TaskFailed, `${String(failed)}`);
    assert.ok(!(failed instanceof taskwire.TaskCancelled));
    assert.equal(failed.name, "TaskFailed");
    assert.equal(failed.message, "flaky: failed for good");
    assert.equal(failed.retryable, false);
    assert.equal(failed.attempt, 1);
    assert.equal(failed.taskId, handle.id);
    assert.equal(await handle.state(), "failed");
  });

  it("turns a direct call's TASK_FAILED status into a TaskFailed", async () => {
    const plain = new ChaosClient(system.address, grpc.credentials.createInsecure());
    try {
      const err = await direct(plain.flaky.bind(plain), FlakyArgs.fromPartial({ permanent: true })).then(
        () => assert.fail("a permanent failure must not answer"),
        (e: grpc.ServiceError) => e,
      );
      assert.equal(err.code, grpc.status.ABORTED);
      const info = taskwire.errorInfoOf(err);
      assert.equal(info?.reason, "TASK_FAILED");
      assert.equal(info?.metadata["state"], "failed");
      const failed = taskwire.taskError(err);
      assert.ok(failed instanceof taskwire.TaskFailed);
      assert.equal(failed.message, "flaky: failed for good");
      assert.equal(failed.retryable, false);
      assert.equal(failed.attempt, 1);
      assert.equal(failed.taskId, taskwire.taskIdOf(err.metadata));
      assert.match(failed.taskId, TASK_ID);
    } finally {
      plain.close();
    }
  });

  it("cancels a delayed task, which then rejects with TaskCancelled", async () => {
    const handle = await magic.add({ arg1: 1n }, { countdown: 600 });
    for await (const info of handle.watch()) {
      assert.equal(taskwire.stateName(info.state), "scheduled");
      break; // stopping early ends the stream
    }
    const timedOut = await handle.get({ timeout: 1 }).then(
      () => assert.fail("a task due in 10 minutes has no result yet"),
      (err: unknown) => err,
    );
    assert.ok(timedOut instanceof taskwire.TimeoutError, `${String(timedOut)}`);
    assert.equal(timedOut.code, grpc.status.DEADLINE_EXCEEDED);
    await handle.cancel();
    await assert.rejects(handle.get({ timeout: 10 }), (err: unknown) => {
      assert.ok(err instanceof taskwire.TaskCancelled, `${String(err)}`);
      assert.equal(err.taskId, handle.id);
      return true;
    });
    assert.equal(await handle.state(), "cancelled");
  });

  it("watches a task through its states to succeeded", async () => {
    const handle = await chaos.steps({ steps: 3, stepMillis: 100n, label: "ts-watch" });
    const seen = await states(handle.watch());
    assert.equal(seen.at(-1), "succeeded", `states: ${seen.join(", ")}`);
    for (const state of seen.slice(0, -1)) assert.ok(["queued", "running"].includes(state), `states: ${seen.join(", ")}`);
    assert.deepEqual(await handle.get({ timeout: 10 }), { label: "ts-watch", steps: 3 });
  });

  it("cancels a running task while watching it", async () => {
    const slow = await chaos.sleep({ millis: 60_000n, label: "ts-cancel" });
    let last: taskwire.TaskInfo | undefined;
    for await (const info of slow.watch()) {
      if (info.state === taskwire.TaskState.TASK_STATE_RUNNING) await slow.cancel();
      last = info;
    }
    assert.equal(last?.state, taskwire.TaskState.TASK_STATE_CANCELLED);
    await assert.rejects(slow.get({ timeout: 10 }), taskwire.TaskCancelled);
  });

  it("reports refused calls as GatewayError with the gRPC code", async () => {
    await assert.rejects(client.submitJson("examples.magic.v1.Magic/Add", '{"arg4": 1}'), (err: unknown) => {
      assert.ok(err instanceof taskwire.GatewayError);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /arg4/);
      return true;
    });
    await assert.rejects(client.get("no-such-task"), { code: grpc.status.NOT_FOUND });
  });
});

// The parts of the client that need no gateway: options, outcomes, stubs, and the token.

import * as assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";

import * as grpc from "@grpc/grpc-js";

import * as taskwire from "../src";
import { ChaosDefinition, protoMetadata as chaosSchema } from "../src/gen/examples/chaos/v1/chaos";
import { AddResult, MagicDefinition, protoMetadata as magicSchema } from "../src/gen/examples/magic/v1/magic";
import { Priority, SubmitRequest, TaskInfo, TasksClient, TasksService } from "../src/gen/taskwire/v1/tasks";

function info(fields: Partial<TaskInfo>): TaskInfo {
  return TaskInfo.fromPartial({ taskId: "0123456789abcdef0123456789abcdef", task: "examples.magic.v1.Magic/Add", ...fields });
}

describe("submit options", () => {
  it("are the gateway's SubmitOptions", () => {
    const eta = new Date("2030-01-02T03:04:05Z");
    const options = taskwire.submitOptions({ countdown: 1.5, eta, priority: "high", idempotencyKey: "k", maxAttempts: 2 });
    assert.deepEqual(options.countdown, { seconds: 1n, nanos: 500_000_000 });
    assert.equal(options.notBefore, eta);
    assert.equal(options.priority, Priority.PRIORITY_HIGH);
    assert.equal(options.idempotencyKey, "k");
    assert.equal(options.maxAttempts, 2);
    assert.equal(options.ttl, undefined);
  });

  it("default to the task's own settings", () => {
    const options = taskwire.submitOptions();
    assert.equal(options.priority, Priority.PRIORITY_UNSPECIFIED);
    assert.equal(options.maxAttempts, 0);
    assert.equal(options.countdown, undefined);
  });

  it("refuse values the gateway would refuse, saying which", () => {
    assert.throws(() => taskwire.submitOptions({ priority: "urgent" as taskwire.PriorityName }), /priority "urgent" is not one of/);
    assert.throws(() => taskwire.submitOptions({ countdown: -1 }), /countdown must be a number of seconds/);
    assert.throws(() => taskwire.submitOptions({ maxAttempts: 0 }), /maxAttempts must be a whole number from 1 to 100/);
    assert.throws(() => taskwire.submitOptions({ expires: new Date("nonsense") }), /expires must be a valid Date/);
  });
});

describe("the outcome of a finished task", () => {
  it("is the decoded output when it succeeded", () => {
    const result = Buffer.from(AddResult.encode({ sum: 6n }).finish());
    assert.equal(taskwire.outcome(info({ state: taskwire.TaskState.TASK_STATE_SUCCEEDED, result }), AddResult).sum, 6n);
  });

  it("is a typed error when it did not", () => {
    const error = { message: "no luck", retryable: true };
    const cases = [
      [taskwire.TaskState.TASK_STATE_FAILED, taskwire.TaskFailed, "TaskFailed"],
      [taskwire.TaskState.TASK_STATE_CANCELLED, taskwire.TaskCancelled, "TaskCancelled"],
      [taskwire.TaskState.TASK_STATE_EXPIRED, taskwire.TaskExpired, "TaskExpired"],
    ] as const;
    for (const [state, kind, name] of cases) {
      assert.throws(
        () => taskwire.outcome(info({ state, error, attempt: 3 }), AddResult),
        (err: unknown) => {
          assert.ok(err instanceof kind);
          assert.equal(err.name, name);
          assert.equal(err.message, "no luck");
          assert.equal(err.retryable, true);
          assert.equal(err.attempt, 3);
          return true;
        },
      );
    }
    assert.throws(() => taskwire.outcome(info({ state: taskwire.TaskState.TASK_STATE_EXPIRED }), AddResult), {
      message: "expired",
    });
  });
});

describe("typed stubs", () => {
  const client = new taskwire.Client("127.0.0.1:1");
  after(() => client.close());

  it("name an unknown task with the ones there are", () => {
    const magic = taskwire.service(MagicDefinition, client) as unknown as Record<string, unknown>;
    assert.throws(() => magic["ad"], /examples.magic.v1.Magic has no task ad; it has add/);
  });

  it("check options before calling the gateway", async () => {
    const magic = taskwire.service(MagicDefinition, client);
    await assert.rejects(magic.add({}, { priority: "urgent" as taskwire.PriorityName }), RangeError);
  });
});

describe("schema fingerprints", () => {
  const client = new taskwire.Client("127.0.0.1:1");
  after(() => client.close());

  it("hash the canonical text of the task's messages", () => {
    const text =
      "input examples.magic.v1.AddArgs\noutput examples.magic.v1.AddResult\n" +
      "message examples.magic.v1.AddArgs\n" +
      "field 1 arg1 LABEL_OPTIONAL TYPE_INT64\n" +
      "field 2 arg2 LABEL_OPTIONAL TYPE_INT64\n" +
      "field 3 arg3 LABEL_OPTIONAL TYPE_INT64\n" +
      "message examples.magic.v1.AddResult\n" +
      "field 1 sum LABEL_OPTIONAL TYPE_INT64\n";
    assert.equal(taskwire.canonicalText(magicSchema, "examples.magic.v1.Magic/Add"), text);
    const hash = taskwire.descriptorHash(magicSchema, "examples.magic.v1.Magic/Add");
    assert.equal(hash, createHash("sha256").update(text).digest("hex"));
    assert.match(hash, /^[0-9a-f]{64}$/);
  });

  it("are on every typed stub of the generated services", () => {
    const magic = taskwire.service(MagicDefinition, client);
    assert.equal(magic.add.descriptorHash, taskwire.descriptorHash(magicSchema, "examples.magic.v1.Magic/Add"));
    const chaos = taskwire.service(ChaosDefinition, client);
    assert.equal(chaos.flaky.descriptorHash, taskwire.descriptorHash(chaosSchema, "examples.chaos.v1.Chaos/Flaky"));
    assert.notEqual(chaos.flaky.descriptorHash, chaos.sleep.descriptorHash);
    // The schema given explicitly, as for services generated elsewhere, gives the same.
    assert.equal(taskwire.service(MagicDefinition, client, magicSchema).add.descriptorHash, magic.add.descriptorHash);
  });

  it("are left out for a service whose descriptors the stub does not have", () => {
    const copy = { ...MagicDefinition, methods: { add: { ...MagicDefinition.methods.add, requestType: { ...AddResult } } } };
    assert.equal(taskwire.service(copy, client).add.descriptorHash, undefined);
  });

  it("name the task when the given schema does not describe it", () => {
    assert.throws(() => taskwire.service(MagicDefinition, client, chaosSchema), {
      name: "TypeError",
      message: "examples/chaos/v1/chaos.proto does not describe the task examples.magic.v1.Magic/Add",
    });
  });

  it("must be 64 lower-case hex digits", async () => {
    await assert.rejects(client.submitJson("examples.magic.v1.Magic/Add", "{}", { descriptorHash: "ABC" }), {
      name: "RangeError",
      message: 'descriptorHash must be 64 lower-case hex digits; got "ABC"',
    });
  });
});

describe("client options", () => {
  it("refuse a client certificate without its key", () => {
    assert.throws(() => new taskwire.Client("127.0.0.1:1", { tls: { cert: Buffer.from("x") } }), /tls.cert and tls.key go together/);
  });

  it("refuse an empty token", () => {
    assert.throws(() => new taskwire.Client("127.0.0.1:1", { token: "" }), /token must be a non-empty string/);
  });
});

/** A Tasks service that answers Submit and records the authorization header of each call. */
async function fakeGateway(credentials: grpc.ServerCredentials) {
  const seen: Array<string | undefined> = [];
  const hashes: string[] = [];
  const server = new grpc.Server();
  server.addService(TasksService, {
    submit(call: grpc.ServerUnaryCall<SubmitRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      const value = call.metadata.get("authorization")[0];
      seen.push(typeof value === "string" ? value : undefined);
      hashes.push(call.request.descriptorHash);
      callback(null, { taskId: `task-${seen.length}`, duplicate: false });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", credentials, (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  return { address: `127.0.0.1:${port}`, seen, hashes, server };
}

describe("the bearer token", () => {
  let gateway: Awaited<ReturnType<typeof fakeGateway>>;
  before(async () => {
    gateway = await fakeGateway(grpc.ServerCredentials.createInsecure());
  });
  after(() => gateway.server.forceShutdown());

  it("is sent with every call, also by generated clients on grpcOptions", async () => {
    const client = new taskwire.Client(gateway.address, { token: "s3cret" });
    const anonymous = new taskwire.Client(gateway.address);
    try {
      const handle = await client.submit("examples.magic.v1.Magic/Add", new Uint8Array());
      assert.equal(handle.id, "task-1");
      const plain = new TasksClient(client.address, client.credentials, client.grpcOptions);
      await new Promise((resolve, reject) =>
        plain.submit(SubmitRequest.fromPartial({ task: "examples.magic.v1.Magic/Add" }), (err, response) =>
          err ? reject(err) : resolve(response),
        ),
      );
      await anonymous.submitJson("examples.magic.v1.Magic/Add", "{}");
      assert.deepEqual(gateway.seen, ["Bearer s3cret", "Bearer s3cret", undefined]);
    } finally {
      client.close();
      anonymous.close();
    }
  });
});

describe("a submission's schema fingerprint", () => {
  let gateway: Awaited<ReturnType<typeof fakeGateway>>;
  before(async () => {
    gateway = await fakeGateway(grpc.ServerCredentials.createInsecure());
  });
  after(() => gateway.server.forceShutdown());

  it("is sent by typed stubs, and by name only when given", async () => {
    const client = new taskwire.Client(gateway.address);
    try {
      const magic = taskwire.service(MagicDefinition, client);
      const given = "a".repeat(64);
      await magic.add({ arg1: 1n });
      await magic.add({ arg1: 1n }, { descriptorHash: given });
      await client.submit("examples.magic.v1.Magic/Add", new Uint8Array());
      await client.submitJson("examples.magic.v1.Magic/Add", "{}", { descriptorHash: given });
      assert.deepEqual(gateway.hashes, [magic.add.descriptorHash, given, "", given]);
    } finally {
      client.close();
    }
  });
});

describe("TLS", () => {
  // A test CA, and certificates it signed for gateway.taskwire.test and a client.
  const pem = (name: string) => fs.readFileSync(path.join(__dirname, "..", "..", "test", "tls", `${name}.pem`));
  const tls = { ca: pem("ca"), cert: pem("client"), key: pem("client-key"), serverName: "gateway.taskwire.test" };
  let gateway: Awaited<ReturnType<typeof fakeGateway>>;
  before(async () => {
    const keys = [{ cert_chain: pem("gateway"), private_key: pem("gateway-key") }];
    gateway = await fakeGateway(grpc.ServerCredentials.createSsl(pem("ca"), keys, true));
  });
  after(() => gateway.server.forceShutdown());

  it("connects with the CA, the client certificate and the token", async () => {
    const client = new taskwire.Client(gateway.address, { tls, token: "over-tls" });
    try {
      assert.equal((await client.submit("examples.magic.v1.Magic/Add", new Uint8Array())).id, "task-1");
      assert.deepEqual(gateway.seen, ["Bearer over-tls"]);
    } finally {
      client.close();
    }
  });

  it("fails without the client certificate the gateway requires, or with plaintext", async () => {
    for (const options of [{ tls: { ca: tls.ca, serverName: tls.serverName } }, {}]) {
      const client = new taskwire.Client(gateway.address, options);
      try {
        await assert.rejects(client.submit("examples.magic.v1.Magic/Add", new Uint8Array()), {
          code: grpc.status.UNAVAILABLE,
        });
      } finally {
        client.close();
      }
    }
    assert.equal(gateway.seen.length, 1);
  });
});

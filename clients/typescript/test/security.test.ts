// The client against a real gateway with mutual TLS and a bearer token. The committed
// certificates in test/tls/ name gateway.taskwire.test only, so this test makes its own for
// 127.0.0.1 and localhost with the openssl command, in a temporary directory.

import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";

import * as grpc from "@grpc/grpc-js";

import * as taskwire from "../src";
import { ChaosDefinition } from "../src/gen/examples/chaos/v1/chaos";
import { AddArgs, type AddResult, MagicClient, MagicDefinition } from "../src/gen/examples/magic/v1/magic";
import { startSystem, type System } from "./system";

const TOKEN = "ts-producer-0123456789abcdef";
// The gateway is reached at 127.0.0.1, and its certificate is checked for localhost (a name it
// also holds): node warns about a TLS server name that is an IP address.
const SERVER_NAME = "localhost";
const TASK_ID = /^[0-9a-f]{32}$/;

interface Pki {
  dir: string;
  file(name: string): string;
  read(name: string): Buffer;
}

/** A CA, a gateway certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files. */
function makePki(): Pki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "taskwire-ts-pki-"));
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=taskwire test CA");
  const leaves = [
    ["gateway", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"],
    ["client", "subjectAltName=DNS:producer\nextendedKeyUsage=clientAuth\n"],
  ] as const;
  for (const [name, extensions] of leaves) {
    fs.writeFileSync(path.join(dir, `${name}.ext`), extensions);
    openssl("req", ...ec, "-keyout", `${name}-key.pem`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    const ca = ["-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial"];
    openssl("x509", "-req", "-in", `${name}.csr`, ...ca, "-out", `${name}.pem`, "-days", "2", "-extfile", `${name}.ext`);
  }
  const file = (name: string) => path.join(dir, name);
  return { dir, file, read: (name) => fs.readFileSync(file(name)) };
}

function bearer(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

/** Calls a plain generated client's rpc; resolves with the response and the response headers. */
function direct<I, O>(
  rpc: (
    request: I,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (err: grpc.ServiceError | null, response: O) => void,
  ) => grpc.ClientUnaryCall,
  request: I,
  metadata: grpc.Metadata,
) {
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

/** Runs `body` with a client, and closes it after. */
async function using<T>(client: taskwire.Client, body: (client: taskwire.Client) => Promise<T>): Promise<T> {
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

describe("the client against a gateway with mutual TLS and a token", { timeout: 180_000 }, () => {
  let pki: Pki;
  let system: System;
  let tls: taskwire.TlsOptions;

  before(async () => {
    pki = makePki();
    tls = { ca: pki.read("ca.pem"), cert: pki.read("client.pem"), key: pki.read("client-key.pem"), serverName: SERVER_NAME };
    system = await startSystem({
      gatewayEnv: {
        TASKWIRE_TLS_CERT: pki.file("gateway.pem"),
        TASKWIRE_TLS_KEY: pki.file("gateway-key.pem"),
        TASKWIRE_TLS_CLIENT_CA: pki.file("ca.pem"),
        TASKWIRE_AUTH_TOKENS: `${TOKEN} submit,read examples.magic.v1.*`,
      },
      client: { tls, token: TOKEN },
    });
  });

  after(async () => {
    await system?.stop();
    if (pki !== undefined) fs.rmSync(pki.dir, { recursive: true, force: true });
  });

  it("runs a task for a client with the CA, its certificate and the token", async () => {
    await using(new taskwire.Client(system.address, { tls, token: TOKEN }), async (client) => {
      const handle = await taskwire.service(MagicDefinition, client).add({ arg1: 1n, arg2: 2n, arg3: 3n });
      assert.match(handle.id, TASK_ID);
      const result: AddResult = await handle.get({ timeout: 20 });
      assert.equal(result.sum, 6n);
    });
  });

  it("is UNAUTHENTICATED without the token, or with another", async () => {
    for (const token of [undefined, "ts-stranger-0123456789abcdef"]) {
      await using(new taskwire.Client(system.address, { tls, token }), async (client) => {
        await assert.rejects(taskwire.service(MagicDefinition, client).add({ arg1: 1n }), (err: unknown) => {
          assert.ok(err instanceof taskwire.GatewayError, `${String(err)}`);
          assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.message);
          return true;
        });
      });
    }
  });

  it("is PERMISSION_DENIED for a task the token does not allow", async () => {
    await using(new taskwire.Client(system.address, { tls, token: TOKEN }), async (client) => {
      await assert.rejects(taskwire.service(ChaosDefinition, client).flaky({}), (err: unknown) => {
        assert.ok(err instanceof taskwire.GatewayError, `${String(err)}`);
        assert.equal(err.code, grpc.status.PERMISSION_DENIED, err.message);
        return true;
      });
    });
  });

  it("fails without a client certificate, or over plaintext", async () => {
    for (const options of [{ tls: { ca: tls.ca, serverName: SERVER_NAME }, token: TOKEN }, { token: TOKEN }]) {
      await using(new taskwire.Client(system.address, options), async (client) => {
        await assert.rejects(taskwire.service(MagicDefinition, client).add({ arg1: 1n }), (err: unknown) => {
          assert.ok(err instanceof taskwire.GatewayError, `${String(err)}`);
          assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
          return true;
        });
      });
    }
  });

  it("answers a plain generated Magic client with the token in its metadata", async () => {
    const credentials = grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
    const plain = new MagicClient(system.address, credentials, { "grpc.ssl_target_name_override": SERVER_NAME });
    try {
      const add = plain.add.bind(plain);
      const args = AddArgs.fromPartial({ arg1: 2n, arg2: 2n });
      const { response, headers } = await direct(add, args, bearer(TOKEN));
      assert.equal(response.sum, 4n);
      assert.match(taskwire.taskIdOf(headers) ?? "", TASK_ID);
      const refused = await direct(add, args, new grpc.Metadata()).then(
        () => assert.fail("a call without the token must be refused"),
        (err: grpc.ServiceError) => err,
      );
      assert.equal(refused.code, grpc.status.UNAUTHENTICATED);
    } finally {
      plain.close();
    }
  });
});

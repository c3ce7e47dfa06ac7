// BullMQ with Redis on this machine, doing the task flow of `taskwire bench`: tasks that add
// three numbers, each added and waited for (`queue.add` then `job.waitUntilFinished`), many in
// flight at once, then round trips one task at a time. It starts its own redis-server (a free
// loopback port, nothing saved: Redis's usual set-up for a queue) and a worker process of its
// own, and prints one JSON object: `tasks_per_sec` and the round trips, or `skipped` with the
// reason when redis-server is missing.
//
//     node flow.mjs --tasks 20000 --concurrency 256 --worker-concurrency 100 --roundtrips 300

import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Queue, QueueEvents, Worker } from "bullmq";

const QUEUE = "flow";

function options(argv) {
  const out = { tasks: 20000, concurrency: 256, workerConcurrency: 100, roundtrips: 300, worker: false, port: 0 };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    const number = () => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} takes a whole number, not ${value}`);
      i++;
      return n;
    };
    if (flag === "--tasks") out.tasks = number();
    else if (flag === "--concurrency") out.concurrency = Math.max(1, number());
    else if (flag === "--worker-concurrency") out.workerConcurrency = Math.max(1, number());
    else if (flag === "--roundtrips") out.roundtrips = number();
    else if (flag === "--worker") out.worker = true;
    else if (flag === "--port") out.port = number();
    else throw new Error(`unknown flag ${flag}: see the head of ${fileURLToPath(import.meta.url)}`);
  }
  return out;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, limitMs = 20000) {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.end();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server did not listen on port ${port} within ${limitMs / 1000} s`);
}

// The worker process: runs `add` until its parent ends it.
async function work(opts) {
  const connection = { host: "127.0.0.1", port: opts.port, maxRetriesPerRequest: null };
  const worker = new Worker(QUEUE, async (job) => job.data.a + job.data.b + job.data.c, {
    connection,
    concurrency: opts.workerConcurrency,
  });
  await worker.waitUntilReady();
  process.send?.("ready");
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("disconnect", stop);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.round((p / 100) * (sorted.length - 1)))];
}

async function measure(opts) {
  const redisServer = spawnSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).stdout.trim();
  if (!redisServer) {
    console.log(JSON.stringify({ skipped: "no redis-server on PATH" }));
    return;
  }
  const home = mkdtempSync(path.join(os.tmpdir(), "taskwire-bullmq-"));
  const port = await freePort();
  const redis = spawn(redisServer, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", home], {
    stdio: "ignore",
  });
  let worker;
  try {
    await waitForPort(port);
    worker = spawn(process.execPath, [fileURLToPath(import.meta.url), "--worker", "--port", String(port), "--worker-concurrency", String(opts.workerConcurrency)], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    await once(worker, "message");
    const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
    // Finished jobs are kept a while, as waitUntilFinished reads them after their event.
    const queue = new Queue(QUEUE, { connection, defaultJobOptions: { removeOnComplete: { count: 10000 }, removeOnFail: { count: 10000 } } });
    const events = new QueueEvents(QUEUE, { connection });
    // Each waiting job listens on both.
    queue.setMaxListeners(opts.concurrency * 2 + 16);
    events.setMaxListeners(opts.concurrency * 2 + 16);
    await events.waitUntilReady();
    const one = async (i) => {
      const job = await queue.add("add", { a: i, b: 2, c: 3 });
      const sum = await job.waitUntilFinished(events, 60000);
      if (sum !== i + 5) throw new Error(`wrong sum ${sum} for ${i}`);
    };
    const loops = async (tasks, concurrency) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          for (let i = next++; i < tasks; i = next++) await one(i);
        }),
      );
    };
    // A warm-up, then the measured run.
    await loops(500, Math.min(opts.concurrency, 64));
    const cpuBefore = cpuSeconds([process.pid, worker.pid, redis.pid]);
    const started = process.hrtime.bigint();
    await loops(opts.tasks, opts.concurrency);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu = cpuSeconds([process.pid, worker.pid, redis.pid]).map((after, i) => after - cpuBefore[i]);
    const trips = [];
    for (let i = 0; i < opts.roundtrips; i++) {
      const t0 = process.hrtime.bigint();
      await one(i);
      trips.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    trips.sort((a, b) => a - b);
    const bullmq = JSON.parse(readFileSync(new URL("./node_modules/bullmq/package.json", import.meta.url))).version;
    const perTask = (s) => Math.round((s / Math.max(opts.tasks, 1)) * 1e6 * 10) / 10;
    console.log(
      JSON.stringify({
        bullmq,
        redis: spawnSync(redisServer, ["--version"], { encoding: "utf8" }).stdout.split(" ")[2]?.replace("v=", ""),
        tasks: opts.tasks,
        concurrency: opts.concurrency,
        worker_concurrency: opts.workerConcurrency,
        tasks_per_sec: Math.round((opts.tasks / seconds) * 10) / 10,
        per_task: { client_cpu_us: perTask(cpu[0]), worker_cpu_us: perTask(cpu[1]), redis_cpu_us: perTask(cpu[2]) },
        roundtrip_p50_ms: Math.round(percentile(trips, 50) * 1000) / 1000,
        roundtrip_p99_ms: Math.round(percentile(trips, 99) * 1000) / 1000,
      }),
    );
    await events.close();
    await queue.close();
  } finally {
    worker?.kill("SIGTERM");
    redis.kill("SIGTERM");
    rmSync(home, { recursive: true, force: true });
  }
}

// User plus system CPU seconds of each process so far (Linux /proc; 0 elsewhere).
function cpuSeconds(pids) {
  const tick = 100; // USER_HZ on Linux
  return pids.map((pid) => {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
      return (Number(fields[11]) + Number(fields[12])) / tick;
    } catch {
      return 0;
    }
  });
}

const opts = options(process.argv.slice(2));
if (opts.worker) {
  await work(opts);
} else {
  await measure(opts);
  process.exit(0);
}

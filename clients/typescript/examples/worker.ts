// A TypeScript worker for the example tasks: `node dist/examples/worker.js` once built
// (TASKWIRE_NATS_URL says where NATS is; the runtime is TASKWIRE_WORKER_BIN, else
// taskwire-worker on PATH). It serves examples.magic.v1.Magic/Add and some of
// examples.chaos.v1.Chaos, next to or instead of the Rust and Python workers of the same tasks.

import * as fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { type TaskContext, TaskError, Worker } from "../src";
import { ChaosDefinition, SleepArgs, SleepResult, StepsDone } from "../src/gen/examples/chaos/v1/chaos";
import { type AddArgs, MagicDefinition } from "../src/gen/examples/magic/v1/magic";

const worker = new Worker();

const RUN_LOG = process.env["TASKWIRE_RUN_LOG"];

/**
 * Milliseconds to add to performance.now() for the wall clock, taken at the moment Date.now()
 * turns to its next millisecond: microseconds since the epoch right to a few, where Date.now()
 * has only milliseconds.
 */
function wallClock(): number {
  const tick = () => {
    const before = Date.now();
    let now = before;
    while (now === before) now = Date.now();
    return now - performance.now();
  };
  // The first calls are slower (performance.now() sets itself up): only the second counts.
  tick();
  return tick();
}

const EPOCH = RUN_LOG ? wallClock() : 0;

/** Microseconds since the Unix epoch. */
function unixMicros(): number {
  return Math.floor((EPOCH + performance.now()) * 1000);
}

function logRun(event: "start" | "end", ctx: TaskContext): void {
  if (!RUN_LOG) return;
  const line = `${event} ${ctx.id} ${ctx.attempt} ${unixMicros()} ${process.pid}\n`;
  const fd = fs.openSync(RUN_LOG, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o644);
  try {
    fs.writeSync(fd, line);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * With TASKWIRE_RUN_LOG set, the start and end of every run go there, one line each
 * (`start|end <task id> <attempt> <unix micros> <pid>`), as the Rust test worker writes them:
 * the model test's record of executions.
 */
async function loggedRun<T>(ctx: TaskContext, run: () => T | Promise<T>): Promise<T> {
  logRun("start", ctx);
  try {
    return await run();
  } finally {
    logRun("end", ctx);
  }
}

/** Handlers as the methods of an object: the ones it has are served. */
const magic = {
  async add(args: AddArgs) {
    return { sum: args.arg1 + args.arg2 + args.arg3 };
  },
};

worker.addService(MagicDefinition, magic);
const chaos = worker.service(ChaosDefinition);

/** Sleeps for `args.millis`, or until the task is stopped. */
function nap(args: SleepArgs, ctx: TaskContext): Promise<void> {
  return sleep(Number(args.millis), undefined, { signal: ctx.signal });
}

chaos.sleep.handler(async (args, ctx) => {
  await loggedRun(ctx, () => nap(args, ctx));
  let label = args.label;
  if (label.startsWith("oversized-result")) {
    // A result larger than any NATS server takes, as the Rust test worker answers too.
    label = label.repeat(Math.floor((2 * 1024 * 1024) / label.length) + 1);
  }
  return { label, attempt: ctx.attempt };
});

// At most five of these run at once across all workers (max_concurrency in the proto).
chaos.limited.handler(async (args, ctx) => {
  await loggedRun(ctx, () => nap(args, ctx));
  return { label: args.label, attempt: ctx.attempt };
});

// At most 20 of these start a second across all workers (rate_limit in the proto).
chaos.paced.handler(async (args, ctx) => {
  await loggedRun(ctx, () => nap(args, ctx));
  return { label: args.label, attempt: ctx.attempt };
});

// Runs of each Flaky key on this worker, across attempts and replays.
const flakyRuns = new Map<string, number>();

chaos.flaky.handler((args, ctx) =>
  loggedRun(ctx, () => {
    let run = ctx.attempt;
    if (args.key) {
      run = (flakyRuns.get(args.key) ?? 0) + 1;
      flakyRuns.set(args.key, run);
    }
    if (args.succeedOnAttempt === 0 || run < args.succeedOnAttempt) {
      const retryAfter = args.retryAfterMs && !args.permanent ? args.retryAfterMs : undefined;
      throw new TaskError(`failing on purpose on attempt ${ctx.attempt}`, { retryable: !args.permanent, retryAfter });
    }
    return { attempt: ctx.attempt };
  }),
);

chaos.steps.handler(async (args, ctx) => {
  for (let step = 1; step <= args.steps; step++) {
    await sleep(Number(args.stepMillis), undefined, { signal: ctx.signal });
    const done = StepsDone.encode({ done: step, left: args.steps - step }).finish();
    void ctx.progress((100 * step) / args.steps, `step ${step} of ${args.steps}`, {
      type: "examples.chaos.v1.StepsDone",
      value: done,
    });
  }
  return { label: args.label, steps: args.steps };
});

chaos.spawn.handler((args, ctx) =>
  loggedRun(ctx, async () => {
    const children: string[] = [];
    for (let i = 0; i < args.count; i++) {
      const child = { millis: args.childMillis, label: `${args.label}-${i}` };
      children.push(await ctx.submitChild("examples.chaos.v1.Chaos/Sleep", SleepArgs, child));
      await sleep(Number(args.gapMillis));
    }
    if (args.failFirst && ctx.attempt === 1) throw new TaskError("spawn: the first attempt fails");
    const labels = args.wait ? (await ctx.waitForChildren()).map((child) => SleepResult.decode(child.result).label) : [];
    return { children, attempt: ctx.attempt, labels };
  }),
);

worker.run().catch((err: unknown) => {
  console.error(`worker: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});

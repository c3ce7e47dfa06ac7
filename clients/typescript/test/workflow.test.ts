// Workflows from TypeScript against a real gateway, nats-server and Rust worker.

import * as assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import * as taskwire from "../src";
import { Numbers, ScaleArgs, SlowArgs, SplitArgs, Total } from "../src/gen/examples/flow/v1/flow";
import { StepState, WorkflowState } from "../src/gen/taskwire/v1/workflows";
import { startSystem, type System } from "./system";

const SUM = "examples.flow.v1.Flow/Sum";
const DOUBLE = "examples.flow.v1.Flow/Double";
const SCALE = "examples.flow.v1.Flow/Scale";
const COLLECT = "examples.flow.v1.Flow/Collect";
const SPLIT = "examples.flow.v1.Flow/Split";

describe("workflows against a real gateway", { timeout: 180_000 }, () => {
  let system: System;
  let client: taskwire.Client;

  before(async () => {
    system = await startSystem();
    client = new taskwire.Client(system.address);
  });

  after(async () => {
    client?.close();
    await system?.stop();
  });

  it("passes each result of a chain on", async () => {
    const id = await taskwire.submitWorkflow(
      client,
      taskwire.chain(
        taskwire.step(SUM, Numbers.encode({ values: [1n, 2n, 3n] }).finish()),
        taskwire.step(DOUBLE),
        taskwire.step(SCALE, ScaleArgs.encode({ value: 0n, factor: 10n }).finish()).fields({ total: "value" }),
      ),
    );
    assert.equal(Total.decode(await taskwire.workflowResult(client, id)).total, 120n);
    const info = await taskwire.getWorkflow(client, id);
    assert.equal(info.state, WorkflowState.WORKFLOW_STATE_SUCCEEDED);
    assert.deepEqual(new Set(info.steps.map((s) => s.info?.traceId)), new Set([info.traceId]));
  });

  it("runs a chord and a map", async () => {
    const members = [1n, 2n, 3n].map((value) => taskwire.step(SCALE, ScaleArgs.encode({ value, factor: 2n }).finish()));
    const chord = await taskwire.submitWorkflow(client, taskwire.chord(members, taskwire.step(COLLECT), "totals"));
    const total = Total.decode(await taskwire.workflowResult(client, chord));
    assert.deepEqual([total.total, total.count], [12n, 3n]);
    const map = await taskwire.submitWorkflow(
      client,
      taskwire.chain(
        taskwire.step(SPLIT, SplitArgs.encode({ count: 50n, limit: 0n }).finish()),
        taskwire.step(DOUBLE).map("parts"),
        taskwire.step(COLLECT).collect("totals"),
      ),
    );
    const mapped = Total.decode(await taskwire.workflowResult(client, map));
    assert.deepEqual([mapped.total, mapped.count], [2450n, 50n]);
    const info = await taskwire.getWorkflow(client, map);
    assert.deepEqual([info.steps[1].elements, info.steps[1].elementsSucceeded], [50, 50]);
  });

  it("refuses steps that do not fit, and names the step", async () => {
    await assert.rejects(
      taskwire.submitWorkflow(
        client,
        taskwire.chain(taskwire.step(SUM, Numbers.encode({ values: [1n] }).finish()), taskwire.step(SCALE).named("scale")),
      ),
      (err: Error) => err.message.includes('"scale"') && err.message.includes("examples.flow.v1.ScaleArgs"),
    );
  });

  it("fails a workflow whose step fails, skipping the rest", async () => {
    const id = await taskwire.submitWorkflow(
      client,
      taskwire.chain(
        taskwire.step(SUM, Numbers.encode({ values: [100n] }).finish()),
        taskwire.step(DOUBLE, Total.encode({ total: 0n, count: 0n, limit: 5n }).finish()).fields({ total: "total" }).named("double"),
        taskwire.step(DOUBLE).named("again"),
      ),
    );
    await assert.rejects(taskwire.workflowResult(client, id), taskwire.TaskFailed);
    const info = await taskwire.getWorkflow(client, id);
    assert.equal(info.state, WorkflowState.WORKFLOW_STATE_FAILED);
    assert.equal(info.failedStep, "double");
    assert.equal(info.steps[2].state, StepState.STEP_STATE_SKIPPED);
  });

  it("cancels a workflow", async () => {
    const id = await taskwire.submitWorkflow(
      client,
      taskwire.chain(taskwire.step("examples.flow.v1.Flow/Slow", SlowArgs.encode({ millis: 60_000n, total: 1n }).finish()), taskwire.step(DOUBLE)),
    );
    const cancelled = await taskwire.cancelWorkflow(client, id);
    assert.equal(cancelled.state, WorkflowState.WORKFLOW_STATE_CANCELLED);
  });
});

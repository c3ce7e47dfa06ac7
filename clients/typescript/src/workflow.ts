// Workflows: steps that feed each other, built here and checked by the gateway.
//
//     import { chain, chord, step, submitWorkflow, waitWorkflow } from "@taskwire/client";
//     import { Numbers, ScaleArgs, Total } from "@taskwire/client/gen/examples/flow/v1/flow";
//
//     // sum(1, 2, 3), doubled, then scaled by 10: the doubled total becomes ScaleArgs.value.
//     const id = await submitWorkflow(client, chain(
//       step("examples.flow.v1.Flow/Sum", Numbers.encode({ values: [1n, 2n, 3n] }).finish()),
//       step("examples.flow.v1.Flow/Double"),
//       step("examples.flow.v1.Flow/Scale", ScaleArgs.encode({ value: 0n, factor: 10n }).finish()).fields({ total: "value" }),
//     ));
//     const info = await waitWorkflow(client, id, 30);
//     Total.decode(info.steps[2].info!.result).total === 120n;

import type { Client } from "./client";
import { TaskFailed } from "./errors";
import { type Seconds, type SubmitOptions, duration, submitOptions } from "./options";
import {
  type Step as StepMessage,
  type Workflow,
  type WorkflowInfo,
  WorkflowState,
  WorkflowsDefinition,
} from "./gen/taskwire/v1/workflows";

/** One step: a task, its arguments (protobuf bytes), and how it takes the results before it. */
export class Step {
  private readonly mapping: Record<string, string> = {};
  private collectInto = "";
  private forEach = "";
  private stepName = "";

  constructor(
    readonly task: string,
    readonly args?: Uint8Array,
    readonly options: SubmitOptions = {},
  ) {}

  /** Copies fields of the result it takes to its input: `fields({ total: "value" })`. */
  fields(mapping: Record<string, string>): this {
    Object.assign(this.mapping, mapping);
    return this;
  }

  /** The repeated field of its input that takes the results of every step before it. */
  collect(field: string): this {
    this.collectInto = field;
    return this;
  }

  /** A map: this task once per element of the repeated field `field` of the result it takes. */
  map(field: string): this {
    this.forEach = field;
    return this;
  }

  /** Its name in the workflow (one is made from the task otherwise). */
  named(name: string): this {
    this.stepName = name;
    return this;
  }

  /** @internal */
  message(name: string, after: string[]): StepMessage {
    return {
      name: this.stepName || name,
      task: this.task,
      after,
      argsProto: this.args === undefined ? undefined : Buffer.from(this.args),
      argsJson: undefined,
      fields: Object.entries(this.mapping).map(([from, to]) => ({ from, to })),
      collect: this.collectInto,
      options: Object.keys(this.options).length === 0 ? undefined : submitOptions(this.options),
      forEach: this.forEach,
    };
  }

  /** @internal */
  get isMap(): boolean {
    return this.forEach !== "";
  }

  /** @internal */
  get collects(): boolean {
    return this.collectInto !== "";
  }
}

/** A step running `task` with `args` (its input message as protobuf bytes, for a first step). */
export function step(task: string, args?: Uint8Array, options?: SubmitOptions): Step {
  return new Step(task, args, options);
}

type Part = Step | Canvas;

/** Steps and what each comes after. */
export abstract class Canvas {
  private failureStep?: Step;

  /** The step submitted when the workflow fails; its task takes a taskwire.v1.WorkflowFailure. */
  onFailure(step: Step): this {
    this.failureStep = step;
    return this;
  }

  /** @internal Adds this canvas after `after`; the names nothing comes after yet. */
  abstract into(steps: StepMessage[], after: string[], maps: Set<string>): string[];

  /** The workflow as the gateway takes it. */
  workflow(): Workflow {
    const steps: StepMessage[] = [];
    this.into(steps, [], new Set());
    return {
      steps,
      letRunningFinish: false,
      onFailure: this.failureStep?.message("on-failure", []),
    };
  }
}

function add(part: Part, steps: StepMessage[], after: string[], maps: Set<string>): string[] {
  if (part instanceof Canvas) return part.into(steps, after, maps);
  const short = part.task.split("/").pop()?.toLowerCase() ?? "step";
  const message = part.message(`${short}-${steps.length}`, after);
  if (!part.collects && !part.isMap && (after.length > 1 || after.some((a) => maps.has(a)))) {
    throw new TypeError(
      `${part.task} comes after ${after.length > 1 ? "several steps" : "a map"}: name the repeated field of its input that takes their results with .collect(...)`,
    );
  }
  steps.push(message);
  if (part.isMap) maps.add(message.name);
  return [message.name];
}

class Chain extends Canvas {
  constructor(private readonly parts: Part[]) {
    super();
  }
  into(steps: StepMessage[], after: string[], maps: Set<string>): string[] {
    let last = after;
    for (const part of this.parts) last = add(part, steps, last, maps);
    return last;
  }
}

class Group extends Canvas {
  constructor(private readonly parts: Part[]) {
    super();
  }
  into(steps: StepMessage[], after: string[], maps: Set<string>): string[] {
    return this.parts.flatMap((part) => add(part, steps, after, maps));
  }
}

/** Each part after the one before it, taking its result(s). */
export function chain(...parts: Part[]): Canvas {
  return new Chain(parts);
}

/** Parts side by side; what comes after takes all their results, in order. */
export function group(...parts: Part[]): Canvas {
  return new Group(parts);
}

/** The header's parts side by side, then `callback` with all their results in its `field`. */
export function chord(header: Part[], callback: Step, field: string): Canvas {
  return new Chain([new Group(header), callback.collect(field)]);
}

/** Submits a workflow (a canvas, or the message itself); its id. */
export async function submitWorkflow(
  client: Client,
  workflow: Canvas | Workflow,
  { idempotencyKey = "" }: { idempotencyKey?: string } = {},
): Promise<string> {
  const message = workflow instanceof Canvas ? workflow.workflow() : workflow;
  const response = await client.unary(WorkflowsDefinition, "submit", {
    workflow: message,
    idempotencyKey,
  });
  return response.workflowId;
}

/** The workflow and each step's state now. */
export function getWorkflow(client: Client, workflowId: string): Promise<WorkflowInfo> {
  return client.unary(WorkflowsDefinition, "get", { workflowId, includeJson: false });
}

/** Waits up to `timeout` seconds (at most 300) for the workflow to end; TimeoutError after. */
export function waitWorkflow(client: Client, workflowId: string, timeout: Seconds = 30): Promise<WorkflowInfo> {
  return client.unary(
    WorkflowsDefinition,
    "wait",
    { workflowId, timeout: duration(timeout, "timeout"), includeJson: false },
    { timeout: timeout + 5 },
  );
}

/** Cancels a workflow: no further step starts; running ones are told to stop. */
export function cancelWorkflow(client: Client, workflowId: string): Promise<WorkflowInfo> {
  return client.unary(WorkflowsDefinition, "cancel", { workflowId });
}

/** The result of the workflow's last step, once it ended; TaskFailed when it did not succeed. */
export async function workflowResult(client: Client, workflowId: string, timeout: Seconds = 30): Promise<Uint8Array> {
  const info = await waitWorkflow(client, workflowId, timeout);
  if (info.state !== WorkflowState.WORKFLOW_STATE_SUCCEEDED) {
    const at = info.failedStep ? ` at step ${info.failedStep}` : "";
    throw new TaskFailed(workflowId, `workflow ended ${WorkflowState[info.state]}${at}: ${info.error?.message ?? ""}`, false, 0);
  }
  const last = info.steps.filter((s) => !s.onFailure).pop();
  return last?.info?.result ?? new Uint8Array();
}

// taskwire for TypeScript: submit tasks to a taskwire gateway and follow them, and serve tasks.
//
//     import { Client, service } from "@taskwire/client";
//     import { MagicDefinition } from "@taskwire/client/gen/examples/magic/v1/magic";
//
//     const client = new Client("127.0.0.1:50051");
//     const magic = service(MagicDefinition, client);
//     const handle = await magic.add({ arg1: 1n, arg2: 2n, arg3: 3n });
//     (await handle.get({ timeout: 5 })).sum === 6n;
//
//     import { Worker } from "@taskwire/client";
//
//     const worker = new Worker({ natsUrl: "nats://127.0.0.1:4222" });
//     worker.service(MagicDefinition).add.handler(async (args) => ({ sum: args.arg1 + args.arg2 + args.arg3 }));
//     await worker.run();

export {
  Client,
  type ClientOptions,
  type CallOptions,
  type Codec,
  type Decoder,
  isFinal,
  type MethodDefinition,
  outcome,
  RAW,
  type RequestOf,
  type ResponseOf,
  type ServiceDefinition,
  type StateName,
  stateName,
  TaskHandle,
  taskFilter,
  type TaskQuery,
  type TlsOptions,
  type UnaryMethodsOf,
} from "./client";
export {
  ASYNC_METADATA,
  DESCRIPTOR_HASH_METADATA,
  type ErrorInfo,
  errorInfoOf,
  IDEMPOTENCY_KEY_METADATA,
  TASK_ID_METADATA,
  taskError,
  taskIdOf,
} from "./direct";
export { GatewayError, TaskCancelled, TaskExpired, TaskFailed, TimeoutError } from "./errors";
export { type PriorityName, type Seconds, type SubmitOptions, submitOptions } from "./options";
export { canonicalText, descriptorHash, type Schema } from "./schema";
export { service, type TaskMethod, type TaskService } from "./service";
export { type TaskInfo, TaskState } from "./gen/taskwire/v1/tasks";
export {
  type Handler,
  type ProgressDetails,
  type RunOptions,
  runtimeBinary,
  type ServiceHandlers,
  type ServiceImplementation,
  type ServiceSchema,
  TASK_METADATA,
  TaskContext,
  TaskError,
  type TaskHandlers,
  WaitingForChildren,
  Worker,
  WorkerExited,
  type WorkerOptions,
} from "./worker";
export { descriptorSet, type ProtoMetadata } from "./descriptors";
export {
  Canvas,
  Step,
  cancelWorkflow,
  chain,
  chord,
  getWorkflow,
  group,
  step,
  submitWorkflow,
  waitWorkflow,
  workflowResult,
} from "./workflow";

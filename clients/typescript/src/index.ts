// taskwire for TypeScript: submit tasks to a taskwire gateway and follow them.
//
//     import { Client, service } from "@taskwire/client";
//     import { MagicDefinition } from "@taskwire/client/gen/examples/magic/v1/magic";
//
//     const client = new Client("127.0.0.1:50051");
//     const magic = service(MagicDefinition, client);
//     const handle = await magic.add({ arg1: 1n, arg2: 2n, arg3: 3n });
//     (await handle.get({ timeout: 5 })).sum === 6n;

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

// Calling a task by its own method path: the gateway serves every registered task as a unary
// rpc (`/examples.magic.v1.Magic/Add` takes AddArgs and answers AddResult), so any generated
// gRPC client works. These are the metadata names it reads and writes, and the decoding of the
// status it answers with when the task did not succeed.

import { BinaryReader } from "@bufbuild/protobuf/wire";
import type { Metadata, ServiceError } from "@grpc/grpc-js";

import { TaskCancelled, TaskExpired, TaskFailed } from "./errors";

/** Request metadata: `true` answers at once with an empty output message and the task id. */
export const ASYNC_METADATA = "taskwire-async";
/** Response metadata (headers, and trailers of a failure) with the task id. */
export const TASK_ID_METADATA = "taskwire-task-id";
/** Request metadata with an idempotency key. */
export const IDEMPOTENCY_KEY_METADATA = "taskwire-idempotency-key";
/**
 * Request metadata with the task's schema fingerprint (`descriptorHash(protoMetadata, task)`,
 * or a typed stub's `descriptorHash`): FAILED_PRECONDITION when the workers registered another.
 */
export const DESCRIPTOR_HASH_METADATA = "taskwire-descriptor-hash";

const STATUS_DETAILS = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/** The google.rpc.ErrorInfo of a status, as far as taskwire uses it. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** The task id in a direct call's response metadata, if the gateway sent one. */
export function taskIdOf(metadata: Metadata): string | undefined {
  const value = metadata.get(TASK_ID_METADATA)[0];
  return typeof value === "string" && value !== "" ? value : undefined;
}

// google.rpc.Status: 1 code, 2 message, 3 repeated google.protobuf.Any details.
// google.protobuf.Any: 1 type_url, 2 value.
interface Any {
  typeUrl: string;
  value: Uint8Array;
}

function statusDetails(bytes: Uint8Array): Any[] {
  const reader = new BinaryReader(bytes);
  const details: Any[] = [];
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field !== 3) {
      reader.skip(wireType);
      continue;
    }
    const any = new BinaryReader(reader.bytes());
    const detail: Any = { typeUrl: "", value: new Uint8Array() };
    while (any.pos < any.len) {
      const [anyField, anyWireType] = any.tag();
      if (anyField === 1) detail.typeUrl = any.string();
      else if (anyField === 2) detail.value = any.bytes();
      else any.skip(anyWireType);
    }
    details.push(detail);
  }
  return details;
}

// google.rpc.ErrorInfo: 1 reason, 2 domain, 3 map<string, string> metadata.
function errorInfo(bytes: Uint8Array): ErrorInfo {
  const reader = new BinaryReader(bytes);
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) info.reason = reader.string();
    else if (field === 2) info.domain = reader.string();
    else if (field === 3) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [entryField, entryWireType] = entry.tag();
        if (entryField === 1) key = entry.string();
        else if (entryField === 2) value = entry.string();
        else entry.skip(entryWireType);
      }
      info.metadata[key] = value;
    } else reader.skip(wireType);
  }
  return info;
}

/** The google.rpc.ErrorInfo in an error's `grpc-status-details-bin` trailer, if it has one. */
export function errorInfoOf(err: ServiceError): ErrorInfo | undefined {
  const raw = err.metadata?.get(STATUS_DETAILS)[0];
  if (!(raw instanceof Uint8Array)) return undefined;
  const detail = statusDetails(raw).find((d) => d.typeUrl === ERROR_INFO_TYPE);
  return detail === undefined ? undefined : errorInfo(detail.value);
}

/**
 * The task error of a direct call that the task itself failed (ErrorInfo reason TASK_FAILED):
 * TaskFailed, TaskCancelled or TaskExpired with the task's message, retryable and attempt.
 * Undefined when the call failed for another reason (a bad argument, an unknown task, ...).
 */
export function taskError(err: unknown): TaskFailed | undefined {
  if (!(err instanceof Error) || !("metadata" in err)) return undefined;
  const info = errorInfoOf(err as ServiceError);
  if (info === undefined || info.reason !== "TASK_FAILED" || info.domain !== "taskwire") return undefined;
  const meta = info.metadata;
  const kind = meta["state"] === "cancelled" ? TaskCancelled : meta["state"] === "expired" ? TaskExpired : TaskFailed;
  const message = meta["error"] || meta["state"] || "failed";
  return new kind(meta["task_id"] ?? "", message, meta["retryable"] === "true", Number(meta["attempt"] ?? 0));
}

// The errors of the client: a failed gateway call, and a task that did not succeed.

import { type ServiceError, status as Status } from "@grpc/grpc-js";

/** A gateway call that failed: `code` is the gRPC status code, `details` its message. */
export class GatewayError extends Error {
  override name = "GatewayError";

  constructor(
    readonly code: Status,
    readonly details: string,
  ) {
    super(`${(Status[code] ?? `status ${code}`).toLowerCase()}: ${details}`);
  }
}

/** The task had no result within the time waited; it may still finish. */
export class TimeoutError extends GatewayError {
  override name = "TimeoutError";
}

/**
 * The task failed for good: `message` is its own error, `retryable` whether it said a retry
 * could succeed, `attempt` the attempt that failed last.
 */
export class TaskFailed extends Error {
  override name = "TaskFailed";

  constructor(
    readonly taskId: string,
    message: string,
    readonly retryable: boolean,
    readonly attempt: number,
  ) {
    super(message);
  }
}

/** The task was cancelled. */
export class TaskCancelled extends TaskFailed {
  override name = "TaskCancelled";
}

/** The task was not started before its expiry time; it never ran. */
export class TaskExpired extends TaskFailed {
  override name = "TaskExpired";
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number" && "details" in err;
}

/** The one place a gRPC error becomes ours; anything else passes through unchanged. */
export function fromRpc(err: unknown): unknown {
  if (!isServiceError(err)) return err;
  if (err.code === Status.DEADLINE_EXCEEDED) return new TimeoutError(err.code, err.details);
  return new GatewayError(err.code, err.details);
}

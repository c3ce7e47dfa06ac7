// Submit options as a plain object, turned into a taskwire.v1.SubmitOptions.

import type { Duration } from "./gen/google/protobuf/duration";
import { Priority, type SubmitOptions as SubmitOptionsMessage } from "./gen/taskwire/v1/tasks";

/** A length of time in seconds; fractions are kept to the nanosecond. */
export type Seconds = number;

export type PriorityName = "high" | "normal" | "low";

/** How a task is submitted; every field is optional. */
export interface SubmitOptions {
  /** Submitting again with the same key within the broker's duplicate window (2 minutes)
   * returns the same task id and stores nothing new. */
  idempotencyKey?: string;
  /** Overrides the task's declared max_attempts (1 to 100). */
  maxAttempts?: number;
  /** Overrides the time limit of one attempt. */
  timeout?: Seconds;
  /** Override the task's retry delays. */
  backoffInitial?: Seconds;
  backoffMax?: Seconds;
  /** Run no earlier than this long after submit (Celery's countdown). */
  countdown?: Seconds;
  /** Run no earlier than this time (Celery's eta; the gateway's not_before). */
  eta?: Date;
  /** Which tasks of a type start first when there is a backlog. */
  priority?: PriorityName;
  /** A task not started this long after submit (or after its eta) never runs: it expires. */
  ttl?: Seconds;
  /** A task not started by this time never runs: it expires. */
  expires?: Date;
  /** How long the result is kept. */
  resultTtl?: Seconds;
  /**
   * The task's schema fingerprint (64 lower-case hex digits): the gateway refuses the
   * submission with FAILED_PRECONDITION when the workers registered another. Typed stubs send
   * theirs; empty or left out, nothing is checked.
   */
  descriptorHash?: string;
}

const PRIORITIES: Record<PriorityName, Priority> = {
  high: Priority.PRIORITY_HIGH,
  normal: Priority.PRIORITY_NORMAL,
  low: Priority.PRIORITY_LOW,
};

const NANOS_PER_SECOND = 1_000_000_000n;

/** `value` seconds as a protobuf Duration; `what` names the option in the error. */
export function duration(value: Seconds, what = "a duration"): Duration {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${what} must be a number of seconds, 0 or more; got ${String(value)}`);
  }
  const nanos = BigInt(Math.round(value * 1e9));
  return { seconds: nanos / NANOS_PER_SECOND, nanos: Number(nanos % NANOS_PER_SECOND) };
}

function optionalDuration(value: Seconds | undefined, what: string): Duration | undefined {
  return value === undefined ? undefined : duration(value, what);
}

function optionalDate(value: Date | undefined, what: string): Date | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new RangeError(`${what} must be a valid Date; got ${String(value)}`);
  }
  return value;
}

function priority(value: PriorityName | undefined): Priority {
  if (value === undefined) return Priority.PRIORITY_UNSPECIFIED;
  if (!Object.hasOwn(PRIORITIES, value)) {
    throw new RangeError(`priority ${JSON.stringify(value)} is not one of "high", "normal", "low"`);
  }
  return PRIORITIES[value];
}

function maxAttempts(value: number | undefined): number {
  if (value === undefined) return 0;
  if (!Number.isInteger(value) || value < 1 || value > 100) {
    throw new RangeError(`maxAttempts must be a whole number from 1 to 100; got ${String(value)}`);
  }
  return value;
}

/** The `descriptorHash` option as SubmitRequest.descriptor_hash; throws RangeError when it is not one. */
export function descriptorHashOption(options: SubmitOptions = {}): string {
  const value = options.descriptorHash;
  if (value === undefined || value === "") return "";
  if (typeof value !== "string" || !/^[0-9a-f]{64}$/.test(value)) {
    throw new RangeError(`descriptorHash must be 64 lower-case hex digits; got ${JSON.stringify(value)}`);
  }
  return value;
}

/** The gateway's SubmitOptions for `options`; throws RangeError on a value it would refuse. */
export function submitOptions(options: SubmitOptions = {}): SubmitOptionsMessage {
  return {
    idempotencyKey: options.idempotencyKey ?? "",
    maxAttempts: maxAttempts(options.maxAttempts),
    timeout: optionalDuration(options.timeout, "timeout"),
    backoffInitial: optionalDuration(options.backoffInitial, "backoffInitial"),
    backoffMax: optionalDuration(options.backoffMax, "backoffMax"),
    notBefore: optionalDate(options.eta, "eta"),
    countdown: optionalDuration(options.countdown, "countdown"),
    priority: priority(options.priority),
    expiresAt: optionalDate(options.expires, "expires"),
    ttl: optionalDuration(options.ttl, "ttl"),
    resultTtl: optionalDuration(options.resultTtl, "resultTtl"),
  };
}

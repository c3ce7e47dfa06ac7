// Typed stubs of task services, built from a generated service definition.

import type { Client, Codec, Decoder, MethodDefinition, ServiceDefinition, TaskHandle } from "./client";
import { protoMetadata as generated } from "./gen/schemas";
import type { SubmitOptions } from "./options";
import { descriptorHash, type Schema } from "./schema";

/** A message type that can be made from a partial object (every generated message can). */
interface Buildable<T> extends Codec<T> {
  fromPartial(object: never): T;
}

type InputOf<M> = M extends { requestType: Buildable<infer I> } ? I : never;
type PartialInputOf<M> = M extends { requestType: { fromPartial(object: infer P): unknown } } ? P : never;
type OutputOf<M> = M extends { responseType: Decoder<infer O> } ? O : never;

/** One task of a service: call it with its input (fields left out are zero) and submit options. */
export interface TaskMethod<P, O> {
  (args?: P, options?: SubmitOptions): Promise<TaskHandle<O>>;
  /** The full task name, e.g. "examples.magic.v1.Magic/Add". */
  readonly task: string;
  /**
   * The task's schema fingerprint, sent with every submission so that the gateway refuses it
   * (FAILED_PRECONDITION) when the workers were built from another version of the proto that
   * does not fit this one;
   * undefined when the stub has no descriptors of the service (see `service()`).
   */
  readonly descriptorHash: string | undefined;
}

/** The tasks of a service, by their generated (camelCase) rpc names. */
export type TaskService<S extends ServiceDefinition> = {
  readonly [K in keyof S["methods"] as S["methods"][K] extends { requestStream: false; responseStream: false }
    ? K
    : never]: TaskMethod<PartialInputOf<S["methods"][K]>, OutputOf<S["methods"][K]>>;
};

function taskMethod(client: Client, service: ServiceDefinition, method: MethodDefinition, schema: Schema | undefined) {
  const task = `${service.fullName}/${method.name}`;
  const hash = schema === undefined ? undefined : descriptorHash(schema, task);
  const input = method.requestType as Buildable<InputOf<typeof method>>;
  const submit = (args: unknown = {}, options: SubmitOptions = {}) => {
    const message = input.fromPartial(args as never);
    const withHash = { ...options, descriptorHash: options.descriptorHash ?? hash };
    return client.submit(task, input.encode(message).finish(), withHash, method.responseType);
  };
  return Object.assign(submit, { task, descriptorHash: hash });
}

/** The generated type `fullName` (".examples.magic.v1.AddArgs") of a schema or of the files it imports. */
function reference(schema: Schema, fullName: string, seen = new Set<Schema>()): unknown {
  if (seen.has(schema)) return undefined;
  seen.add(schema);
  const own = schema.references?.[fullName];
  if (own !== undefined) return own;
  for (const dependency of schema.dependencies ?? []) {
    const found = reference(dependency, fullName, seen);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * Whether `schema` is the generated module of `definition`: its file declares the service, and
 * every rpc's request and response types are the very objects the definition holds (another
 * build of the same proto has other objects, and perhaps other fields).
 */
export function describes(schema: Schema, definition: ServiceDefinition): boolean {
  const file = schema.fileDescriptor;
  const prefix = file.package === "" ? "" : `${file.package}.`;
  const declared = file.service.find((s) => prefix + s.name === definition.fullName);
  if (declared === undefined) return false;
  const methods = Object.values(definition.methods);
  return declared.method.every((rpc) => {
    const method = methods.find((m) => m.name === rpc.name);
    if (method === undefined) return false;
    return reference(schema, rpc.inputType) === method.requestType && reference(schema, rpc.outputType) === method.responseType;
  });
}

/** The protoMetadata of the module generated into this package that `definition` comes from. */
export function generatedSchema(definition: ServiceDefinition): (typeof generated)[number] | undefined {
  return generated.find((candidate) => describes(candidate, definition));
}

/**
 * The tasks of a generated service definition as methods that submit them:
 *
 *     const magic = service(MagicDefinition, client);
 *     const handle = await magic.add({ arg1: 1n, arg2: 2n, arg3: 3n }, { priority: "high" });
 *     (await handle.get()).sum === 6n;
 *
 * Each submission carries the task's schema fingerprint (`magic.add.descriptorHash`), computed
 * from the descriptors of the service's generated module: `schema` is that module's
 * `protoMetadata` (ts-proto's outputSchema=true). It may be left out for the services generated
 * into this package (`@taskwire/client/gen/...`); without it, for other services, nothing is
 * sent and the gateway does not check.
 */
export function service<S extends ServiceDefinition>(definition: S, client: Client, schema?: Schema): TaskService<S> {
  const descriptors = schema ?? generatedSchema(definition);
  const methods: Record<string, unknown> = {};
  for (const [key, method] of Object.entries(definition.methods)) {
    if (!method.requestStream && !method.responseStream) {
      methods[key] = taskMethod(client, definition, method, descriptors);
    }
  }
  const known = Object.keys(methods).sort().join(", ");
  // A name that is not a task fails with what there is, rather than as "not a function".
  return new Proxy(methods, {
    get(target, name, receiver) {
      if (typeof name === "string" && !(name in target) && name !== "then" && name !== "toJSON") {
        throw new TypeError(`${definition.fullName} has no task ${name}; it has ${known}`);
      }
      return Reflect.get(target, name, receiver);
    },
  }) as TaskService<S>;
}

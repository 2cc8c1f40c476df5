// zod, for the image schema and the kinds' state schemas, loaded when the
// first schema is built, and every schema built when first used: making
// them all at start-up (zod itself, then ~100 object schemas) was ~20 ms
// of every command, and a checkpoint, which only writes images, uses none.
import type * as Zod from 'zod';

type Z = typeof Zod.z;
let real: Z | undefined;

function load(): Z {
  // zod's own functions by name: the bundled dist/zod.js holds only those
  // stasis calls (build/zod-entry.mjs); zod's `z` would hold them all.
  real = require('zod') as Z;
  // Both are read when a schema is made, so set before any exists.
  // Records are JSON.parse'd, which never makes a reference cycle: zod's
  // support for cyclic input (its memoizer walks each schema's whole tree
  // on first parse to learn whether it can recurse) cost a restart ~8-11
  // ms. zod installs its own unless one is set: this one does nothing.
  real.config({ memoizer: { attach() {}, guard() {}, alloc: (_inst, _payload, empty) => empty } });
  if (process.env.STASIS_ZOD_JIT !== '1') {
    // One image is parsed once: zod's code generation for each object
    // schema (new Function per shape) costs more than it ever saves here.
    real.config({ jitless: true });
  }
  return real;
}

/** zod's `z`, loaded on first use. */
export const z: Z = new Proxy({} as Z, { get: (_, k) => Reflect.get(real ?? load(), k) });

// The types of `z` that stasis names (z.infer<typeof X> and friends).
// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace z {
  export type infer<T> = Zod.z.infer<T>;
  export type ZodType<O = unknown> = Zod.z.ZodType<O>;
  export type ZodRawShape = Zod.z.ZodRawShape;
  export type ZodObject<S extends Zod.z.ZodRawShape> = Zod.z.ZodObject<S>;
  export type ZodLiteral<T extends Zod.z.core.util.Literal> = Zod.z.ZodLiteral<T>;
  export type ZodError = Zod.z.ZodError;
}

/**
 * A schema made by `make` on first use. Another schema may hold it (it is
 * made when that one is), and it is used as the schema itself.
 */
export function lazySchema<T extends object>(make: () => T): T {
  let made: T | undefined;
  const it = () => (made ??= make());
  return new Proxy({} as T, {
    get: (_, k) => Reflect.get(it(), k),
    has: (_, k) => Reflect.has(it(), k),
    set: (_, k, v) => Reflect.set(it(), k, v),
    getPrototypeOf: () => Reflect.getPrototypeOf(it()),
    ownKeys: () => Reflect.ownKeys(it()),
    getOwnPropertyDescriptor: (_, k) => {
      const d = Reflect.getOwnPropertyDescriptor(it(), k);
      return d && { ...d, configurable: true };
    },
  });
}

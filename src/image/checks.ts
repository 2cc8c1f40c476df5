// The image schema's refinements, by name. The build compiles the schema
// into plain validators (build/gen-validators.js), which cannot call a
// closure made inside a schema: each refinement is made here, at module
// load, under a name the generated code calls it by. This module imports
// nothing, so any schema module may use it.

/** A refinement's predicate; `args` are fixed where the schema is made. */
type Predicate = (v: never, ...args: never[]) => boolean;

/** Every named predicate, for the generated validators. */
export const CHECKS: Record<string, Predicate> = Object.create(null);

/** What the build reads off a refinement to call it by name. */
export interface Named { checkName: string; checkArgs: unknown[] }

/**
 * A predicate named for the generated validators; `refine(check(...))`
 * where it takes no arguments, `refine(withArgs(check, ...))` otherwise.
 */
export function check<V, A extends unknown[] = []>(name: string, fn: (v: V, ...args: A) => boolean): ((v: V, ...args: A) => boolean) & Named {
  if (CHECKS[name]) throw new Error(`refinement ${name} named twice`);
  CHECKS[name] = fn as unknown as Predicate;
  return Object.assign(fn, { checkName: name, checkArgs: [] });
}

/** The named predicate with its other arguments fixed (JSON values: the build writes them into its code). */
export function withArgs<V, A extends unknown[]>(fn: ((v: V, ...args: A) => boolean) & Named, ...args: A): ((v: V) => boolean) & Named {
  return Object.assign((v: V) => fn(v, ...args), { checkName: fn.checkName, checkArgs: args });
}

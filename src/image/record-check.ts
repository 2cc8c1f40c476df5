// A record's JSON value checked by the validators the build generated from
// the image schema (build/gen-validators.js): no zod to load and no schema
// to make before a restart can begin (~20 ms of a small one). A value they
// refuse goes through zod, which words the refusal.
import { isDeepStrictEqual } from 'node:util';
import type { z } from './zod';
import { issueText } from './fields';

/** The schemas the build compiles (its ENTRIES). */
export type CompiledSchema = 'ImageProcess' | 'ImageZombie' | 'PipesRecord' | 'MemfdsRecord' | 'ObjectTables' | 'EndRecord' | 'PagesHeader';
type Generated = { INVALID: symbol } & Record<CompiledSchema, (v: unknown) => unknown>;

let generated: Generated | null | undefined;

function validators(): Generated | null {
  if (generated === undefined) {
    try {
      generated = require('./validators') as Generated;
    } catch {
      generated = null; // built by tsc alone: zod checks everything
    }
  }
  return generated;
}

export type Checked<T> = { ok: true; data: T } | { ok: false; why: string };

/**
 * `value` checked against `schema`, whose compiled form is `name`. With
 * STASIS_CROSSCHECK_VALIDATORS=1 (the test suite) zod checks every value
 * too, and any difference between the two answers is an internal error.
 */
export function checkValue<S extends z.ZodType>(name: CompiledSchema, schema: S, value: unknown): Checked<z.infer<S>> {
  const g = validators();
  const fast = g ? g[name](value) : undefined;
  const cross = !!process.env.STASIS_CROSSCHECK_VALIDATORS;
  if (g && fast !== g.INVALID && !cross) return { ok: true, data: fast as z.infer<S> };
  const got = schema.safeParse(value);
  if (g && cross && (got.success !== (fast !== g.INVALID) || (got.success && !isDeepStrictEqual(fast, got.data)))) {
    throw new Error(`the validator generated for ${name} and zod disagree on ${JSON.stringify(value).slice(0, 2000)}: zod ${got.success ? 'accepts it' : `refuses it (${issueText(got.error)})`}`);
  }
  return got.success ? { ok: true, data: got.data } : { ok: false, why: issueText(got.error) };
}

// The part of zod stasis uses, by name, so that the bundler leaves the rest
// out (JSON Schema, codecs, coercion, ISO formats...): dist/zod.js went
// from 507 to 196 KB, and requiring it from the code cache from 10 to 7 ms
// of each restart. src/image/zod.ts's `z` reads only these.
export { object, array, number, int, string, boolean, literal, tuple, union, discriminatedUnion, config } from 'zod';
export { enum } from 'zod';

// Bounded building blocks for the image schema (schema.ts) and for the
// state schemas kind modules export. Images are untrusted input: every
// number has a range, every string a length, every array a count.
// This module imports nothing of stasis, so any module may use it.
import { z, lazySchema } from './zod';
import { check, withArgs } from './checks';

export const PAGE_SIZE = 4096;
/** End of the x86-64 user address space (4-level paging), exclusive. */
export const USER_END = 0x7ffffffff000;
/** PID_MAX_LIMIT: no pid or tid is larger. */
export const PID_MAX = 4194304;
/** NR_OPEN: no fd number reaches it. */
export const FD_MAX = 1 << 20;
export const PATH_MAX = 4096;

/** An integer in [min, max]. */
export const int = (min: number, max: number) => z.int().min(min).max(max);
export const u32 = lazySchema(() => int(0, 0xffffffff));
export const i32 = lazySchema(() => int(-0x80000000, 0x7fffffff));
/** A safe non-negative integer (inode numbers, sizes, offsets). */
export const count = lazySchema(() => int(0, Number.MAX_SAFE_INTEGER));
export const pid = lazySchema(() => int(1, PID_MAX));
/** A parent, group or session id: 0 where the kernel says "none". */
export const pidOrZero = lazySchema(() => int(0, PID_MAX));
export const fd = lazySchema(() => int(0, FD_MAX - 1));
/** A user-space address, or the end of a range (may equal USER_END). */
export const address = lazySchema(() => int(0, USER_END));
export const isPageAligned = check('pageAligned', (v: number) => v % PAGE_SIZE === 0);
export const pageAligned = lazySchema(() => address.refine(isPageAligned, 'not page aligned'));

/** A 64-bit value as hex: '0x' and 1 to 16 hex digits. */
export const hex64 = lazySchema(() => z.string().regex(/^0x[0-9a-fA-F]{1,16}$/, "not '0x' and 1 to 16 hex digits"));
/** A 32-bit value as hex. */
export const hex32 = lazySchema(() => z.string().regex(/^0x[0-9a-fA-F]{1,8}$/, "not '0x' and 1 to 8 hex digits"));
// zod runs every check even after one failed: refinements must be total.
const U64_TEXT = /^\d{1,20}$/, I64_TEXT = /^-?\d{1,19}$/;
const fitsU64 = check('fitsU64', (v: string) => !U64_TEXT.test(v) || BigInt(v) <= 0xffffffffffffffffn);
const fitsI64 = check('fitsI64', (v: string) => !I64_TEXT.test(v) || (BigInt(v) >= -(1n << 63n) && BigInt(v) < 1n << 63n));
/** An unsigned 64-bit value as a decimal string. */
export const decimalU64 = lazySchema(() => z.string().regex(U64_TEXT, 'not a decimal number').refine(fitsU64, 'does not fit in 64 bits'));
/** A signed 64-bit value as a decimal string. */
export const decimalI64 = lazySchema(() => z.string().regex(I64_TEXT, 'not a decimal number').refine(fitsI64, 'does not fit in 64 bits'));

/** A path: absolute, no NUL, at most PATH_MAX bytes. */
export const path = lazySchema(() => z.string().max(PATH_MAX).regex(/^\/[^\0]*$/, 'not an absolute path without NUL'));
/** A short name (comm, labels): no NUL. */
export const name = (max: number) => z.string().max(max).regex(/^[^\0]*$/, 'contains NUL');

// Whole groups of four, padding only at the end. Not one regex with a
// repeated group: V8 runs out of stack on one over ~10 MB of text.
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/;
const isBase64 = check('base64', (s: string) => s.length % 4 === 0 && BASE64_CHARS.test(s));

/** Decoded size of canonical base64 text. */
export function base64Bytes(s: string): number {
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  return (s.length / 4) * 3 - pad;
}
const decodesTo = check('base64Bytes', (s: string, bytes: number) => base64Bytes(s) === bytes);

/** Base64 of exactly `bytes` bytes. */
export const base64Exact = (bytes: number) => z.string().length(Math.ceil(bytes / 3) * 4)
  .refine(isBase64, 'not base64').refine(withArgs(decodesTo, bytes), `does not decode to ${bytes} bytes`);
/** Base64 of at most `bytes` bytes. */
export const base64Max = (bytes: number) => z.string().max(Math.ceil(bytes / 3) * 4).refine(isBase64, 'not base64');

/** "field vmas[3].start: reason" for the first problem zod found. */
export function issueText(error: z.ZodError): string {
  const issue = error.issues[0];
  let field = '';
  for (const k of issue.path) field += typeof k === 'number' ? `[${k}]` : `${field ? '.' : ''}${String(k)}`;
  return `field ${field || '(record)'}: ${issue.message}`;
}

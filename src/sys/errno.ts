// Error types shared by the whole project: every failure names what failed,
// where, and (for system calls) the errno by name.
import koffi from './koffi';

// Built on first use: reading koffi's errno table costs milliseconds at
// start-up, and most runs never fail.
let errnoNames: Map<number, string> | undefined;

export function errnoName(errno: number): string {
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, value] of Object.entries(koffi.os.errno as Record<string, number>)) {
      // Several names share a number (EAGAIN/EWOULDBLOCK): keep the first, the usual one.
      if (!errnoNames.has(value)) errnoNames.set(value, name);
    }
  }
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** Any refusal or failure of stasis: a one-line message a user can act on. */
export class StasisError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StasisError';
  }
}

/** A system call failed: carries the errno and says which call, on what. */
export class SyscallError extends StasisError {
  readonly errno: number;
  readonly code: string;
  constructor(call: string, errno: number, where?: string) {
    super(`${call} failed${where ? ` (${where})` : ''}: ${errnoName(errno)}`);
    this.name = 'SyscallError';
    this.errno = errno;
    this.code = errnoName(errno);
  }
}

/**
 * A system call's raw result, as the kernel returns it (-4095..-1: -errno),
 * of a call made in task `pid`: its value, or its failure thrown by name.
 */
export function injectedResult(raw: number | bigint, call: string, pid: number, where?: string): number {
  const r = Number(raw);
  if (r < 0 && r > -4096) throw new SyscallError(`${call} in pid ${pid}`, -r, where);
  return r;
}

/** State the tool cannot save or restore yet: refused by name. */
export class UnsupportedError extends StasisError {
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedError';
  }
}

/** The image is malformed, truncated or from an unknown format. */
export class ImageError extends StasisError {
  constructor(message: string) {
    super(message);
    this.name = 'ImageError';
  }
}

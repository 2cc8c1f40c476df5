// What processes (not threads) of the tree share, compared by the kernel
// with kcmp: an fd table (CLONE_FILES) and fs info (CLONE_FS: cwd, root,
// umask) shared with the parent are made again by cloning the child with
// the same flag; any other sharing (with a non-parent, with a process
// outside the tree, an address space, signal handlers or an I/O context
// shared between processes) and System V semaphore undo lists are refused
// by name.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { spawnBlank } from '../ptrace/blank';
import { SYS } from '../sys/x86';
import { syscall, waitpidSync } from '../sys/libc';
import { UnsupportedError } from '../sys/errno';

export const Sharing = lazySchema(() => z.object({
  /** shares its parent's fd table (cloned with CLONE_FILES) */
  files: z.boolean(),
  /** shares its parent's cwd, root and umask (cloned with CLONE_FS) */
  fs: z.boolean(),
}));
export type Sharing = z.infer<typeof Sharing>;

const KCMP_VM = 1, KCMP_FILES = 2, KCMP_FS = 3, KCMP_SIGHAND = 4, KCMP_IO = 5, KCMP_SYSVSEM = 6;
export const CLONE_FS = 0x200, CLONE_FILES = 0x400;

function same(a: number, b: number, type: number): boolean {
  return syscall(SYS.kcmp, 'kcmp', a, b, type, 0, 0) === 0;
}

/** What the processes of a tree share with their parents, and which of them use one fd table. */
export interface TreeSharing {
  /** per pid, what it shares with its parent */
  byPid: Map<number, Sharing>;
  /** per pid, every process of the tree on the same fd table (itself included) */
  fdTables: Map<number, number[]>;
}

/**
 * `procs`: the live processes of the tree, parents first; `outsideParent`
 * is the root's parent. Returns, per pid, what it shares with its parent.
 */
export function dumpSharing(procs: Array<{ pid: number; ppid: number }>, root: number): TreeSharing {
  const parentOf = new Map(procs.map((p) => [p.pid, p.ppid]));
  const out = new Map<number, Sharing>();
  refuseSemUndo(procs.map((p) => p.pid));
  for (const p of procs) {
    const parent = p.ppid;
    const viaParent = (type: number) => {
      try {
        return same(parent, p.pid, type);
      } catch {
        return false; // the parent outside the tree may be gone or out of reach
      }
    };
    if (p.pid === root) {
      for (const [type, what] of [[KCMP_FILES, 'fd table (CLONE_FILES)'], [KCMP_FS, 'cwd, root and umask (CLONE_FS)'], [KCMP_VM, 'address space (CLONE_VM)']] as const) {
        if (viaParent(type)) throw new UnsupportedError(`pid ${p.pid}: shares its ${what} with its parent ${parent} outside the tree; not supported: checkpoint the parent's tree instead`);
      }
      out.set(p.pid, { files: false, fs: false });
      continue;
    }
    out.set(p.pid, { files: parentOf.has(parent) && viaParent(KCMP_FILES), fs: parentOf.has(parent) && viaParent(KCMP_FS) });
  }
  // Any other sharing must be explained by parent links.
  const klass = (pid: number, kind: 'files' | 'fs'): number => {
    let p = pid;
    while (out.get(p)?.[kind] && parentOf.has(parentOf.get(p)!)) p = parentOf.get(p)!;
    return p;
  };
  const pids = procs.map((p) => p.pid);
  const noIo = new NoIoContext();
  let files: number[][];
  try {
    files = refuseSharing(pids, klass, noIo);
  } finally {
    noIo.close();
  }
  const fdTables = new Map<number, number[]>();
  for (const c of files) for (const pid of c) fdTables.set(pid, c);
  return { byPid: out, fdTables };
}

/**
 * The processes that share one kernel object of `type`, in groups of two
 * or more (tree order within a group). kcmp orders objects, so sorting by
 * it puts equal ones side by side: n log n comparisons, not one per pair
 * (a tree of 1,000 processes).
 */
function sharers(pids: number[], type: number): number[][] {
  const order = new Map(pids.map((p, i) => [p, i]));
  const sorted = [...pids].sort((a, b) => {
    if (a === b) return 0;
    const c = syscall(SYS.kcmp, 'kcmp', a, b, type, 0, 0);
    return c === 0 ? order.get(a)! - order.get(b)! : c === 1 ? -1 : 1;
  });
  const groups: number[][] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i + 1;
    while (j < sorted.length && same(sorted[i], sorted[j], type)) j++;
    if (j - i > 1) groups.push(sorted.slice(i, j).sort((a, b) => order.get(a)! - order.get(b)!));
    i = j;
  }
  return groups;
}

/** Refuse sharing not through parents; returns the groups on one fd table. */
function refuseSharing(pids: number[], klass: (pid: number, kind: 'files' | 'fs') => number, noIo: NoIoContext): number[][] {
  for (const [a, b] of sharers(pids, KCMP_SIGHAND)) {
    throw new UnsupportedError(`pids ${a} and ${b}: share one signal handler table as separate processes (CLONE_SIGHAND); not supported`);
  }
  for (const [a, b] of sharers(pids, KCMP_VM)) {
    throw new UnsupportedError(`pids ${a} and ${b}: share one address space as separate processes (CLONE_VM without CLONE_THREAD, vfork); not supported`);
  }
  const files = sharers(pids, KCMP_FILES);
  for (const g of files) {
    const b = g.find((p) => klass(p, 'files') !== klass(g[0], 'files'));
    if (b !== undefined) throw new UnsupportedError(`pids ${g[0]} and ${b}: share one fd table (CLONE_FILES) but not through their parents; not supported`);
  }
  for (const g of sharers(pids, KCMP_FS)) {
    const b = g.find((p) => klass(p, 'fs') !== klass(g[0], 'fs'));
    if (b !== undefined) throw new UnsupportedError(`pids ${g[0]} and ${b}: share cwd, root and umask (CLONE_FS) but not through their parents; not supported`);
  }
  for (const [a, b] of sharers(pids, KCMP_IO)) {
    if (noIo.has(a)) throw new UnsupportedError(`pids ${a} and ${b}: share one I/O context (CLONE_IO: I/O priority and scheduling state); not supported`);
  }
  return files;
}

/**
 * An I/O context is made on demand: two processes without one compare
 * equal. A fresh blank process (made only if needed) has none.
 */
class NoIoContext {
  private blank = 0;

  has(pid: number): boolean {
    if (!this.blank) this.blank = spawnBlank();
    return !same(this.blank, pid, KCMP_IO);
  }

  close(): void {
    if (!this.blank) return;
    process.kill(this.blank, 'SIGKILL');
    waitpidSync(this.blank, 0);
  }
}

/**
 * A process holds SEM_UNDO adjustments only if semaphore sets exist and it
 * has an undo list. The list itself is invisible, and every thread creation
 * (CLONE_SYSVSEM) allocates an empty one, so with semaphore sets around any
 * process that has a list is refused: compared by kcmp with a fresh blank
 * process, whose list is empty (NULL).
 */
function refuseSemUndo(pids: number[]): void {
  if (!fs.existsSync('/proc/sysvipc/sem')) return; // no System V IPC in this kernel
  const sets = fs.readFileSync('/proc/sysvipc/sem', 'utf8').trim().split('\n').length - 1;
  if (sets <= 0) return;
  const blank = spawnBlank();
  try {
    for (const pid of pids) {
      if (!same(blank, pid, KCMP_SYSVSEM)) {
        throw new UnsupportedError(`pid ${pid}: has a System V semaphore undo list while ${sets} semaphore set(s) exist (semop with SEM_UNDO, or threads), which stasis cannot restore yet; the adjustments would be undone when the original ends`);
      }
    }
  } finally {
    process.kill(blank, 'SIGKILL');
    waitpidSync(blank, 0);
  }
}

/** The clone flags that make a restored child share again what it shared. */
export function sharingFlags(s: Sharing | undefined): number {
  return (s?.files ? CLONE_FILES : 0) | (s?.fs ? CLONE_FS : 0);
}

/** The other processes of the tree using the fd table of `pid`. */
export function fdTableSharers(sharing: TreeSharing, pid: number): Set<number> {
  return new Set((sharing.fdTables.get(pid) ?? []).filter((q) => q !== pid));
}

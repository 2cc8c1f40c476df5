// Files of /proc/<pid>/ held open by a process of the tree, and pidfds
// (src/kinds/pidfd.ts). They name a process by its pid: after a restart
// with the same pids the path leads to the same (restored) process again.
// One of a process outside the tree, or a restart under other pids, would
// point at some other process: refused by name.
import { ImageFd, ImageProcess } from '../image/schema';
import { UnsupportedError, StasisError } from '../sys/errno';

/** The pid a /proc path names ("/proc/42/status" -> 42), or null. */
export function procPidOf(path: string): number | null {
  const m = /^\/proc\/(\d+)(?:\/|$)/.exec(path);
  return m ? Number(m[1]) : null;
}

/** At checkpoint: every /proc/<pid> file held open must belong to a task of the tree. */
export function refuseForeignProcFiles(procs: Array<{ pid: number; fds: ImageFd[] }>, treeIds: Set<number>): void {
  for (const p of procs) {
    for (const f of p.fds) {
      const target = procPidOf(f.path);
      if (target !== null && !treeIds.has(target)) {
        throw new UnsupportedError(`fd ${f.fd} of pid ${p.pid}: ${f.path} belongs to pid ${target}, which is outside the tree: not supported; close it or checkpoint a tree that holds that process`);
      }
      if (f.kind === 'pidfd' && f.pidfd.pid && !treeIds.has(f.pidfd.pid)) {
        throw new UnsupportedError(`fd ${f.fd} of pid ${p.pid}: pidfd of pid ${f.pidfd.pid}, which is outside the tree: not supported; close it or checkpoint a tree that holds that process`);
      }
    }
  }
}

/** At restart: /proc files are only right when every task gets its saved pid back. */
export function refuseProcFilesUnderNewPids(procs: ImageProcess[], why: string): void {
  for (const p of procs) {
    const f = p.fds.find((x) => procPidOf(x.path) !== null);
    if (f) throw new StasisError(`pid ${p.pid}: fd ${f.fd} is ${f.path}, which would name another process ${why}; restart where the saved pids are free, without --pid-ns`);
  }
}

/**
 * In a new pid namespace: a pidfd of a reaped process would be of one
 * outside that namespace (pidfd_send_signal: EINVAL, not ESRCH).
 */
export function refuseDeadPidfdsInNewPidNs(procs: ImageProcess[]): void {
  for (const p of procs) {
    const f = p.fds.find((x) => x.kind === 'pidfd' && !x.pidfd.pid);
    if (f) throw new StasisError(`pid ${p.pid}: fd ${f.fd} is a pidfd of a process that has exited and been reaped, which cannot be made inside a new pid namespace yet; restart without --pid-ns (as root), or close it before the checkpoint`);
  }
}

/**
 * At restart under a new pid (outside any pid namespace, where the tasks
 * would find their saved pids again): a pidfd would be opened on another process.
 */
export function refusePidfdsUnderNewPids(procs: ImageProcess[], why: string): void {
  for (const p of procs) {
    const f = p.fds.find((x) => x.kind === 'pidfd' && x.pidfd.pid);
    if (f?.kind === 'pidfd') throw new StasisError(`pid ${p.pid}: fd ${f.fd} is a pidfd of pid ${f.pidfd.pid}, which would be another process ${why}; restart where the saved pids are free, or with --pid-ns`);
  }
}

/** Task ids of the image: their /proc directories exist once the tree is made. */
export function imageTaskIds(procs: ImageProcess[], zombies: Array<{ pid: number }>): Set<number> {
  return new Set([...procs.flatMap((p) => [p.pid, ...p.threads.map((t) => t.tid)]), ...zombies.map((z) => z.pid)]);
}

// Files of /proc/<pid>/ held open by a process of the tree. They name a
// process by its pid: after a restart with the same pids the path leads to
// the same (restored) process again. A /proc file of a process outside the
// tree, or a restart under other pids, would point at some other process:
// refused by name.
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

/** Task ids of the image: their /proc directories exist once the tree is made. */
export function imageTaskIds(procs: ImageProcess[], zombies: Array<{ pid: number }>): Set<number> {
  return new Set([...procs.flatMap((p) => [p.pid, ...p.threads.map((t) => t.tid)]), ...zombies.map((z) => z.pid)]);
}

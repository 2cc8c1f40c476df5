// A tree someone else already holds is refused by name before we touch it:
// another stasis checkpointing it (traced by it, or in its freezer cgroup)
// or a debugger tracing one of its threads. A task has one tracer only.
import fs from 'node:fs';
import { listThreads } from '../proc';
import { scanTree } from './freeze';
import { StasisError } from '../sys/errno';

function tracerOf(pid: number, tid: number): number {
  try {
    return Number(/^TracerPid:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0; // exited meanwhile
  }
}

function isStasis(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((a) => /(^|\/)stasis(\.js)?$|\/bin\/stasis$/.test(a) || a === 'stasis-watchdog');
  } catch {
    return false;
  }
}

/** The one-line refusal for a task traced by `tracer`. */
export function tracedMessage(pid: number, tracer: number): string {
  if (isStasis(tracer)) return `pid ${pid}: the tree is being checkpointed by pid ${tracer}; try again once it has finished`;
  let comm = '?';
  try { comm = fs.readFileSync(`/proc/${tracer}/comm`, 'utf8').trim(); } catch { /* gone */ }
  return `pid ${pid} is traced by pid ${tracer} (${comm}); stasis cannot trace it at the same time: detach the debugger first`;
}

/** Why `tid` of `pid` cannot be seized, by name, if someone traces it. */
export function whoTraces(pid: number, tid: number): string | null {
  const tracer = tracerOf(pid, tid);
  return tracer ? tracedMessage(pid, tracer) : null;
}

export function refuseBusy(root: number): void {
  for (const p of scanTree(root)) {
    if (p.zombie) continue;
    const cgroup = /^\d+:freezer:\/stasis-(\d+)-\d+$/m.exec(fs.readFileSync(`/proc/${p.pid}/cgroup`, 'utf8'));
    if (cgroup && fs.existsSync(`/proc/${cgroup[1]}`)) {
      throw new StasisError(`pid ${p.pid}: the tree is being checkpointed by pid ${cgroup[1]}; try again once it has finished`);
    }
    let tids: number[] = [];
    try { tids = listThreads(p.pid); } catch { /* exited */ }
    for (const tid of tids) {
      const why = whoTraces(p.pid, tid);
      if (why) throw new StasisError(why);
    }
  }
}

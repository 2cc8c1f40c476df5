// Scheduling attributes of each thread: policy, real-time priority, nice,
// SCHED_RESET_ON_FORK, the fair time slice, CPU affinity, I/O priority and
// timer slack. Read and set from outside where the kernel takes a tid
// (sched_getattr, sched_getaffinity, ioprio_get), last; timer slack from
// inside.
import { z, lazySchema } from '../image/zod';
import { check } from '../image/checks';
import { readStat } from '../proc';
import { Remote, BatchCall } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { Tracee } from '../ptrace/tracee';
import { syscall } from '../sys/libc';
import { SYS, AFFINITY_BYTES } from '../sys/x86';
import { SyscallError, UnsupportedError, StasisError } from '../sys/errno';

const NR = { sched_setattr: 314, sched_getattr: 315, sched_getaffinity: 204, ioprio_set: 251, ioprio_get: 252, setpriority: 141, prctl: 157 } as const;
const PR_SET_TIMERSLACK = 29, PR_GET_TIMERSLACK = 30;
const SCHED_FIFO = 1, SCHED_RR = 2, SCHED_DEADLINE = 6;
const SCHED_FLAG_RESET_ON_FORK = 1;
const IOPRIO_WHO_PROCESS = 1, PRIO_PROCESS = 0;
const SCHED_ATTR_SIZE = 56;

const savedPolicy = check('schedSavedPolicy', (v: number) => v !== 4 && v !== SCHED_DEADLINE);
export const SchedState = lazySchema(() => z.object({
  /** SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5, EXT 7 (DEADLINE is refused) */
  policy: z.number().int().min(0).max(7).refine(savedPolicy, 'not a policy a checkpoint saves'),
  resetOnFork: z.boolean(),
  rtPriority: z.number().int().min(0).max(99),
  nice: z.number().int().min(-20).max(19),
  /** fair policies: the time slice in ns (sched_attr.sched_runtime); 0 otherwise */
  slice: z.number().int().min(0).max(1e10),
  /** CPU affinity mask, hex, CPU 0 in the lowest bit */
  affinity: z.string().regex(/^0x[0-9a-f]{1,256}$/),
  /** ioprio_get value: class << 13 | data */
  ioprio: z.number().int().min(0).max(0xffff),
  /** PR_GET_TIMERSLACK, ns (0 for real-time tasks) */
  timerSlack: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
}));
export type SchedState = z.infer<typeof SchedState>;

const isRealtime = (policy: number) => policy === SCHED_FIFO || policy === SCHED_RR || policy === SCHED_DEADLINE;
const isFair = (policy: number) => !isRealtime(policy);

function getattr(tid: number): { policy: number; flags: bigint; runtime: bigint; utilMin: number; utilMax: number } {
  const a = Buffer.alloc(SCHED_ATTR_SIZE);
  syscall(NR.sched_getattr, 'sched_getattr', tid, a, SCHED_ATTR_SIZE, 0);
  return { policy: a.readUInt32LE(4), flags: a.readBigUInt64LE(8), runtime: a.readBigUInt64LE(24), utilMin: a.readUInt32LE(48), utilMax: a.readUInt32LE(52) };
}

/** Utilization clamps: 0/1024 by default, 0/0 on a kernel without them. */
const UCLAMP_DEFAULTS = ['0/1024', '0/0'];

function affinityOf(tid: number): string {
  const b = Buffer.alloc(AFFINITY_BYTES);
  const n = syscall(NR.sched_getaffinity, 'sched_getaffinity', tid, AFFINITY_BYTES, b);
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  return '0x' + v.toString(16);
}

/** All but the timer slack, read from outside. */
function schedOf(tid: number, tgid: number): Omit<SchedState, 'timerSlack'> {
  const a = getattr(tid);
  if (a.policy === SCHED_DEADLINE) {
    throw new UnsupportedError(`pid ${tgid} thread ${tid}: SCHED_DEADLINE is not supported (its runtime budget cannot be carried over); switch it to another policy (chrt) before the checkpoint`);
  }
  if (!UCLAMP_DEFAULTS.includes(`${a.utilMin}/${a.utilMax}`)) {
    throw new UnsupportedError(`pid ${tgid} thread ${tid}: utilization clamps ${a.utilMin}/${a.utilMax} (sched_setattr SCHED_FLAG_UTIL_CLAMP) are not supported; reset them before the checkpoint`);
  }
  const st = readStat(tid);
  return {
    policy: a.policy,
    resetOnFork: (a.flags & BigInt(SCHED_FLAG_RESET_ON_FORK)) !== 0n,
    rtPriority: st.rtPriority,
    nice: st.nice,
    slice: isFair(a.policy) ? Number(a.runtime) : 0,
    affinity: affinityOf(tid),
    ioprio: syscall(NR.ioprio_get, 'ioprio_get', IOPRIO_WHO_PROCESS, tid),
  };
}

/** The scheduling state of one thread (`remote` runs in it, for the timer slack). */
export function dumpSched(q: Queries): () => SchedState {
  const { task } = q.remote;
  const slack = q.ask('prctl', NR.prctl, [PR_GET_TIMERSLACK], { where: 'timer slack' });
  return () => ({ ...schedOf(task.pid, task.tgid), timerSlack: slack.value });
}

/**
 * Timer slack, injected while the thread is still being set up. Set before
 * the policy (restoreSched), which keeps it between fair policies and
 * makes it 0 for real-time ones, as the saved value then is.
 */
export function timerSlackCalls(remote: Remote, s: SchedState): BatchCall[] {
  // Real-time tasks have no slack and ignore PR_SET_TIMERSLACK. Set, not
  // compared: as cheap as asking.
  return isRealtime(s.policy) ? [] : [{ name: 'prctl', nr: NR.prctl, args: [PR_SET_TIMERSLACK, s.timerSlack], where: `pid ${remote.task.tgid} thread ${remote.task.pid}: timer slack` }];
}

/**
 * Policy, priority, nice, affinity and I/O priority, set from outside with
 * stasis's own rights (CAP_SYS_NICE for a raise), once nothing more is
 * injected into the thread: a thread made SCHED_IDLE, nice 19 or pinned
 * to a busy CPU would make every later injected call crawl.
 */
export function restoreSched(t: Tracee, s: SchedState): void {
  const tid = t.pid;
  const where = `pid ${t.tgid} thread ${tid}`;
  const now = schedOf(tid, t.tgid);
  try {
    if (now.policy !== s.policy || now.resetOnFork !== s.resetOnFork || now.rtPriority !== s.rtPriority || now.slice !== s.slice || (isFair(s.policy) && now.nice !== s.nice)) {
      const a = Buffer.alloc(SCHED_ATTR_SIZE);
      a.writeUInt32LE(SCHED_ATTR_SIZE, 0);
      a.writeUInt32LE(s.policy, 4);
      a.writeBigUInt64LE(s.resetOnFork ? BigInt(SCHED_FLAG_RESET_ON_FORK) : 0n, 8);
      a.writeInt32LE(s.nice, 16);
      a.writeUInt32LE(s.rtPriority, 20);
      // 0 keeps the default slice; a custom one is set only when it differs.
      if (isFair(s.policy) && s.slice !== now.slice) a.writeBigUInt64LE(BigInt(s.slice), 24);
      syscall(NR.sched_setattr, 'sched_setattr', tid, a, 0);
    }
    if (readStat(tid).nice !== s.nice) syscall(NR.setpriority, 'setpriority', PRIO_PROCESS, tid, s.nice);
    if (now.affinity !== s.affinity) {
      const b = Buffer.alloc(AFFINITY_BYTES);
      let v = BigInt(s.affinity);
      for (let i = 0; i < AFFINITY_BYTES && v; i++, v >>= 8n) b[i] = Number(v & 0xffn);
      syscall(SYS.sched_setaffinity, 'sched_setaffinity', tid, AFFINITY_BYTES, b);
    }
    if (now.ioprio !== s.ioprio) syscall(NR.ioprio_set, 'ioprio_set', IOPRIO_WHO_PROCESS, tid, s.ioprio);
  } catch (e) {
    if (e instanceof SyscallError) {
      throw new StasisError(`${where}: cannot set its scheduling (policy ${s.policy} priority ${s.rtPriority} nice ${s.nice} CPUs ${s.affinity} ioprio ${s.ioprio}): ${e.message}; restart as root (CAP_SYS_NICE, CAP_SYS_ADMIN) on a machine with those CPUs`);
    }
    throw e;
  }
}

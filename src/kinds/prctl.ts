// prctl-style state of a process and of its threads, asked inside the task
// (PR_GET_*) or read from /proc, and set again at restart; what cannot be
// restored is refused by name before anything is injected into the target.
//
// Process (per mm / signal struct): child subreaper, THP disable, dumpable,
// MDWE, membarrier registrations, private futex hash size, oom_score_adj,
// coredump_filter, the nice value of its session's autogroup (KSM merge-any
// is kinds/mmpolicy's: it must be in force before any VMA is mapped).
// Thread: parent-death signal, no_new_privs, speculation controls, TSC and
// CPUID access, machine-check kill policy, audit loginuid, personality.
// Refused: seccomp, syscall user dispatch, PR_SET_IO_FLUSHER, x86 shadow
// stack, dumpable 2 (suid_dumpable), threads with credentials of their own,
// a core scheduling cookie.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { check } from '../image/checks';
import { readStat, readStatus } from '../proc';
import { Remote, AT_FDCWD } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { Tracee } from '../ptrace/tracee';
import { ptrace, syscall } from '../sys/libc';
import { SYS } from '../sys/x86';
import { UnsupportedError, StasisError, SyscallError, errnoName } from '../sys/errno';

const PR = {
  SET_PDEATHSIG: 1, GET_PDEATHSIG: 2, GET_DUMPABLE: 3, SET_DUMPABLE: 4, GET_TSC: 25, SET_TSC: 26,
  MCE_KILL: 33, MCE_KILL_GET: 34, SET_CHILD_SUBREAPER: 36, GET_CHILD_SUBREAPER: 37,
  SET_NO_NEW_PRIVS: 38, GET_NO_NEW_PRIVS: 39, SET_THP_DISABLE: 41, GET_THP_DISABLE: 42,
  GET_SPECULATION_CTRL: 52, SET_SPECULATION_CTRL: 53, SET_MDWE: 65, GET_MDWE: 66,
  FUTEX_HASH: 78,
} as const;
const PR_MCE_KILL_CLEAR = 0, PR_MCE_KILL_SET = 1, PR_MCE_KILL_DEFAULT = 2;
const PR_FUTEX_HASH_SET_SLOTS = 1, PR_FUTEX_HASH_GET_SLOTS = 2;
const ARCH_GET_CPUID = 0x1011, ARCH_SET_CPUID = 0x1012;
const NR_membarrier = 324, MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9;
/** the REGISTER_* commands: global expedited, private expedited, with sync-core, with rseq */
const MEMBARRIER_REGISTER_COMMANDS = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
const MEMBARRIER_REGISTER_MASK = MEMBARRIER_REGISTER_COMMANDS.reduce((a, b) => a | b, 0);
const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211;
const PR_SCHED_CORE = 62, PR_SCHED_CORE_GET = 0, PIDTYPE_PID = 0;
const PF_MEMALLOC_NOIO = 0x00080000, PF_LOCAL_THROTTLE = 0x00100000;
/** speculation features asked with PR_GET_SPECULATION_CTRL: store bypass, indirect branch, L1D flush */
const SPEC_FEATURES = [0, 1, 2];
const O_WRONLY = 1, O_CLOEXEC = 0o2000000;

const int = lazySchema(() => z.number().int());
const thpDisableKnown = check('prctlThpDisable', (v: number) => v !== 2);
const membarrierRegistrations = check('prctlMembarrier', (v: number) => (v & ~MEMBARRIER_REGISTER_MASK) === 0);
export const ProcessPrctlState = lazySchema(() => z.object({
  childSubreaper: z.boolean(),
  /** PR_GET_THP_DISABLE: 0, 1, or 3 (PR_THP_DISABLE_EXCEPT_ADVISED) */
  thpDisable: int.min(0).max(3).refine(thpDisableKnown, 'PR_THP_DISABLE_EXCEPT_ADVISED without disable'),
  dumpable: int.min(0).max(1),
  /** PR_GET_MDWE bits (once set, never unset) */
  mdwe: int.min(0).max(3),
  /** MEMBARRIER_CMD_GET_REGISTRATIONS: the REGISTER_* commands made */
  membarrier: int.min(0).max(MEMBARRIER_REGISTER_MASK).refine(membarrierRegistrations, 'not a set of membarrier REGISTER_* commands'),
  /** PR_FUTEX_HASH_GET_SLOTS (0: the global hash; -1: not on this kernel) */
  futexSlots: int.min(-1).max(1 << 24),
  oomScoreAdj: int.min(-1000).max(1000),
  coredumpFilter: int.min(0).max(0x1ff),
  /** nice of the session's scheduler autogroup (/proc/PID/autogroup); null without autogroups */
  autogroupNice: int.min(-20).max(19).nullable(),
}));
export type ProcessPrctlState = z.infer<typeof ProcessPrctlState>;

export const ThreadPrctlState = lazySchema(() => z.object({
  pdeathsig: int.min(0).max(64),
  noNewPrivs: z.boolean(),
  /** PR_GET_SPECULATION_CTRL per feature (-1: not on this kernel or CPU) */
  speculation: z.array(int.min(-1).max(0xff)).length(SPEC_FEATURES.length),
  /** PR_GET_TSC: 1 enabled, 2 SIGSEGV */
  tsc: int.min(1).max(2),
  /** ARCH_GET_CPUID: 1 cpuid allowed, 0 faulting */
  cpuid: int.min(0).max(1),
  /** PR_MCE_KILL_GET: 0 late, 1 early, 2 system default */
  mceKill: int.min(0).max(2),
  /** /proc/PID/task/TID/loginuid (4294967295: unset) */
  loginuid: int.min(0).max(0xffffffff),
  personality: int.min(0).max(0xffffffff),
}));
export type ThreadPrctlState = z.infer<typeof ThreadPrctlState>;

/**
 * Refusals that must come before any system call is injected: a seccomp
 * filter or syscall user dispatch would see the injected calls themselves.
 */
export function refuseUnrestorableAttrs(pid: number, threads: Tracee[]): void {
  let ids = '';
  for (const t of threads) {
    const who = `pid ${pid}${t.pid !== pid ? ` thread ${t.pid}` : ''}`;
    const st = t.statusSeen = readStatus(t.pid);
    if (st.seccomp !== 0) {
      throw new UnsupportedError(`${who}: seccomp ${st.seccomp === 1 ? 'strict mode' : 'filter'} is not supported (filters cannot be read back); run it without seccomp to checkpoint it`);
    }
    const features = st.raw['x86_Thread_features'];
    if (features) throw new UnsupportedError(`${who}: x86 thread features "${features}" (shadow stack) are not supported`);
    // Credentials are saved per process: a thread with ids of its own would lose them.
    const mine = `uids ${st.uid.join(',')} gids ${st.gid.join(',')} groups ${st.groups.join(',') || 'none'}`;
    if (!ids) ids = mine;
    else if (mine !== ids) throw new UnsupportedError(`${who}: its credentials (${mine}) differ from its process's (${ids}); threads with credentials of their own are not supported`);
    const sud = Buffer.alloc(32);
    ptrace(PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, t.pid, 32, sud, 'GET_SYSCALL_USER_DISPATCH_CONFIG');
    if (sud.readBigUInt64LE(0) !== 0n) {
      throw new UnsupportedError(`${who}: syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH) is on; not supported, turn it off before the checkpoint`);
    }
    const cookie = Buffer.alloc(8);
    let cookieRead = false;
    try {
      syscall(SYS.prctl, 'prctl(PR_SCHED_CORE_GET)', PR_SCHED_CORE, PR_SCHED_CORE_GET, t.pid, PIDTYPE_PID, cookie);
      cookieRead = true;
    } catch { /* no core scheduling on this kernel or machine (ENODEV without SMT, EINVAL): no cookie */ }
    if (cookieRead && cookie.readBigUInt64LE(0) !== 0n) {
      throw new UnsupportedError(`${who}: a core scheduling cookie (PR_SCHED_CORE) is set; not supported`);
    }
    if (readStat(t.pid).flags & (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE)) {
      throw new UnsupportedError(`${who}: PR_SET_IO_FLUSHER is set; not supported (setting it again needs CAP_SYS_RESOURCE)`);
    }
  }
}

/** A read-only query: a system call, and whether its answer is an int it writes at arg2. */
interface Query { nr: number; args: number[]; out?: boolean }

/**
 * Queries planned on `q`; once run, their raw results (negative: -errno),
 * ints written at arg2 in place of the result.
 */
function ask(q: Queries, queries: Query[]): () => number[] {
  const answers = queries.map((x) => (x.out ? q.ask('query', x.nr, (o) => [x.args[0], o, ...x.args.slice(1)], { out: 4 }) : q.ask('query', x.nr, x.args)));
  return () => answers.map((a, i) => (queries[i].out && a.raw >= 0 ? a.rawBytes.readInt32LE(0) : a.raw));
}

function must(r: number, what: string, pid: number): number {
  if (r < 0) throw new SyscallError(`${what} in pid ${pid}`, -r);
  return r;
}

const prctlQuery = (option: number, ...rest: number[]): Query => ({ nr: SYS.prctl, args: [option, ...rest] });

export function dumpProcessPrctl(q: Queries): () => ProcessPrctlState {
  const pid = q.pid;
  const answers = ask(q, [
    { ...prctlQuery(PR.GET_CHILD_SUBREAPER), out: true }, prctlQuery(PR.GET_THP_DISABLE), prctlQuery(PR.GET_DUMPABLE),
    prctlQuery(PR.GET_MDWE),
    { nr: NR_membarrier, args: [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0] }, prctlQuery(PR.FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS),
  ]);
  return () => processPrctl(pid, answers());
}

function processPrctl(pid: number, [subreaper, thp, dumpable, mdwe, membarrier, futex]: number[]): ProcessPrctlState {
  if (dumpable > 1) {
    throw new UnsupportedError(`pid ${pid}: dumpable is ${dumpable} (set by fs.suid_dumpable on a credential change); prctl cannot set it back: call prctl(PR_SET_DUMPABLE, 1 or 0) in it first`);
  }
  return {
    childSubreaper: must(subreaper, 'PR_GET_CHILD_SUBREAPER', pid) !== 0,
    thpDisable: must(thp, 'PR_GET_THP_DISABLE', pid),
    dumpable: must(dumpable, 'PR_GET_DUMPABLE', pid),
    mdwe: must(mdwe, 'PR_GET_MDWE', pid),
    membarrier: must(membarrier, 'membarrier(GET_REGISTRATIONS)', pid),
    futexSlots: futex < 0 ? -1 : futex,
    oomScoreAdj: Number(fs.readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8')),
    coredumpFilter: parseInt(fs.readFileSync(`/proc/${pid}/coredump_filter`, 'utf8'), 16),
    autogroupNice: autogroupNice(pid),
  };
}

function autogroupNice(pid: number): number | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/autogroup`, 'utf8');
  } catch {
    return null; // kernel without CONFIG_SCHED_AUTOGROUP
  }
  const m = /nice (-?\d+)/.exec(text);
  return m ? Number(m[1]) : null;
}

/**
 * Set where it differs from `now`, asked in the main thread's run before
 * credentials (dumpProcessPrctl): set after every VMA is mapped (MDWE acts
 * on mappings) and every thread has its credentials, whose change
 * (`credsChanged`) resets dumpable (to fs.suid_dumpable).
 */
export function restoreProcessPrctl(remote: Remote, s: ProcessPrctlState, now: ProcessPrctlState, credsChanged: boolean): void {
  const pid = remote.pid;
  const prctl = (what: string, ...args: number[]) => remote.call('prctl', SYS.prctl, args, `pid ${pid}: ${what}`);
  if (now.childSubreaper !== s.childSubreaper) prctl('child subreaper', PR.SET_CHILD_SUBREAPER, s.childSubreaper ? 1 : 0);
  if (now.thpDisable !== s.thpDisable) prctl('THP disable', PR.SET_THP_DISABLE, s.thpDisable ? 1 : 0, s.thpDisable & 2);
  for (const bit of MEMBARRIER_REGISTER_COMMANDS) {
    if (s.membarrier & bit & ~now.membarrier) remote.call('membarrier', NR_membarrier, [bit, 0, 0], `pid ${pid}: membarrier registration 0x${bit.toString(16)}`);
  }
  if (s.futexSlots >= 0 && now.futexSlots !== s.futexSlots) prctl('private futex hash size', PR.FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, s.futexSlots);
  if (credsChanged || now.dumpable !== s.dumpable) prctl('dumpable', PR.SET_DUMPABLE, s.dumpable);
  if (now.mdwe !== s.mdwe) {
    if (now.mdwe & ~s.mdwe) throw new StasisError(`pid ${pid}: MDWE is 0x${now.mdwe.toString(16)} in the new process and cannot be cleared`);
    prctl('MDWE', PR.SET_MDWE, s.mdwe);
  }
  try {
    if (now.oomScoreAdj !== s.oomScoreAdj) fs.writeFileSync(`/proc/${pid}/oom_score_adj`, String(s.oomScoreAdj));
  } catch (e) {
    throw new StasisError(`pid ${pid}: cannot set oom_score_adj ${s.oomScoreAdj} (${(e as NodeJS.ErrnoException).code}): lowering it needs CAP_SYS_RESOURCE; restart as a user who has it`);
  }
  if (now.coredumpFilter !== s.coredumpFilter) fs.writeFileSync(`/proc/${pid}/coredump_filter`, '0x' + s.coredumpFilter.toString(16));
  if (s.autogroupNice !== null && now.autogroupNice !== s.autogroupNice) {
    // The autogroup belongs to the session: only a leader restored by us owns a new one.
    if (readStat(pid).session !== pid) {
      throw new StasisError(`pid ${pid}: its session's autogroup had nice ${s.autogroupNice}, the session it joins here has ${now.autogroupNice}: restart it in a session of its own (-d), or set that nice (/proc/self/autogroup) first`);
    }
    try {
      fs.writeFileSync(`/proc/${pid}/autogroup`, String(s.autogroupNice));
    } catch (e) {
      throw new StasisError(`pid ${pid}: cannot set its autogroup nice ${s.autogroupNice} (${(e as NodeJS.ErrnoException).code}): lowering it needs CAP_SYS_NICE; restart as root`);
    }
  }
}

export function dumpThreadPrctl(q: Queries): () => ThreadPrctlState {
  const tid = q.remote.task.pid;
  const answers = ask(q, [
    { ...prctlQuery(PR.GET_PDEATHSIG), out: true }, prctlQuery(PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0), { ...prctlQuery(PR.GET_TSC), out: true },
    { nr: SYS.arch_prctl, args: [ARCH_GET_CPUID, 0] }, prctlQuery(PR.MCE_KILL_GET, 0, 0, 0, 0),
    ...SPEC_FEATURES.map((f) => prctlQuery(PR.GET_SPECULATION_CTRL, f, 0, 0, 0)),
  ]);
  return () => threadPrctl(tid, answers());
}

function threadPrctl(tid: number, [pdeathsig, nnp, tsc, cpuid, mce, ...speculation]: number[]): ThreadPrctlState {
  return {
    pdeathsig: must(pdeathsig, 'PR_GET_PDEATHSIG', tid),
    noNewPrivs: must(nnp, 'PR_GET_NO_NEW_PRIVS', tid) !== 0,
    speculation: speculation.map((v) => (v < 0 ? -1 : v)),
    tsc: must(tsc, 'PR_GET_TSC', tid),
    cpuid: must(cpuid, 'ARCH_GET_CPUID', tid),
    mceKill: must(mce, 'PR_MCE_KILL_GET', tid),
    loginuid: Number(fs.readFileSync(`/proc/${tid}/loginuid`, 'utf8')),
    personality: parseInt(fs.readFileSync(`/proc/${tid}/personality`, 'utf8'), 16),
  };
}

/**
 * Before credentials: a loginuid already set can only be changed with
 * CAP_AUDIT_CONTROL. `now`: the thread's state as it is (dumpThreadPrctl,
 * asked with the thread's other questions).
 */
export function restoreThreadPrctl(remote: Remote, s: ThreadPrctlState, now: ThreadPrctlState): void {
  const who = `pid ${remote.task.tgid} thread ${remote.task.pid}`;
  if (now.personality !== s.personality) remote.call('personality', SYS.personality, [s.personality], `${who}: personality`);
  if (now.loginuid !== s.loginuid) {
    remote.reset();
    const fd = remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString('/proc/thread-self/loginuid'), O_WRONLY | O_CLOEXEC], `${who}: loginuid`);
    const text = Buffer.from(String(s.loginuid));
    const r = remote.task.injectRaw(SYS.write, [fd, remote.putBytes(text), text.length]);
    remote.call('close', SYS.close, [fd]);
    if (r < 0n) throw new StasisError(`${who}: cannot set its audit loginuid to ${s.loginuid} (${errnoName(Number(-r))}): changing a set loginuid needs CAP_AUDIT_CONTROL; restart as root`);
  }
  if (now.tsc !== s.tsc) remote.call('prctl', SYS.prctl, [PR.SET_TSC, s.tsc], `${who}: TSC access`);
  if (now.cpuid !== s.cpuid) remote.call('arch_prctl', SYS.arch_prctl, [ARCH_SET_CPUID, s.cpuid], `${who}: cpuid faulting`);
  if (now.mceKill !== s.mceKill) {
    const args = s.mceKill === PR_MCE_KILL_DEFAULT ? [PR.MCE_KILL, PR_MCE_KILL_CLEAR, 0] : [PR.MCE_KILL, PR_MCE_KILL_SET, s.mceKill];
    remote.call('prctl', SYS.prctl, [...args, 0, 0], `${who}: machine-check kill policy`);
  }
  SPEC_FEATURES.forEach((f, i) => {
    if (now.speculation[i] === s.speculation[i]) return;
    // The state bits (enable 2, disable 4, force-disable 8, disable-noexec 16) as one value.
    const mode = s.speculation[i] & ~1;
    const r = s.speculation[i] < 0 ? -22n : remote.task.injectRaw(SYS.prctl, [PR.SET_SPECULATION_CTRL, f, mode, 0, 0]);
    if (r < 0n) throw new StasisError(`${who}: speculation control ${f} was 0x${s.speculation[i].toString(16)}, here it is 0x${now.speculation[i].toString(16)} and cannot be set (${errnoName(Number(-r))}): restart on a machine with the same CPU mitigations`);
  });
}

/**
 * After credentials: changed (`credsChanged`), they cleared the parent-death
 * signal. `now`: as asked before them (dumpThreadPrctl), no_new_privs too,
 * which nothing since changed.
 */
export function restoreThreadPrctlAfterCreds(remote: Remote, s: ThreadPrctlState, now: ThreadPrctlState, credsChanged: boolean): void {
  const who = `pid ${remote.task.tgid} thread ${remote.task.pid}`;
  if (credsChanged || now.pdeathsig !== s.pdeathsig) remote.call('prctl', SYS.prctl, [PR.SET_PDEATHSIG, s.pdeathsig], `${who}: parent-death signal`);
  if (s.noNewPrivs && !now.noNewPrivs) remote.call('prctl', SYS.prctl, [PR.SET_NO_NEW_PRIVS, 1, 0, 0, 0], `${who}: no_new_privs`);
  if (!s.noNewPrivs && now.noNewPrivs) throw new StasisError(`${who}: no_new_privs is set in the new task and cannot be cleared: restart from a process without it`);
}

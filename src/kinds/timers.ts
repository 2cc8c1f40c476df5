// Timers of a process: POSIX timers (timer_create) with their ids, clocks,
// notification and signal value, and the three interval timers (setitimer;
// alarm() is ITIMER_REAL). Remaining times are saved as what is left and
// armed again relative: the time a process spends checkpointed does not
// count (as in CRIU), and an absolute CLOCK_REALTIME deadline becomes the
// same remaining time.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { UnsupportedError, StasisError } from '../sys/errno';

const SYS_timer_create = 222, SYS_timer_settime = 223, SYS_timer_gettime = 224, SYS_timer_getoverrun = 225;
const SYS_getitimer = 36, SYS_setitimer = 38, SYS_prctl = 157;
const PR_TIMER_CREATE_RESTORE_IDS = 77, RESTORE_IDS_OFF = 0, RESTORE_IDS_ON = 1;
// sigev_notify values as the kernel knows them, and their /proc/PID/timers names
const NOTIFY = { signal: 0, none: 1, thread: 2, thread_id: 4 } as const;
const INT_MAX = 0x7fffffff;

const Seconds = lazySchema(() => z.number().int().min(0).max(Number.MAX_SAFE_INTEGER));
/** [seconds, nanoseconds] */
const Timespec = lazySchema(() => z.tuple([Seconds, z.number().int().min(0).max(999_999_999)]));
/** [seconds, microseconds] */
const Timeval = lazySchema(() => z.tuple([Seconds, z.number().int().min(0).max(999_999)]));
const Hex64 = lazySchema(() => z.string().regex(/^0x[0-9a-f]{1,16}$/));

export const PosixTimer = lazySchema(() => z.object({
  /** the id timer_create returned: programs keep it, so it comes back the same */
  id: z.number().int().min(0).max(INT_MAX),
  /** clockid as the kernel holds it (CPU clocks encoded, negative) */
  clock: z.number().int().min(-INT_MAX - 1).max(INT_MAX),
  notify: z.enum(['signal', 'none', 'thread', 'thread_id']),
  /** the thread a SIGEV_THREAD_ID timer signals */
  tid: z.number().int().min(1).max(INT_MAX).optional(),
  signo: z.number().int().min(0).max(64),
  /** sigev_value */
  value: Hex64,
  /** time left (volatile: it runs until the checkpoint) and reload interval; [0, 0] = disarmed */
  remaining: Timespec,
  interval: Timespec,
}));
export type PosixTimer = z.infer<typeof PosixTimer>;

export const Itimer = lazySchema(() => z.object({ remaining: Timeval, interval: Timeval }));
export type Itimer = z.infer<typeof Itimer>;

export const TimersState = lazySchema(() => z.object({
  posix: z.array(PosixTimer).max(1 << 20),
  /** ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF */
  real: Itimer,
  virtual: Itimer,
  prof: Itimer,
}));
export type TimersState = z.infer<typeof TimersState>;

interface ProcTimer { id: number; signo: number; value: string; notify: PosixTimer['notify']; target: number; clock: number }

/** /proc/PID/timers: "ID:", "signal: SIG/VALUE", "notify: KIND/pid.N|tid.N", "ClockID:" per timer. */
export function parseProcTimers(text: string, where: string): ProcTimer[] {
  const out: ProcTimer[] = [];
  for (const block of text.split(/(?=^ID:)/m).filter((b) => b.trim())) {
    const m = /^ID: (\d+)\nsignal: (\d+)\/([0-9a-f]+)\nnotify: (\w+)\/(pid|tid)\.(\d+)\nClockID: (-?\d+)\n?$/.exec(block);
    if (!m) throw new StasisError(`${where}: cannot parse /proc timers entry ${JSON.stringify(block.slice(0, 80))}`);
    const kind = m[4], byTid = m[5] === 'tid';
    let notify: PosixTimer['notify'];
    if (kind === 'signal' && byTid) notify = 'thread_id';
    else if (!byTid && (kind === 'signal' || kind === 'none' || kind === 'thread')) notify = kind;
    else throw new UnsupportedError(`${where}: POSIX timer ${m[1]} has notification ${kind}/${m[5]}, which stasis does not know; not supported`);
    out.push({ id: Number(m[1]), signo: Number(m[2]), value: '0x' + BigInt('0x' + m[3]).toString(16), notify, target: Number(m[6]), clock: Number(m[7]) });
  }
  return out;
}

function timespecs(b: Buffer): { interval: [number, number]; remaining: [number, number] } {
  return { interval: [Number(b.readBigInt64LE(0)), Number(b.readBigInt64LE(8))], remaining: [Number(b.readBigInt64LE(16)), Number(b.readBigInt64LE(24))] };
}

/**
 * A CPU clock names its process or thread in the clockid (pid 0: the
 * caller). Restorable: the process's own clock, and a thread clock of a
 * single-threaded process or of a named thread of this process.
 */
function checkClock(clock: number, id: number, pid: number, tids: number[], where: string): number {
  if (clock >= 0) return clock;
  const owner = ~(clock >> 3);
  const perThread = (clock & 4) !== 0;
  if (!perThread) {
    if (owner !== 0 && owner !== pid) throw new UnsupportedError(`${where}: POSIX timer ${id} counts the CPU time of another process (${owner}); not supported: only its own CPU clock is`);
    return clock;
  }
  if (owner === 0 && tids.length > 1) throw new UnsupportedError(`${where}: POSIX timer ${id} counts the CPU time of the thread that created it, which cannot be told in a multi-threaded process; not supported`);
  if (owner !== 0 && !tids.includes(owner)) throw new UnsupportedError(`${where}: POSIX timer ${id} counts the CPU time of task ${owner} outside the process; not supported`);
  return clock;
}

/** Every POSIX timer and interval timer, read through the main thread. */
export function dumpTimers(q: Queries, pid: number, tids: number[]): () => TimersState {
  const where = `pid ${pid}`;
  const posix = parseProcTimers(fs.readFileSync(`/proc/${pid}/timers`, 'utf8'), where).map((t) => {
    const clock = checkClock(t.clock, t.id, pid, tids, where);
    if (t.notify === 'thread_id' && !tids.includes(t.target)) throw new UnsupportedError(`${where}: POSIX timer ${t.id} signals task ${t.target}, not one of its threads; not supported`);
    const spec = q.ask('timer_gettime', SYS_timer_gettime, (out) => [t.id, out], { out: 32, where: `POSIX timer ${t.id}` });
    const overrun = q.ask('timer_getoverrun', SYS_timer_getoverrun, [t.id], { where: `POSIX timer ${t.id}` });
    return (): PosixTimer => {
      const times = timespecs(spec.bytes);
      // The overrun count of the last expiry is kernel state no call can set.
      if (overrun.value !== 0) throw new UnsupportedError(`${where}: POSIX timer ${t.id} reports ${overrun.value} overruns of its last expiry, which cannot be restored; checkpoint once the program has handled that expiry`);
      return { id: t.id, clock, notify: t.notify, ...(t.notify === 'thread_id' ? { tid: t.target } : {}), signo: t.signo, value: t.value, ...times };
    };
  });
  const itimers = [0, 1, 2].map((which) => q.ask('getitimer', SYS_getitimer, (out) => [which, out], { out: 32, where: `interval timer ${which}` }));
  const itimer = (which: number): Itimer => {
    const b = itimers[which].bytes;
    return { interval: [Number(b.readBigInt64LE(0)), Number(b.readBigInt64LE(8))], remaining: [Number(b.readBigInt64LE(16)), Number(b.readBigInt64LE(24))] };
  };
  return () => ({ posix: posix.map((p) => p()).sort((a, b) => a.id - b.id), real: itimer(0), virtual: itimer(1), prof: itimer(2) });
}

const armed = (t: [number, number]) => t[0] !== 0 || t[1] !== 0;

/**
 * A pending SI_TIMER signal goes back as a plain queued siginfo, no longer
 * tied to its timer; for a timer that still reloads, the kernel would then
 * queue a second signal where the original counts an overrun: refused.
 */
export function refuseLinkedTimerSignals(timers: TimersState, pending: Buffer[], where: string): void {
  const SI_TIMER = -2;
  for (const info of pending) {
    if (info.readInt32LE(8) !== SI_TIMER) continue;
    const id = info.readInt32LE(16); // si_timerid: the union starts at 16 on x86-64
    const t = timers.posix.find((x) => x.id === id);
    if (t && armed(t.interval)) throw new UnsupportedError(`${where}: signal ${info.readInt32LE(0)} of periodic POSIX timer ${id} is pending; a periodic timer with its signal queued cannot be restored; checkpoint once the program has taken the signal`);
  }
}

/**
 * Timers created again with the same ids (PR_TIMER_CREATE_RESTORE_IDS makes
 * timer_create take the id from *created_timer_id) and armed with the time
 * they had left. Called last, with every signal blocked, so an expiry
 * cannot be delivered into a process still under construction.
 */
export function restoreTimers(remote: Remote, s: TimersState, savedPid: number): void {
  const where = `pid ${remote.task.pid}`;
  // A process restored under a new pid: its own id in clocks and targets follows.
  const self = (id: number) => (id === savedPid ? remote.task.vtgid : id);
  const clockOf = (clock: number) => (clock < 0 && ~(clock >> 3) === savedPid ? (~self(savedPid) << 3) | (clock & 7) : clock);
  if (s.posix.length) {
    remote.call('prctl', SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0], `${where}: timer ids`);
    try {
      for (const t of s.posix) {
        remote.reset();
        const ev = Buffer.alloc(64); // struct sigevent
        ev.writeBigUInt64LE(BigInt(t.value), 0);
        ev.writeInt32LE(t.signo, 8);
        ev.writeInt32LE(NOTIFY[t.notify], 12);
        if (t.notify === 'thread_id') ev.writeInt32LE(self(t.tid!), 16);
        const evAddr = remote.putBytes(ev);
        const idBuf = Buffer.alloc(4);
        idBuf.writeInt32LE(t.id);
        const idAddr = remote.putBytes(idBuf);
        remote.call('timer_create', SYS_timer_create, [clockOf(t.clock), evAddr, idAddr], `${where}: POSIX timer ${t.id}`);
        if (remote.read(idAddr, 4).readInt32LE(0) !== t.id) throw new StasisError(`${where}: POSIX timer ${t.id} was created with another id`);
        if (!armed(t.remaining)) continue;
        const spec = Buffer.alloc(32);
        spec.writeBigInt64LE(BigInt(t.interval[0]), 0);
        spec.writeBigInt64LE(BigInt(t.interval[1]), 8);
        spec.writeBigInt64LE(BigInt(t.remaining[0]), 16);
        spec.writeBigInt64LE(BigInt(t.remaining[1]), 24);
        remote.call('timer_settime', SYS_timer_settime, [t.id, 0, remote.putBytes(spec), 0], `${where}: arming POSIX timer ${t.id}`);
      }
    } finally {
      remote.call('prctl', SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0], `${where}: timer ids`);
    }
  }
  const tick = armed(s.virtual.remaining) || armed(s.prof.remaining) ? cpuItimerTick(remote) : 0;
  ([[0, s.real], [1, s.virtual], [2, s.prof]] as Array<[number, Itimer]>).forEach(([which, it]) => {
    if (!armed(it.remaining)) return;
    // The kernel adds a tick to a CPU itimer as it is set: take it off the
    // saved time (which already counts it), or every restart adds one.
    let left = it.remaining[0] * 1_000_000 + it.remaining[1];
    if (which !== 0 && left > tick) left -= tick;
    setitimer(remote, which, it.interval, [Math.floor(left / 1_000_000), left % 1_000_000], where);
  });
}

const ITIMER_NAMES = ['ITIMER_REAL', 'ITIMER_VIRTUAL', 'ITIMER_PROF'];

function setitimer(remote: Remote, which: number, interval: [number, number], value: [number, number], where: string): void {
  remote.reset();
  const b = Buffer.alloc(32);
  b.writeBigInt64LE(BigInt(interval[0]), 0);
  b.writeBigInt64LE(BigInt(interval[1]), 8);
  b.writeBigInt64LE(BigInt(value[0]), 16);
  b.writeBigInt64LE(BigInt(value[1]), 24);
  remote.call('setitimer', SYS_setitimer, [which, remote.putBytes(b), 0], `${where}: interval timer ${ITIMER_NAMES[which]}`);
}

/**
 * The tick the kernel adds to a CPU itimer, in microseconds: ITIMER_VIRTUAL
 * set to 1 s reads back as 1 s plus a tick (no user time passes in between:
 * the task is stopped). It is set to its saved value right after.
 */
function cpuItimerTick(remote: Remote): number {
  const VIRTUAL = 1;
  setitimer(remote, VIRTUAL, [0, 0], [1, 0], `pid ${remote.task.pid}: measuring the CPU timer tick`);
  remote.reset();
  const buf = remote.alloc(32);
  remote.call('getitimer', SYS_getitimer, [VIRTUAL, buf], 'measuring the CPU timer tick');
  const b = remote.read(buf, 32);
  setitimer(remote, VIRTUAL, [0, 0], [0, 0], `pid ${remote.task.pid}: measuring the CPU timer tick`);
  const got = Number(b.readBigInt64LE(16)) * 1_000_000 + Number(b.readBigInt64LE(24));
  return Math.min(Math.max(got - 1_000_000, 0), 100_000);
}

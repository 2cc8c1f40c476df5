// signalfd and timerfd: small file descriptors whose whole state is in
// fdinfo. A signalfd is its signal mask; a timerfd is its clock, its
// remaining time and interval, and the expirations not yet read.
import { z, lazySchema } from '../image/zod';
import { Fdinfo } from '../proc';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { StasisError } from '../sys/errno';
import { int, count, hex64, decimalU64 } from '../image/fields';
import { FdKind } from './fdkind';

const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
const TFD_IOC_SET_TICKS = 0x40085400;

/** [seconds, nanoseconds] */
const Timespec = lazySchema(() => z.tuple([count, int(0, 999_999_999)]));

/** The signal mask it reads (hex). */
export const SignalfdFd = lazySchema(() => z.object({ kind: z.literal('signalfd'), signalfd: z.object({ mask: hex64 }) }));
export type SignalfdFd = z.infer<typeof SignalfdFd>;
type SignalfdState = SignalfdFd['signalfd'];

/** Clock, remaining time and interval, expirations not yet read (decimal). */
export const TimerfdFd = lazySchema(() => z.object({
  kind: z.literal('timerfd'),
  timerfd: z.object({ clock: int(0, 11), value: Timespec, interval: Timespec, ticks: decimalU64 }),
}));
export type TimerfdFd = z.infer<typeof TimerfdFd>;
type TimerfdState = TimerfdFd['timerfd'];

export const signalfdKind: FdKind<SignalfdFd> = {
  kinds: ['signalfd'],
  claims: (f) => f.target === 'anon_inode:[signalfd]',
  dump: (f) => ({ kind: 'signalfd', pos: 0, signalfd: dumpSignalfd(f.info(), f.where) }),
  sharingKey: (r) => r.path, // kcmp tells them apart
  open: (remote, r, _ctx, where) => createSignalfd(remote, r.signalfd, r.flags, r.cloexec, where),
};

export const timerfdKind: FdKind<TimerfdFd> = {
  kinds: ['timerfd'],
  claims: (f) => f.target === 'anon_inode:[timerfd]',
  dump: (f) => ({ kind: 'timerfd', pos: 0, timerfd: dumpTimerfd(f.info(), f.where) }),
  sharingKey: (r) => r.path,
  open: (remote, r, _ctx, where) => createTimerfd(remote, r.timerfd, r.flags, r.cloexec, where),
};

function dumpSignalfd(info: Fdinfo, where: string): SignalfdState {
  const mask = info.raw['sigmask'];
  if (mask === undefined) throw new StasisError(`${where}: signalfd without sigmask in fdinfo`);
  return { mask: '0x' + mask.trim() };
}

function timespec(text: string | undefined, what: string): [number, number] {
  const m = /\((\d+),\s*(\d+)\)/.exec(text ?? '');
  if (!m) throw new StasisError(`${what}: cannot read the timer from fdinfo`);
  return [Number(m[1]), Number(m[2])];
}

function dumpTimerfd(info: Fdinfo, where: string): TimerfdState {
  return {
    clock: Number(info.raw['clockid']),
    value: timespec(info.raw['it_value'], where),
    interval: timespec(info.raw['it_interval'], where),
    ticks: BigInt(info.raw['ticks']?.trim() ?? '0').toString(),
  };
}

function fdFlags(flags: number, cloexec: boolean): number {
  return (flags & O_NONBLOCK) | (cloexec ? O_CLOEXEC : 0);
}

function createSignalfd(remote: Remote, s: SignalfdState, flags: number, cloexec: boolean, where: string): number {
  remote.reset();
  const mask = Buffer.alloc(8);
  mask.writeBigUInt64LE(BigInt(s.mask));
  return remote.call('signalfd4', SYS.signalfd4, [-1, remote.putBytes(mask), 8, fdFlags(flags, cloexec)], where);
}

/**
 * The timer is armed again with the time that was left (relative: an
 * absolute deadline on CLOCK_REALTIME becomes the same remaining time);
 * unread expirations are put back with TFD_IOC_SET_TICKS. A periodic timer
 * whose expiry passed unread shows no time left (the kernel re-arms it only
 * when read): it is armed one period ahead, or it would never fire again.
 */
function createTimerfd(remote: Remote, t: TimerfdState, flags: number, cloexec: boolean, where: string): number {
  const fd = remote.call('timerfd_create', SYS.timerfd_create, [t.clock, fdFlags(flags, cloexec)], where);
  remote.reset();
  const value = t.value[0] || t.value[1] ? t.value : t.interval;
  if (value[0] || value[1]) {
    const spec = Buffer.alloc(32);
    spec.writeBigInt64LE(BigInt(t.interval[0]), 0);
    spec.writeBigInt64LE(BigInt(t.interval[1]), 8);
    spec.writeBigInt64LE(BigInt(value[0]), 16);
    spec.writeBigInt64LE(BigInt(value[1]), 24);
    remote.call('timerfd_settime', SYS.timerfd_settime, [fd, 0, remote.putBytes(spec), 0], `${where}: arming`);
  }
  if (BigInt(t.ticks) > 0n) {
    const ticks = Buffer.alloc(8);
    ticks.writeBigUInt64LE(BigInt(t.ticks));
    remote.call('ioctl', SYS.ioctl, [fd, TFD_IOC_SET_TICKS, remote.putBytes(ticks)], `${where}: unread expirations`);
  }
  return fd;
}

// eventfd: a 64-bit counter with a semaphore mode. Saved from fdinfo,
// recreated inside the task with eventfd2 at the same count and flags.
import { z, lazySchema } from '../image/zod';
import { Fdinfo } from '../proc';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { StasisError } from '../sys/errno';
import { count, decimalU64 } from '../image/fields';
import { FdKind } from './fdkind';

const EFD_SEMAPHORE = 1, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;

/** The counter (decimal, 64-bit), semaphore mode and the kernel's id of the object (tells two apart). */
export const EventfdState = lazySchema(() => z.object({ count: decimalU64, semaphore: z.boolean(), id: count }));
export type EventfdState = z.infer<typeof EventfdState>;
export const EventfdFd = lazySchema(() => z.object({ kind: z.literal('eventfd'), eventfd: EventfdState }));
export type EventfdFd = z.infer<typeof EventfdFd>;

export const eventfdKind: FdKind<EventfdFd> = {
  kinds: ['eventfd'],
  claims: (f) => f.target === 'anon_inode:[eventfd]',
  dump: (f) => ({ kind: 'eventfd', pos: 0, eventfd: dumpEventfd(f.info(), f.where) }),
  sharingKey: (r) => `eventfd:${r.eventfd.id}`,
  open: (remote, r, _ctx, where) => createEventfd(remote, r.eventfd, r.flags, r.cloexec, where),
};

function dumpEventfd(info: Fdinfo, where: string): EventfdState {
  const count = info.raw['eventfd-count'];
  if (count === undefined) throw new StasisError(`${where}: eventfd without eventfd-count in fdinfo`);
  // fdinfo prints the counter in hexadecimal.
  return { count: BigInt('0x' + count.trim()).toString(), semaphore: info.raw['eventfd-semaphore']?.trim() === '1', id: Number(info.raw['eventfd-id'] ?? info.ino ?? 0) };
}

/** A new eventfd in the task, at the lowest free fd; returns it. */
function createEventfd(remote: Remote, e: EventfdState, fdFlags: number, cloexec: boolean, where: string): number {
  const flags = (e.semaphore ? EFD_SEMAPHORE : 0) | (fdFlags & O_NONBLOCK) | (cloexec ? O_CLOEXEC : 0);
  // eventfd2 takes an unsigned int: a larger count is added with write(2).
  const count = BigInt(e.count);
  const initial = count <= 0xffffffffn ? count : 0n;
  const fd = remote.call('eventfd2', SYS.eventfd2, [initial, flags], where);
  if (initial !== count) {
    remote.reset();
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(count);
    remote.call('write', SYS.write, [fd, remote.putBytes(b), 8], `${where}: counter`);
  }
  return fd;
}

// epoll: the interest list (target fd, events, data) read from fdinfo and
// registered again with epoll_ctl, once every other fd of the process is
// back. Level-triggered readiness is recomputed by the kernel; an
// edge-triggered event that had fired but was not yet collected is lost.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { Fdinfo } from '../proc';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { UnsupportedError } from '../sys/errno';
import { fd, hex32, hex64 } from '../image/fields';
import { FdKind } from './fdkind';

const O_CLOEXEC = 0o2000000, EPOLL_CTL_ADD = 1;

/** One registration: the watched fd of this process, its events mask and user data (hex). */
export const EpollTarget = lazySchema(() => z.object({ fd, events: hex32, data: hex64 }));
export type EpollTarget = z.infer<typeof EpollTarget>;
export const EpollFd = lazySchema(() => z.object({ kind: z.literal('epoll'), epoll: z.array(EpollTarget).max(1 << 16) }));
export type EpollFd = z.infer<typeof EpollFd>;

export const epollKind: FdKind<EpollFd> = {
  kinds: ['epoll'],
  claims: (f) => f.target === 'anon_inode:[eventpoll]',
  dump: (f) => ({ kind: 'epoll', pos: 0, epoll: dumpEpoll(f.pid, f.info(), f.where) }),
  sharingKey: (r) => r.path, // kcmp tells them apart
  open: (remote, r, _ctx, where) => createEpoll(remote, r.epoll, r.cloexec, where),
  late: true, // it watches fds of every other kind
};

function dumpEpoll(pid: number, info: Fdinfo, where: string): EpollTarget[] {
  const out: EpollTarget[] = [];
  for (const line of info.lines) {
    const m = /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*\d+\s+ino:\s*([0-9a-f]+)/.exec(line);
    if (!m) continue;
    const fd = Number(m[1]);
    // The registration names an open file, not an fd: the fd must still be it.
    let ino: bigint;
    try {
      ino = fs.statSync(`/proc/${pid}/fd/${fd}`, { bigint: true }).ino;
    } catch {
      throw new UnsupportedError(`${where}: watches fd ${fd}, which is closed now; not supported yet`);
    }
    if (ino !== BigInt('0x' + m[4])) throw new UnsupportedError(`${where}: watches a file that fd ${fd} no longer refers to; not supported yet`);
    out.push({ fd, events: '0x' + m[2], data: '0x' + m[3] });
  }
  return out;
}

/** A new epoll at the lowest free fd with every registration made again; returns it. */
function createEpoll(remote: Remote, targets: EpollTarget[], cloexec: boolean, where: string): number {
  const ep = remote.call('epoll_create1', SYS.epoll_create1, [cloexec ? O_CLOEXEC : 0], where);
  remote.reset();
  const calls = targets.map((t) => {
    const ev = Buffer.alloc(12); // struct epoll_event is packed on x86-64
    ev.writeUInt32LE(Number(BigInt(t.events)), 0);
    ev.writeBigUInt64LE(BigInt(t.data), 4);
    return { name: 'epoll_ctl', nr: SYS.epoll_ctl, args: [ep, EPOLL_CTL_ADD, t.fd, remote.putBytes(ev)], where: `${where}: watching fd ${t.fd}` };
  });
  remote.batch(calls);
  return ep;
}

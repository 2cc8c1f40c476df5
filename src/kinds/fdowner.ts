// Signal-driven I/O state of an open file description: the owner that gets
// SIGIO/SIGURG (F_SETOWN_EX: a thread, a process or a process group), the
// signal sent instead of SIGIO (F_SETSIG) and O_ASYNC. Read with fcntl
// injected into the task, set again the same way once the owner exists.
// dnotify (F_NOTIFY) is refused: it shows only as an owner on a directory.
import { z, lazySchema } from '../image/zod';
import type { ImageFd, ImageProcess } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { SYS } from '../sys/x86';
import { UnsupportedError } from '../sys/errno';

export const FdOwner = lazySchema(() => z.object({
  /** F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2 */
  type: z.number().int().min(0).max(2),
  /** 0: no owner */
  pid: z.number().int().min(0).max(4194304),
  /** F_SETSIG: 0 means SIGIO */
  sig: z.number().int().min(0).max(64),
}));
export type FdOwner = z.infer<typeof FdOwner>;

const F_SETFL = 4, F_SETSIG = 10, F_GETSIG = 11, F_SETOWN_EX = 15, F_GETOWN_EX = 16;
const F_OWNER_TID = 0, F_OWNER_PID = 1, F_OWNER_PGRP = 2;
export const O_ASYNC = 0o20000;
const O_PATH = 0o10000000;
const OWNER_NAMES = ['thread', 'process', 'process group'];

/** The fds that stand for their open file description (the others are dups of them). */
const owning = (f: ImageFd) => f.sameAs === undefined && !f.sharedWith && !(f.flags & O_PATH);

/** Owner and signal of every open file description of the process, where set. */
export function dumpFdOwners(q: Queries, fds: ImageFd[]): () => ImageFd[] {
  // Every owning fd's F_GETOWN_EX (a struct in scratch) and F_GETSIG.
  const answers = new Map(fds.filter(owning).map((f) => {
    const where = `fd ${f.fd} of pid ${q.pid}`;
    return [f.fd, {
      owner: q.ask('fcntl(F_GETOWN_EX)', SYS.fcntl, (out) => [f.fd, F_GETOWN_EX, out], { out: 8, where }),
      sig: q.ask('fcntl(F_GETSIG)', SYS.fcntl, [f.fd, F_GETSIG], { where }),
    }];
  }));
  return () => fds.map((f) => {
    const a = answers.get(f.fd);
    if (!a) return f;
    const where = `fd ${f.fd} of pid ${q.pid}`;
    const raw = a.owner.bytes;
    const owner = { type: raw.readInt32LE(0), pid: raw.readInt32LE(4), sig: a.sig.value };
    // Directories raise no SIGIO: an owner there was set by F_NOTIFY, whose watch is invisible.
    if (f.kind === 'dir' && owner.pid) {
      throw new UnsupportedError(`${where} (${f.path}): the directory has a signal owner, set by F_NOTIFY (dnotify), which stasis cannot restore; use inotify, or cancel it with F_NOTIFY 0 before the checkpoint`);
    }
    return owner.pid || owner.sig ? { ...f, owner } : f;
  });
}

/**
 * An owner must come back with the tree: a process, process group or
 * thread of it, restored no later than the fd's process (a thread is
 * created while its own process is rebuilt).
 */
export function refuseForeignOwners(images: ImageProcess[]): void {
  images.forEach((p, i) => {
    for (const f of p.fds) {
      const o = f.owner;
      if (!o || !o.pid) continue;
      const ok = o.type === F_OWNER_PID ? images.some((q) => q.pid === o.pid)
        : o.type === F_OWNER_PGRP ? images.some((q) => q.pgid === o.pid)
          : images.slice(0, i + 1).some((q) => q.threads.some((t) => t.tid === o.pid));
      if (!ok) {
        const later = o.type === F_OWNER_TID && images.some((q) => q.threads.some((t) => t.tid === o.pid));
        throw new UnsupportedError(`fd ${f.fd} of pid ${p.pid} (${f.path}): its F_SETOWN owner, ${OWNER_NAMES[o.type]} ${o.pid}, ${later ? 'is a thread of a process restored after it; not supported' : 'is outside the tree; set another owner (F_SETOWN) or checkpoint the owner with the tree'}`);
      }
    }
  });
}

/** Owner, signal and O_ASYNC, once every process and this process's threads exist. */
export function restoreFdOwners(remote: Remote, fds: ImageFd[]): void {
  for (const f of fds) {
    if (!owning(f)) continue;
    const where = `fd ${f.fd} (${f.path})`;
    remote.reset();
    if (f.owner?.pid) {
      const b = Buffer.alloc(8);
      b.writeInt32LE(f.owner.type, 0);
      b.writeInt32LE(f.owner.pid, 4);
      remote.call('fcntl(F_SETOWN_EX)', SYS.fcntl, [f.fd, F_SETOWN_EX, remote.putBytes(b)], where);
    }
    if (f.owner?.sig) remote.call('fcntl(F_SETSIG)', SYS.fcntl, [f.fd, F_SETSIG, f.owner.sig], where);
    // Opened without it: only F_SETFL registers the file for SIGIO.
    if (f.flags & O_ASYNC) remote.call('fcntl(F_SETFL)', SYS.fcntl, [f.fd, F_SETFL, f.flags], where);
  }
}

export { F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP };

// POSIX message queues (mq_open): an fd on a queue of the mqueue file
// system. The queue is an object of the IPC namespace that outlives the
// process, shared by every fd opened on it (in any process): its name,
// attributes, owner, mode and the queued messages with their priorities
// are saved once, in the Objects record's `mqueues` table.
//
// Messages cannot be read without consuming them: with the tree frozen and
// no process outside it holding the queue open (refused otherwise), stasis
// receives them all through its own fd and sends them back in the same
// order, which rebuilds the queue exactly (priority order, FIFO within a
// priority). A registered notification (mq_notify) would fire on that
// refill and is not restorable: refused by name.
//
// At restart stasis holds each queue while the tasks open it through
// /proc/<stasis>/fd/N: a named queue that still exists is used when it is
// the same (attributes, owner, mode and the very messages saved: compared
// by the same receive-and-send-back), otherwise refused; a missing one is
// created with the saved attributes and filled. An unlinked queue is made
// again under its name (or a unique one when that is taken), filled and
// unlinked.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import type { ImageCreds, ImageProcess } from '../image/schema';
import { outsideFdLinks } from '../proc';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { count, int, u32, base64Max } from '../image/fields';
import { FdKind, ObjectTable, openHeld } from './fdkind';
import { mayOpen } from './regular';

const SYS_MQ_OPEN = 240, SYS_MQ_UNLINK = 241, SYS_MQ_TIMEDSEND = 242, SYS_MQ_TIMEDRECEIVE = 243, SYS_MQ_GETSETATTR = 245;
const MQUEUE_MAGIC = 0x19800202;
const O_RDWR = 2, O_CREAT = 0o100, O_EXCL = 0o200, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
/** The kernel's hard limits (HARD_MSGMAX, HARD_MSGSIZEMAX) and MQ_PRIO_MAX. */
const MSG_MAX = 65536, MSGSIZE_MAX = 16 << 20, PRIO_MAX = 32768;
/** The fd record's path for a queue that was unlinked: its name is in the table, the link text may change. */
export const UNLINKED_PATH = 'mqueue:[unlinked]';

/** "/NAME": one path component in the mqueue file system. */
const mqName = lazySchema(() => z.string().max(256).regex(/^\/[^/\0]{1,255}$/, 'not "/" and a queue name without "/" or NUL'));

export const MqueueObject = lazySchema(() => z.object({
  /** inode number at checkpoint */
  id: count,
  name: mqName,
  /** unlinked (mq_unlink) while open: made again and unlinked at restart */
  unlinked: z.boolean(),
  mode: int(0, 0o777),
  uid: u32,
  gid: u32,
  maxmsg: int(1, MSG_MAX),
  msgsize: int(1, MSGSIZE_MAX),
  /** in receive order: highest priority first, FIFO within one priority */
  messages: z.array(z.object({ prio: int(0, PRIO_MAX - 1), data: base64Max(MSGSIZE_MAX) })).max(MSG_MAX),
}));
export type MqueueObject = z.infer<typeof MqueueObject>;

/** An fd on a message queue: its id in the Objects record's `mqueues` table. */
export const MqueueFd = lazySchema(() => z.object({ kind: z.literal('mqueue'), mqueue: count }));
export type MqueueFd = z.infer<typeof MqueueFd>;

function isMqueue(p: string): boolean {
  try {
    return fs.statfsSync(p).type === MQUEUE_MAGIC;
  } catch {
    return false;
  }
}

export const mqueueKind: FdKind<MqueueFd> = {
  kinds: ['mqueue'],
  claims: (f) => f.target.startsWith('/') && f.stat().isFile() && isMqueue(`/proc/${f.pid}/fd/${f.fd}`),
  dump(f, ctx) {
    const st = f.stat();
    const unlinked = st.nlink === 0n;
    const name = unlinked ? f.target.replace(/ \(deleted\)$/, '') : f.target;
    const id = ctx.table(MqueueTable).note(f.pid, f.fd, Number(st.ino), name, unlinked, f.where);
    return { kind: 'mqueue', pos: 0, mqueue: id, ...(unlinked ? { path: UNLINKED_PATH } : {}) };
  },
  sharingKey: (r) => `mqueue:${r.mqueue}`,
  open(remote, r, ctx, where) {
    if (!ctx.mqueues) throw new StasisError(`${where}: a message queue without the Objects record's mqueues table`);
    return openHeld(remote, ctx.mqueues.pathFor(r.mqueue, where), r, where);
  },
};

interface Attr { maxmsg: number; msgsize: number; curmsgs: number }

function getattr(fd: number): Attr {
  const a = Buffer.alloc(64); // struct mq_attr: flags, maxmsg, msgsize, curmsgs, 4 reserved
  syscall(SYS_MQ_GETSETATTR, 'mq_getsetattr', fd, 0, a);
  return { maxmsg: Number(a.readBigInt64LE(8)), msgsize: Number(a.readBigInt64LE(16)), curmsgs: Number(a.readBigInt64LE(24)) };
}

interface Message { prio: number; data: Buffer }

/**
 * Every message of the queue behind `fd` (opened O_RDWR|O_NONBLOCK), in
 * receive order, taken out and sent back in that order: the queue is as it
 * was. Only where nobody else uses the queue meanwhile.
 */
function peekAll(fd: number, msgsize: number, what: string): Message[] {
  const got: Message[] = [];
  const buf = Buffer.alloc(msgsize), prio = Buffer.alloc(4);
  try {
    for (;;) {
      let n: number;
      try {
        n = syscall(SYS_MQ_TIMEDRECEIVE, 'mq_timedreceive', fd, buf, msgsize, prio, 0);
      } catch (e) {
        if ((e as { code?: string }).code === 'EAGAIN') break; // empty
        throw e;
      }
      got.push({ prio: prio.readUInt32LE(0), data: Buffer.from(buf.subarray(0, n)) });
    }
  } finally {
    sendAll(fd, got, what);
  }
  return got;
}

function sendAll(fd: number, messages: Message[], what: string): void {
  messages.forEach((m, i) => {
    try {
      syscall(SYS_MQ_TIMEDSEND, 'mq_timedsend', fd, m.data, m.data.length, m.prio, 0);
    } catch (e) {
      throw new StasisError(`${what}: putting message ${i + 1} of ${messages.length} back: ${(e as Error).message}`);
    }
  });
}

/** The notification line the kernel gives on read(2) of a queue: NOTIFY_PID is the registered process. */
function notifyPid(fd: number): number {
  const b = Buffer.alloc(128);
  const n = fs.readSync(fd, b, 0, b.length, 0);
  const m = /NOTIFY_PID:(\d+)/.exec(b.subarray(0, n).toString());
  return m ? Number(m[1]) : 0;
}

interface Seen { holder: { pid: number; fd: number; where: string }; name: string; unlinked: boolean; st: fs.Stats; attr: Attr }

/** The queues of one checkpoint, each saved once. */
export class MqueueTable implements ObjectTable {
  private readonly queues = new Map<number, Seen>();

  /** A queue seen at fd `fd` of `pid`; refuses one with a notification registered. */
  note(pid: number, fd: number, ino: number, name: string, unlinked: boolean, where: string): number {
    if (this.queues.has(ino)) return ino;
    const q = openQueue(`/proc/${pid}/fd/${fd}`, where);
    try {
      const notify = notifyPid(q);
      if (notify) {
        throw new UnsupportedError(`${where}: message queue ${name} has a notification registered (mq_notify) by pid ${notify}, which stasis cannot restore yet; cancel it (mq_notify with NULL) before the checkpoint`);
      }
      this.queues.set(ino, { holder: { pid, fd, where }, name, unlinked, st: fs.fstatSync(q), attr: getattr(q) });
    } finally {
      fs.closeSync(q);
    }
    return ino;
  }

  /** A queue also open outside the tree could be read or written meanwhile: refused by name. */
  refuseOutsiders(tree: Set<number>): void {
    if (!this.queues.size) return;
    const names = new Map([...this.queues].map(([ino, q]) => [q.unlinked ? `${q.name} (deleted)` : q.name, ino]));
    for (const { pid, fd, link } of outsideFdLinks(tree)) {
      const ino = names.get(link);
      if (ino === undefined) continue;
      try {
        if (fs.statSync(`/proc/${pid}/fd/${fd}`).ino !== ino || !isMqueue(`/proc/${pid}/fd/${fd}`)) continue;
      } catch {
        continue; // closed meanwhile
      }
      const q = this.queues.get(ino)!;
      throw new UnsupportedError(`${q.holder.where}: message queue ${q.name} is also open in pid ${pid} outside the tree, which may send or receive meanwhile; checkpoint that process with the tree, or close the queue there`);
    }
  }

  collect(): { mqueues: MqueueObject[] } | Record<string, never> {
    if (!this.queues.size) return {};
    const out: MqueueObject[] = [];
    for (const [id, q] of this.queues) {
      const fd = openQueue(`/proc/${q.holder.pid}/fd/${q.holder.fd}`, q.holder.where);
      let messages: Message[];
      try {
        messages = peekAll(fd, q.attr.msgsize, `${q.holder.where}: message queue ${q.name}`);
      } finally {
        fs.closeSync(fd);
      }
      out.push({
        id, name: q.name, unlinked: q.unlinked, mode: q.st.mode & 0o777, uid: q.st.uid, gid: q.st.gid,
        maxmsg: q.attr.maxmsg, msgsize: q.attr.msgsize, messages: messages.map((m) => ({ prio: m.prio, data: m.data.toString('base64') })),
      });
    }
    return { mqueues: out };
  }
}

/** Our own read-write, non-blocking description of a queue, through a /proc link. */
function openQueue(procPath: string, where: string): number {
  try {
    return fs.openSync(procPath, O_RDWR | O_NONBLOCK);
  } catch (e) {
    throw new StasisError(`${where}: cannot open its message queue through ${procPath} (${(e as NodeJS.ErrnoException).code})`);
  }
}

function mqOpen(name: string, flags: number, mode = 0, attr?: { maxmsg: number; msgsize: number }): number {
  let a: Buffer | number = 0;
  if (attr) {
    a = Buffer.alloc(64);
    a.writeBigInt64LE(BigInt(attr.maxmsg), 8);
    a.writeBigInt64LE(BigInt(attr.msgsize), 16);
  }
  // The system call takes the name without its leading "/".
  return syscall(SYS_MQ_OPEN, 'mq_open', Buffer.from(name.slice(1) + '\0'), flags | O_CLOEXEC, mode, a);
}

function mqUnlink(name: string): void {
  syscall(SYS_MQ_UNLINK, 'mq_unlink', Buffer.from(name.slice(1) + '\0'));
}

const sameMessages = (a: Message[], b: MqueueObject['messages']) =>
  a.length === b.length && a.every((m, i) => m.prio === b[i].prio && m.data.toString('base64') === b[i].data);

/** Restore side: stasis holds each queue until every task has opened it. */
export class MqueueKeeper {
  private readonly held = new Map<number, number>();
  /** named queues this restart created: removed again if it fails */
  private readonly created: string[] = [];
  /** How a task reaches one of our fds (through the namespace init in a user-namespace restart). */
  fdPath = (fd: number) => `/proc/${process.pid}/fd/${fd}`;

  /** Every queue of the image, found or made; `processes` to check who may open what. */
  constructor(queues: MqueueObject[], processes: ImageProcess[]) {
    try {
      for (const q of queues) this.held.set(q.id, this.make(q));
      for (const p of processes) {
        for (const f of p.fds) {
          if (f.kind !== 'mqueue' || f.sameAs !== undefined || f.sharedWith) continue;
          const fd = this.held.get(f.mqueue);
          if (fd === undefined) continue; // refused by validation
          this.checkAccess(fd, f.flags, p.creds, `pid ${p.pid}: fd ${f.fd}`);
        }
      }
    } catch (e) {
      this.close(true);
      throw e;
    }
  }

  /** A restart as root opens no queue the saved process could not have opened so. */
  private checkAccess(fd: number, flags: number, creds: ImageCreds, where: string): void {
    if (!mayOpen(fs.fstatSync(fd), flags, creds)) {
      throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not open its message queue ${(flags & 3) === 0 ? 'for reading' : 'for writing'}; refusing to open it with this restarter's rights`);
    }
  }

  private make(q: MqueueObject): number {
    const what = `message queue ${q.name}`;
    const messages = q.messages.map((m) => ({ prio: m.prio, data: Buffer.from(m.data, 'base64') }));
    if (messages.some((m) => m.data.length > q.msgsize) || messages.length > q.maxmsg) {
      throw new StasisError(`${what}: the image holds messages that do not fit its attributes`);
    }
    if (!q.unlinked) {
      let fd = -1;
      try {
        fd = mqOpen(q.name, O_RDWR | O_NONBLOCK);
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENOENT') throw new StasisError(`${what}: cannot open it (${(e as { code?: string }).code})`);
      }
      if (fd >= 0) {
        try {
          this.checkSame(fd, q, what);
        } catch (e) {
          fs.closeSync(fd);
          throw e;
        }
        return fd;
      }
    }
    // Unlinked: under its own name when free, else a name of ours; unlinked once filled.
    const names = q.unlinked ? [q.name, `/stasis-${process.pid}-${q.id}`] : [q.name];
    for (const name of names) {
      let fd: number;
      try {
        fd = mqOpen(name, O_RDWR | O_NONBLOCK | O_CREAT | O_EXCL, q.mode, q);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EEXIST' && name !== names[names.length - 1]) continue;
        const why = code === 'EINVAL' || code === 'EPERM' ? `; its ${q.maxmsg} messages of ${q.msgsize} bytes may exceed /proc/sys/fs/mqueue/msg_max or msgsize_max, which only CAP_SYS_RESOURCE passes` : code === 'EMFILE' ? ': RLIMIT_MSGQUEUE or queues_max reached' : '';
        throw new StasisError(`${what}: cannot create it (${code})${why}`);
      }
      if (!q.unlinked) this.created.push(name);
      try {
        fs.fchmodSync(fd, q.mode); // mq_open applies our umask
        const st = fs.fstatSync(fd);
        if (st.uid !== q.uid || st.gid !== q.gid) fs.fchownSync(fd, q.uid, q.gid);
        sendAll(fd, messages, what);
        if (q.unlinked) mqUnlink(name);
      } catch (e) {
        fs.closeSync(fd);
        if (q.unlinked) { try { mqUnlink(name); } catch { /* gone */ } }
        throw e instanceof StasisError ? e : new StasisError(`${what}: ${(e as Error).message}`);
      }
      return fd;
    }
    throw new StasisError(`${what}: no name to create it under`); // not reached
  }

  /** An existing queue is used only when it is the saved one, messages and all. */
  private checkSame(fd: number, q: MqueueObject, what: string): void {
    const st = fs.fstatSync(fd);
    const attr = getattr(fd);
    const diffs: string[] = [];
    if (attr.maxmsg !== q.maxmsg || attr.msgsize !== q.msgsize) diffs.push(`attributes ${attr.maxmsg}x${attr.msgsize} bytes where the image has ${q.maxmsg}x${q.msgsize}`);
    if ((st.mode & 0o777) !== q.mode || st.uid !== q.uid || st.gid !== q.gid) diffs.push(`owner ${st.uid}:${st.gid} mode ${(st.mode & 0o777).toString(8)} where the image has ${q.uid}:${q.gid} mode ${q.mode.toString(8)}`);
    if (!diffs.length) {
      // Nobody else may take a message while they are compared.
      for (const { pid, fd: ofd, link } of outsideFdLinks(new Set([process.pid]))) {
        if (link !== q.name) continue;
        try {
          if (fs.statSync(`/proc/${pid}/fd/${ofd}`).ino !== st.ino) continue;
        } catch {
          continue;
        }
        throw new StasisError(`${what}: exists and is open in pid ${pid}; end that process, or remove the queue (mq_unlink) to restart with the saved one`);
      }
      const now = peekAll(fd, attr.msgsize, what);
      if (!sameMessages(now, q.messages)) diffs.push(`${now.length} messages that are not the ${q.messages.length} saved`);
    }
    if (diffs.length) {
      throw new StasisError(`${what}: exists with ${diffs.join(', ')}; remove it (mq_unlink) to restart with the saved queue, or restore it as it was`);
    }
  }

  /** The path a task opens to reach queue `id`. */
  pathFor(id: number, where: string): string {
    const fd = this.held.get(id);
    if (fd === undefined) throw new StasisError(`${where}: the image names message queue ${id} but carries no such queue`);
    return this.fdPath(fd);
  }

  heldFds(): number[] {
    return [...this.held.values()];
  }

  /** `failed`: the restart did not happen; queues it created go again. */
  close(failed = false): void {
    for (const fd of this.held.values()) fs.closeSync(fd);
    this.held.clear();
    if (failed) for (const name of this.created) { try { mqUnlink(name); } catch { /* gone */ } }
    this.created.length = 0;
  }
}

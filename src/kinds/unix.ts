// Unix domain sockets: stream, datagram and seqpacket; socketpairs, sockets
// bound to a path or an abstract name, listening sockets, connections made
// through a listener, the data queued in them (message boundaries kept),
// shutdown state and socket options.
//
// Checkpoint: sock_diag (UNIX_DIAG) tells each socket's type, state, name,
// peer, pending connections and shutdown state without touching it; stasis
// takes a copy of each socket with pidfd_getfd to read its options and to
// peek at its queue (MSG_PEEK from SO_PEEK_OFF 0, the task's own peek
// offset put back): nothing is consumed.
//
// Restart: stasis makes every socket itself, before any task exists
// (socketpair, or bind/listen/connect/accept so names and peers are as
// they were), queues the saved data from the right sender, shuts down and
// sets options, then hands each socket to the task that holds it: the task
// connects (injected calls) to an abstract courier socket of stasis and
// receives the socket with SCM_RIGHTS. That works the same as root, in a
// new pid namespace and in a user's new user namespace, where the task
// may not reach stasis's fds with pidfd_getfd or through /proc.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import type { ImageCreds, ImageProcess } from '../image/schema';
import { outsideFdLinks } from '../proc';
import { sockDiag, rtAttrs } from '../sys/netlink';
import { syscall, addressOf } from '../sys/libc';
import { SYS } from '../sys/x86';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';
import { count, int, base64Max, path as absPath } from '../image/fields';
import { FdKind, FoundFd, ObjectTable } from './fdkind';
import { Remote, AT_FDCWD } from '../ptrace/remote';

const SYS_SOCKET = 41, SYS_CONNECT = 42, SYS_RECVFROM = 45, SYS_ACCEPT4 = 288, SYS_SENDMSG = 46, SYS_RECVMSG = 47, SYS_SHUTDOWN = 48;
const SYS_BIND = 49, SYS_LISTEN = 50, SYS_SOCKETPAIR = 53, SYS_SETSOCKOPT = 54, SYS_GETSOCKOPT = 55;
const SYS_UNLINKAT = 263, SYS_OPENAT2 = 437;
const AF_UNIX = 1, SOL_SOCKET = 1, SCM_RIGHTS = 1;
const SOCK_CLOEXEC = 0o2000000, SOCK_NONBLOCK = 0o4000, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
const MSG_PEEK = 2, MSG_OOB = 1, MSG_TRUNC = 0x20, MSG_DONTWAIT = 0x40, MSG_CTRUNC = 8, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
const SO_PEEK_OFF = 42, SO_PEERCRED = 17, SO_SNDBUF = 7, SO_RCVBUF = 8, SO_SNDBUFFORCE = 32, SO_RCVBUFFORCE = 33;
const SO_PASSCRED = 16, SO_PASSPIDFD = 76, SO_OOBINLINE = 10;
const O_PATH = 0o10000000, O_DIRECTORY = 0o200000, RESOLVE_NO_SYMLINKS = 4;
const F_SETFL = 4;
const SOCKET_TYPES = { stream: 1, dgram: 2, seqpacket: 5 } as const;
type SocketType = keyof typeof SOCKET_TYPES;
const TCP_ESTABLISHED = 1, TCP_CLOSE = 7, TCP_LISTEN = 10;
const UDIAG_SHOW_NAME = 1, UDIAG_SHOW_VFS = 2, UDIAG_SHOW_PEER = 4, UDIAG_SHOW_ICONS = 8, UDIAG_SHOW_RQLEN = 0x10;
const UNIX_DIAG_NAME = 0, UNIX_DIAG_VFS = 1, UNIX_DIAG_PEER = 2, UNIX_DIAG_ICONS = 3, UNIX_DIAG_RQLEN = 4, UNIX_DIAG_SHUTDOWN = 6;
/** sun_path bytes */
const NAME_MAX = 108;
/** Largest datagram stasis peeks at (the kernel caps one at the sender's send buffer). */
const PEEK_BUF = 8 << 20;

/**
 * SOL_SOCKET options a program may set on a unix socket and read back,
 * saved with getsockopt and set again where they differ from a fresh
 * socket's. SO_PEEK_OFF is set last, after the data is queued.
 */
const OPTIONS = {
  debug: 1, reuseaddr: 2, dontroute: 5, broadcast: 6, sndbuf: 7, rcvbuf: 8, keepalive: 9, oobinline: 10,
  priority: 12, linger: 13, reuseport: 15, passcred: 16, rcvlowat: 18, rcvtimeo: 20, sndtimeo: 21,
  timestamp: 29, passsec: 34, timestampns: 35, mark: 36, timestamping: 37, rxq_ovfl: 40, wifi_status: 41,
  peek_off: 42, nofcs: 43, select_err_queue: 45, busy_poll: 46, incoming_cpu: 49, zerocopy: 60,
  rcvmark: 75, passpidfd: 76,
} as const;
type OptionName = keyof typeof OPTIONS;
const OPTION_NAMES = Object.keys(OPTIONS) as [OptionName, ...OptionName[]];

/** A name a socket is bound to: a filesystem path, or an abstract name (base64 of its bytes after the leading NUL). */
const SocketName = lazySchema(() => z.union([
  z.object({ path: absPath }),
  z.object({ abstract: base64Max(NAME_MAX - 1) }),
]));
type SocketName = z.infer<typeof SocketName>;

/** One unix socket of the tree (the Objects record's `unix` table). */
export const UnixSocket = lazySchema(() => z.object({
  /** its inode at checkpoint time */
  id: count,
  type: z.enum(['stream', 'dgram', 'seqpacket']),
  state: z.enum(['unconnected', 'listening', 'connected']),
  name: SocketName.optional(),
  /** a path-bound socket's file: mode and owner, made again at restart */
  file: z.object({ mode: int(0, 0o7777), uid: int(0, 0xfffffffe), gid: int(0, 0xfffffffe) }).optional(),
  /** the socket it is connected to (its id here); for a datagram socket, where it sends */
  peer: count.optional(),
  /** a connected stream or seqpacket socket made by accept() on the listening socket `acceptedFrom` (its id), or on a listener gone since (then -1: a temporary one at its abstract name) */
  acceptedFrom: int(-1, Number.MAX_SAFE_INTEGER).optional(),
  /** listening: the backlog */
  backlog: int(0, 0x7fffffff).optional(),
  /** RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) */
  shutdown: int(0, 3),
  /** SOL_SOCKET options as getsockopt returned them (base64 of the raw value) */
  options: z.array(z.object({ opt: z.enum(OPTION_NAMES), value: base64Max(16) })).max(OPTION_NAMES.length),
  /** data queued to be read: one entry for a stream socket, one per message otherwise */
  /** connected to a socket outside the tree, declared with --external: handed in at restart with --inherit-fd */
  external: z.boolean().optional(),
  queue: z.array(z.object({
    data: base64Max(PEEK_BUF),
    /** the in-tree socket (its id) that sent this datagram, when it was bound to a name */
    from: count.optional(),
  })).max(1 << 20),
}));
export type UnixSocket = z.infer<typeof UnixSocket>;

/** An fd on a unix socket: its id in the `unix` table. */
export const UnixFd = lazySchema(() => z.object({ kind: z.literal('unix'), sock: count }));
export type UnixFd = z.infer<typeof UnixFd>;

// ---- sock_diag ---------------------------------------------------------------

interface Diag {
  ino: number;
  type: number;
  state: number;
  /** raw sun_path bytes (abstract names start with NUL; paths without their NUL) */
  name?: Buffer;
  vfs?: { ino: number; dev: number };
  peer: number;
  peerDead?: boolean;
  icons: number[];
  rq: number;
  wq: number;
  shutdown: number;
}

/** Every unix socket of this network namespace, by inode. */
export function unixDiag(): Map<number, Diag> {
  const req = Buffer.alloc(24); // struct unix_diag_req
  req.writeUInt8(AF_UNIX, 0);
  req.writeUInt32LE(0xffffffff, 4); // every state
  req.writeUInt32LE(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN, 12); // the shutdown state comes always
  const out = new Map<number, Diag>();
  for (const m of sockDiag(req)) {
    if (m.length < 16) continue;
    const a = rtAttrs(m, 16);
    const d: Diag = { ino: m.readUInt32LE(4), type: m.readUInt8(1), state: m.readUInt8(2), peer: 0, icons: [], rq: 0, wq: 0, shutdown: 0 };
    const name = a.get(UNIX_DIAG_NAME);
    if (name && name.length) d.name = name[0] !== 0 && name[name.length - 1] === 0 ? Buffer.from(name.subarray(0, name.indexOf(0))) : Buffer.from(name);
    const vfs = a.get(UNIX_DIAG_VFS);
    if (vfs && vfs.length >= 8) d.vfs = { ino: vfs.readUInt32LE(0), dev: vfs.readUInt32LE(4) };
    const peer = a.get(UNIX_DIAG_PEER);
    if (peer && peer.length >= 4) {
      d.peer = peer.readUInt32LE(0);
      d.peerDead = d.peer === 0; // a peer that has been closed has no inode any more
    }
    const icons = a.get(UNIX_DIAG_ICONS);
    if (icons) for (let i = 0; i + 4 <= icons.length; i += 4) d.icons.push(icons.readUInt32LE(i));
    const rq = a.get(UNIX_DIAG_RQLEN);
    if (rq && rq.length >= 8) { d.rq = rq.readUInt32LE(0); d.wq = rq.readUInt32LE(4); }
    const sh = a.get(UNIX_DIAG_SHUTDOWN);
    if (sh && sh.length >= 1) d.shutdown = sh.readUInt8(0);
    out.set(d.ino, d);
  }
  return out;
}

/** The kernel's dev_t (major << 20 | minor) as stat() shows it. */
function userDev(k: number): number {
  const major = k >>> 20, minor = k & 0xfffff;
  return (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);
}

// Which inodes are unix sockets: asked again only when an inode is not known.
let known: Map<number, Diag> | undefined;
function isUnixSocket(ino: number): boolean {
  if (known?.has(ino)) return true;
  known = unixDiag();
  return known.has(ino);
}

const socketIno = (target: string): number | null => {
  const m = /^socket:\[(\d+)\]$/.exec(target);
  return m ? Number(m[1]) : null;
};

// ---- small socket helpers (this process) ------------------------------------------

function sockaddr(n: SocketName): Buffer {
  const bytes = 'path' in n ? Buffer.concat([Buffer.from(n.path), Buffer.alloc(1)]) : Buffer.concat([Buffer.alloc(1), Buffer.from(n.abstract, 'base64')]);
  const b = Buffer.alloc(2 + bytes.length);
  b.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(b, 2);
  return b;
}

function nameText(n: SocketName): string {
  return 'path' in n ? n.path : `@${Buffer.from(n.abstract, 'base64').toString('latin1')}`;
}

function getsockopt(fd: number, opt: number, len = 4): Buffer | null {
  const v = Buffer.alloc(len), l = Buffer.alloc(4);
  l.writeUInt32LE(len);
  try {
    syscall(SYS_GETSOCKOPT, 'getsockopt', fd, SOL_SOCKET, opt, v, l);
  } catch {
    return null;
  }
  return v.subarray(0, l.readUInt32LE(0));
}

function getInt(fd: number, opt: number): number {
  const v = getsockopt(fd, opt);
  if (!v) throw new StasisError(`getsockopt(${opt}) failed on a unix socket`);
  return v.readInt32LE(0);
}

function setsockopt(fd: number, opt: number, value: Buffer, what: string): void {
  syscall(SYS_SETSOCKOPT, what, fd, SOL_SOCKET, opt, value, value.length);
}

function intBuf(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

/** A struct msghdr for recvmsg/sendmsg from this process; the buffers must stay alive during the call. */
function msghdr(name: Buffer | null, data: Buffer, control: Buffer | null): { hdr: Buffer; iov: Buffer } {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(addr(data)), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const hdr = Buffer.alloc(56);
  if (name) {
    hdr.writeBigUInt64LE(BigInt(addr(name)), 0);
    hdr.writeUInt32LE(name.length, 8);
  }
  hdr.writeBigUInt64LE(BigInt(addr(iov)), 16);
  hdr.writeBigUInt64LE(1n, 24);
  if (control) {
    hdr.writeBigUInt64LE(BigInt(addr(control)), 32);
    hdr.writeBigUInt64LE(BigInt(control.length), 40);
  }
  return { hdr, iov };
}

function addr(b: Buffer): number {
  return b.length ? addressOf(b) : 0;
}

function errCode(e: unknown): string | undefined {
  return (e as { code?: string }).code;
}

// ---- checkpoint --------------------------------------------------------------------

export const unixKind: FdKind<UnixFd> = {
  kinds: ['unix'],
  claims: (f) => {
    const ino = socketIno(f.target);
    return ino !== null && isUnixSocket(ino);
  },
  dump: (f, ctx) => ({ kind: 'unix', pos: 0, sock: ctx.table(UnixTable).note(f) }),
  sharingKey: (r) => `unix:${r.sock}`,
  open(remote, r, ctx, where) {
    if (!ctx.unix) throw new StasisError(`${where}: a unix socket without the unix table`);
    return ctx.unix.handTo(remote, r.sock, r.cloexec, where);
  },
  settle(remote, r, where) {
    // One open file description per socket: its flags, set where it lands (O_ASYNC: restoreFdOwners).
    if (r.flags & O_NONBLOCK) remote.call('fcntl', SYS.fcntl, [r.fd, F_SETFL, O_NONBLOCK], `${where}: O_NONBLOCK`);
  },
};

interface Noted { entry: UnixSocket; diag: Diag; holder: { pid: number; fd: number } }

/** The unix sockets of one checkpoint. */
export class UnixTable implements ObjectTable {
  private readonly diag = unixDiag();
  private readonly socks = new Map<number, Noted>();
  /** inodes named with --external: recorded without their queue, handed in at restart */
  private readonly external = new Set<number>();

  /** Record the socket behind an fd (once per socket); refuses by name what cannot be restored. */
  note(f: FoundFd): number {
    const ino = socketIno(f.target)!;
    if (this.socks.has(ino)) return ino;
    const d = this.diag.get(ino) ?? unixDiag().get(ino);
    if (!d) throw new StasisError(`${f.where}: unix socket ${f.target} is not known to sock_diag`);
    const where = `${f.where} (unix socket ${f.target})`;
    const type = (Object.keys(SOCKET_TYPES) as SocketType[]).find((t) => SOCKET_TYPES[t] === d.type);
    if (!type) throw new UnsupportedError(`${where}: socket type ${d.type} is not supported`);
    // A datagram socket is marked established when another connects to it: only its own peer counts.
    const state = d.state === TCP_LISTEN ? 'listening' : type === 'dgram' ? (d.peer || d.peerDead ? 'connected' : 'unconnected')
      : d.state === TCP_ESTABLISHED ? 'connected' : d.state === TCP_CLOSE ? 'unconnected' : null;
    if (!state) throw new UnsupportedError(`${where}: socket state ${d.state} (connecting) is not supported`);
    if (state === 'listening' && (d.icons.length || d.rq)) {
      throw new UnsupportedError(`${where}: listening socket with ${Math.max(d.icons.length, d.rq)} connections not yet accepted; not supported yet (accept them first)`);
    }
    let name: SocketName | undefined;
    let file: UnixSocket['file'];
    if (d.name) {
      if (d.name[0] === 0) {
        name = { abstract: d.name.subarray(1).toString('base64') };
      } else {
        const p = d.name.toString();
        if (!p.startsWith('/')) throw new UnsupportedError(`${where}: bound to the relative path "${p}"; only absolute paths are supported`);
        name = { path: p };
      }
    }
    const entry: UnixSocket = { id: ino, type, state, shutdown: d.shutdown & 3, options: [], queue: [] };
    if (name) entry.name = name;
    if (file) entry.file = file;
    if (state === 'listening') entry.backlog = d.wq;
    if (d.peer) entry.peer = d.peer;
    else if (state === 'connected') {
      throw new UnsupportedError(`${where}: its peer has closed (a ${type} socket left with its end of the connection); not supported yet`);
    }
    const mine = takeSocket(f.pid, f.fd, where);
    try {
      entry.options = readOptions(mine);
      const passcred = getInt(mine, SO_PASSCRED) || (getsockopt(mine, SO_PASSPIDFD)?.readInt32LE(0) ?? 0);
      const queue = state === 'listening' ? [] : peekQueue(mine, type, d, where);
      if (queue.length && passcred) {
        throw new UnsupportedError(`${where}: ${queue.length} queued message(s) on a socket with SO_PASSCRED/SO_PASSPIDFD carry their senders' credentials, which are not restored yet`);
      }
      // Queued again at restart, they would carry the restart's time.
      if (queue.length && (getInt(mine, OPTIONS.timestamp) || getInt(mine, OPTIONS.timestampns) || getInt(mine, OPTIONS.timestamping))) {
        throw new UnsupportedError(`${where}: ${queue.length} queued message(s) on a socket with SO_TIMESTAMP/SO_TIMESTAMPNS/SO_TIMESTAMPING carry the time they arrived, which a restart cannot give them; not supported: checkpoint once they are read`);
      }
      entry.queue = queue.map((q) => ({ data: q.data.toString('base64') }));
      this.senders.set(ino, queue.map((q) => q.from));
    } finally {
      fs.closeSync(mine);
    }
    if (name && 'path' in name) entry.file = socketFile(name.path, d, where);
    this.socks.set(ino, { entry, diag: d, holder: { pid: f.pid, fd: f.fd } });
    return ino;
  }

  /** sender names of queued datagrams, resolved to in-tree sockets in collect() */
  private readonly senders = new Map<number, Array<Buffer | undefined>>();

  refuseOutsiders(tree: Set<number>, external: string[]): void {
    if (!this.socks.size) return;
    const names = new Map<string, number>();
    for (const ino of this.socks.keys()) names.set(`socket:[${ino}]`, ino);
    const peers = new Map<number, number>(); // peer inode outside the table -> our socket
    for (const [ino, s] of this.socks) if (s.entry.peer !== undefined && !this.socks.has(s.entry.peer)) peers.set(s.entry.peer, ino);
    const heldOutside = new Map<number, number>(); // inode -> an outside pid holding it
    const wanted = new Set([...this.socks.keys(), ...peers.keys()]);
    for (const { pid, link } of outsideFdLinks(tree)) {
      const ino = socketIno(link);
      if (ino !== null && wanted.has(ino) && !heldOutside.has(ino)) heldOutside.set(ino, pid);
    }
    for (const [ino, s] of this.socks) {
      const out = heldOutside.get(ino);
      if (out !== undefined) throw new UnsupportedError(`fd ${s.holder.fd} of pid ${s.holder.pid}: unix socket socket:[${ino}] is also open in pid ${out} outside the tree; not supported`);
    }
    for (const [peer, ino] of peers) {
      const s = this.socks.get(ino)!;
      const where = `fd ${s.holder.fd} of pid ${s.holder.pid}`;
      const name = `unix:[${ino}]`;
      if (external.includes(name)) {
        if (s.entry.queue.length) throw new UnsupportedError(`${where}: external unix socket socket:[${ino}] has data queued; it would be lost with --external: let the program read it first`);
        this.external.add(ino);
        continue;
      }
      const out = heldOutside.get(peer);
      if (out !== undefined) throw new UnsupportedError(`${where}: unix socket socket:[${ino}] is connected to socket:[${peer}] of pid ${out} outside the tree; pass --external ${name} to checkpoint it and --inherit-fd at restart`);
      throw new UnsupportedError(`${where}: unix socket socket:[${ino}] is connected to socket:[${peer}], which no process of the tree holds (not yet accepted, or in flight); not supported`);
    }
  }

  collect(): { unix: UnixSocket[] } {
    const byName = new Map<string, number>();
    for (const [ino, s] of this.socks) if (s.entry.name) byName.set(JSON.stringify(s.entry.name), ino);
    const listeners = new Map<string, number>();
    for (const [ino, s] of this.socks) if (s.entry.state === 'listening') listeners.set(`${s.entry.type}:${JSON.stringify(s.entry.name)}`, ino);
    const out: UnixSocket[] = [];
    for (const [ino, s] of this.socks) {
      const e = { ...s.entry };
      const where = `fd ${s.holder.fd} of pid ${s.holder.pid} (unix socket socket:[${ino}])`;
      if (this.external.has(ino)) {
        // Its name, file and peer are those of the socket handed in at restart.
        const { peer: _p, name: _n, file: _f, ...rest } = e;
        void _p, void _n, void _f;
        out.push({ ...rest, external: true });
        continue;
      }
      // Which end of a stream connection was accepted: the named end.
      const peer = e.peer !== undefined ? this.socks.get(e.peer) : undefined;
      if (e.state === 'connected' && e.type !== 'dgram' && peer) {
        const mineNamed = !!e.name, peerNamed = !!peer.entry.name;
        const lst = e.name ? listeners.get(`${e.type}:${JSON.stringify(e.name)}`) : undefined;
        const peerLst = peer.entry.name ? listeners.get(`${e.type}:${JSON.stringify(peer.entry.name)}`) : undefined;
        if (mineNamed && (lst !== undefined || !peerNamed || peerLst === undefined)) {
          if (lst !== undefined) e.acceptedFrom = lst;
          else if (peerNamed) throw new UnsupportedError(`${where}: both ends of the connection are bound to names and neither listening socket is in the tree; not supported`);
          else if ('path' in e.name!) throw new UnsupportedError(`${where}: accepted from the listening socket at ${e.name!.path}, which is no longer in the tree; not supported`);
          else e.acceptedFrom = -1;
        }
      }
      if (e.type === 'dgram' && peer && !peer.entry.name && peer.entry.peer !== ino) {
        throw new UnsupportedError(`${where}: a datagram socket connected one way to an unnamed socket; not supported`);
      }
      // Datagrams from named senders come back from the same sender.
      const senders = this.senders.get(ino) ?? [];
      e.queue = e.queue.map((q, i) => {
        const from = senders[i];
        if (!from || e.type !== 'dgram') return q;
        const n: SocketName = from[0] === 0 ? { abstract: from.subarray(1).toString('base64') } : { path: from.toString() };
        const sender = byName.get(JSON.stringify(n));
        if (sender === undefined) throw new UnsupportedError(`${where}: a queued datagram was sent from ${nameText(n)}, which is not a socket of the tree; not supported`);
        if (!e.name && (peer?.entry.id !== sender || peer.entry.peer !== ino)) throw new UnsupportedError(`${where}: a queued datagram came from ${nameText(n)} to an unnamed socket; not supported`);
        return { ...q, from: sender };
      });
      if (e.type === 'dgram' && !e.name && e.queue.some((q) => q.from === undefined) && !(peer && peer.entry.peer === ino && !peer.entry.name)) {
        throw new UnsupportedError(`${where}: datagrams queued on an unnamed socket from an unnamed sender that is not its socketpair peer; not supported`);
      }
      out.push(e);
    }
    return { unix: out };
  }
}

/** A copy of a task's socket in this process (pidfd_getfd): the same socket, to read. */
function takeSocket(pid: number, fd: number, where: string): number {
  const pidfd = syscall(SYS.pidfd_open, `pidfd_open(${pid})`, pid, 0);
  try {
    return syscall(SYS.pidfd_getfd, 'pidfd_getfd', pidfd, fd, 0);
  } catch (e) {
    throw new StasisError(`${where}: cannot take a copy of the socket to read it: ${(e as Error).message}`);
  } finally {
    fs.closeSync(pidfd);
  }
}

function readOptions(fd: number): UnixSocket['options'] {
  const out: UnixSocket['options'] = [];
  for (const opt of OPTION_NAMES) {
    const v = getsockopt(fd, OPTIONS[opt], 16);
    if (v) out.push({ opt, value: v.toString('base64') });
  }
  return out;
}

/** The socket file of a path-bound socket: it must still be this socket's. */
function socketFile(p: string, d: Diag, where: string): UnixSocket['file'] {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch (e) {
    throw new UnsupportedError(`${where}: bound to ${p}, whose socket file was removed (${errCode(e)}); not supported`);
  }
  if (!st.isSocket() || !d.vfs || st.ino !== d.vfs.ino || st.dev !== userDev(d.vfs.dev)) {
    throw new UnsupportedError(`${where}: bound to ${p}, whose socket file was replaced by another file; not supported`);
  }
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
}

/**
 * Everything queued on a socket, read with MSG_PEEK from peek offset 0 (the
 * task's own SO_PEEK_OFF put back after): one chunk for a stream socket,
 * each message with its sender's name otherwise.
 */
function peekQueue(fd: number, type: SocketType, d: Diag, where: string): Array<{ data: Buffer; from?: Buffer }> {
  const old = getInt(fd, SO_PEEK_OFF);
  const out: Array<{ data: Buffer; from?: Buffer }> = [];
  if (type === 'stream') {
    const oob = Buffer.alloc(1);
    try {
      syscall(SYS_RECVFROM, 'recv(MSG_OOB)', fd, oob, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT, 0, 0);
      throw new UnsupportedError(`${where}: an out-of-band byte (MSG_OOB) is queued; not supported`);
    } catch (e) {
      if (e instanceof UnsupportedError) throw e;
    }
  }
  setsockopt(fd, SO_PEEK_OFF, intBuf(0), 'setsockopt(SO_PEEK_OFF)');
  try {
    const buf = Buffer.allocUnsafe(type === 'stream' ? 1 << 20 : PEEK_BUF);
    const name = Buffer.alloc(112);
    const control = Buffer.alloc(4096);
    const chunks: Buffer[] = [];
    for (;;) {
      const { hdr } = msghdr(name, buf, control);
      let n: number;
      try {
        n = syscall(SYS_RECVMSG, 'recvmsg(MSG_PEEK)', fd, hdr, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | (type === 'stream' ? 0 : MSG_TRUNC));
      } catch (e) {
        if (errCode(e) === 'EAGAIN') break;
        throw new StasisError(`${where}: peeking at its queue: ${(e as Error).message}`);
      }
      const flags = hdr.readInt32LE(48);
      // Passed fds were installed here by the peek: closed again at once.
      if (closePassedFds(control, Number(hdr.readBigUInt64LE(40)))) throw new UnsupportedError(`${where}: a queued message carries file descriptors (SCM_RIGHTS); not supported yet`);
      if (flags & MSG_CTRUNC) throw new UnsupportedError(`${where}: a queued message carries more control data than stasis reads; not supported`);
      if (type === 'stream') {
        if (n === 0) break; // end of stream after a shutdown
        chunks.push(Buffer.from(buf.subarray(0, n)));
        continue;
      }
      if (n > buf.length) throw new UnsupportedError(`${where}: a queued datagram of ${n} bytes is larger than stasis reads (${buf.length})`);
      // Shut for reading, a seqpacket socket reads 0 past its queue, as an
      // empty message does: empty messages after the last bytes read the same.
      if (n === 0 && type === 'seqpacket' && (d.shutdown & 1) && getInt(fd, SO_PEEK_OFF) >= d.rq) break;
      const nameLen = hdr.readUInt32LE(8);
      const from = nameLen > 2 ? Buffer.from(name.subarray(2, nameLen)) : undefined;
      out.push({ data: Buffer.from(buf.subarray(0, n)), from: from && from[0] !== 0 ? stripNul(from) : from });
      if (out.length > 1 << 20) throw new UnsupportedError(`${where}: more than ${1 << 20} queued messages`);
    }
    if (type === 'stream') {
      const data = Buffer.concat(chunks);
      if (data.length) out.push({ data });
    }
  } finally {
    setsockopt(fd, SO_PEEK_OFF, intBuf(old), 'setsockopt(SO_PEEK_OFF)');
  }
  return out;
}

/** Close the fds an SCM_RIGHTS message put into this process; whether there were any. */
function closePassedFds(control: Buffer, len: number): boolean {
  let any = false;
  for (let at = 0; at + 16 <= len;) {
    const clen = Number(control.readBigUInt64LE(at));
    if (clen < 16 || at + clen > len) break;
    if (control.readInt32LE(at + 8) === SOL_SOCKET && control.readInt32LE(at + 12) === SCM_RIGHTS) {
      for (let i = at + 16; i + 4 <= at + clen; i += 4) {
        any = true;
        try { fs.closeSync(control.readInt32LE(i)); } catch { /* closed */ }
      }
    }
    at += (clen + 7) & ~7;
  }
  return any;
}

function stripNul(b: Buffer): Buffer {
  const i = b.indexOf(0);
  return i < 0 ? b : b.subarray(0, i);
}

// ---- restart -----------------------------------------------------------------------

/** Restore side: stasis makes and holds every socket until the tasks have them. */
export class UnixKeeper {
  private readonly fds = new Map<number, number>();
  private courier?: { fd: number; addr: Buffer };
  private readonly fresh = new Map<SocketType, Map<OptionName, string>>();

  /**
   * `owners`: the credentials of a process holding each socket (a bound
   * path is made only where that process could have made it);
   * `inherit`: "unix:[INO]" -> an fd of this process to use for an
   * external socket.
   */
  constructor(socks: UnixSocket[], owners: Map<number, ImageCreds>, inherit: Record<string, number> = {}) {
    try {
      this.build(socks, owners, inherit);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private build(socks: UnixSocket[], owners: Map<number, ImageCreds>, inherit: Record<string, number>): void {
    const byId = new Map(socks.map((s) => [s.id, s]));
    const where = (s: UnixSocket) => `unix socket ${s.id}${s.name ? ` (${nameText(s.name)})` : ''}`;
    const paired = new Set<number>();
    // 1. Every socket: unnamed connected pairs as socketpairs, the others alone.
    for (const s of socks) {
      if (this.fds.has(s.id)) continue;
      if (s.external) {
        const fd = inherit[`unix:[${s.id}]`];
        if (fd === undefined) throw new StasisError(`unix:[${s.id}] was connected outside the tree at checkpoint time: pass --inherit-fd FD:unix:[${s.id}] with a socket of yours to put in its place`);
        const mine = syscall(SYS.fcntl, 'fcntl(F_DUPFD_CLOEXEC)', fd, 1030, 0);
        this.fds.set(s.id, mine);
        const domain = getsockopt(mine, 39 /* SO_DOMAIN */)?.readInt32LE(0), type = getsockopt(mine, 3 /* SO_TYPE */)?.readInt32LE(0);
        if (domain !== AF_UNIX || type !== SOCKET_TYPES[s.type]) throw new StasisError(`--inherit-fd ${fd}:unix:[${s.id}]: fd ${fd} is not a unix ${s.type} socket`);
        continue;
      }
      const peer = s.peer !== undefined ? byId.get(s.peer) : undefined;
      // A datagram pair may have been bound since (bound after socketpair): names come next.
      if (s.state === 'connected' && peer && peer.peer === s.id && (s.type === 'dgram' || (!s.name && !peer.name && s.acceptedFrom === undefined && peer.acceptedFrom === undefined))) {
        const sv = Buffer.alloc(8);
        syscall(SYS_SOCKETPAIR, 'socketpair', AF_UNIX, SOCKET_TYPES[s.type] | SOCK_CLOEXEC, 0, sv);
        this.fds.set(s.id, sv.readInt32LE(0));
        this.fds.set(peer.id, sv.readInt32LE(4));
        paired.add(s.id).add(peer.id);
        continue;
      }
      if (s.acceptedFrom !== undefined) continue; // made by accept()
      this.fds.set(s.id, syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES[s.type] | SOCK_CLOEXEC, 0));
    }
    const own = socks.filter((s) => !s.external);
    // 2. Buffer sizes first: queued data is charged to them.
    for (const s of own) if (this.fds.has(s.id)) this.setBuffers(s, where(s));
    // 3. Names, then listening.
    for (const s of own) {
      if (!s.name || s.acceptedFrom !== undefined) continue;
      this.bindName(this.fd(s.id), s, owners.get(s.id), where(s));
    }
    for (const s of own) {
      if (s.state === 'listening') syscall(SYS_LISTEN, `listen (${where(s)})`, this.fd(s.id), s.backlog ?? 0);
    }
    // 4. Connections made through a listener: connect the client, accept its other end.
    for (const s of own) {
      if (s.acceptedFrom === undefined) continue;
      const client = byId.get(s.peer!)!;
      this.fds.set(s.id, this.acceptFrom(s, this.fd(client.id), s.acceptedFrom >= 0 ? this.fd(s.acceptedFrom) : undefined, where(s)));
      this.setBuffers(s, where(s));
    }
    // 5. Queued data, each message from its sender.
    let spare: number | undefined;
    try {
      for (const s of own) {
        for (const q of s.queue) {
          const data = Buffer.from(q.data, 'base64');
          let from: number, to: SocketName | undefined;
          if (q.from !== undefined) {
            from = this.fd(q.from);
            to = paired.has(s.id) && s.peer === q.from ? undefined : s.name;
          } else if (s.type !== 'dgram' || (paired.has(s.id) && !byId.get(s.peer!)?.name)) {
            from = this.fd(s.peer!);
          } else {
            spare ??= syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES.dgram | SOCK_CLOEXEC, 0);
            from = spare;
            to = s.name;
          }
          this.send(from, data, to, `${where(s)}: queueing ${data.length} saved bytes`);
        }
      }
    } finally {
      if (spare !== undefined) fs.closeSync(spare);
    }
    // 6. Datagram sockets connected one way (after their data: a connected socket takes only its peer's).
    for (const s of own) {
      if (s.type !== 'dgram' || s.peer === undefined || paired.has(s.id)) continue;
      const peer = byId.get(s.peer);
      if (!peer?.name) throw new StasisError(`${where(s)}: connected to an unnamed datagram socket that is not its pair`);
      this.connect(this.fd(s.id), peer.name, `${where(s)}: connect`);
    }
    // 7. Shutdown, the other options, then the peek offset.
    for (const s of own) {
      const fd = this.fd(s.id);
      if (s.shutdown) syscall(SYS_SHUTDOWN, `shutdown (${where(s)})`, fd, s.shutdown - 1);
      this.setOptions(s, fd, where(s));
    }
  }

  /** Our fd of socket `id`: the image's ids are checked before (validate.ts); never an fd by accident. */
  private fd(id: number): number {
    const fd = this.fds.get(id);
    if (fd === undefined) throw new StasisError(`the image names unix socket ${id} where no such socket is made`);
    return fd;
  }

  private freshOptions(type: SocketType): Map<OptionName, string> {
    let m = this.fresh.get(type);
    if (m) return m;
    const fd = syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES[type] | SOCK_CLOEXEC, 0);
    try {
      m = new Map(readOptions(fd).map((o) => [o.opt, o.value]));
    } finally {
      fs.closeSync(fd);
    }
    this.fresh.set(type, m);
    return m;
  }

  private setBuffers(s: UnixSocket, where: string): void {
    const fd = this.fd(s.id);
    for (const [opt, plain, force] of [['sndbuf', SO_SNDBUF, SO_SNDBUFFORCE], ['rcvbuf', SO_RCVBUF, SO_RCVBUFFORCE]] as const) {
      const o = s.options.find((x) => x.opt === opt);
      if (!o || o.value === this.freshOptions(s.type).get(opt)) continue;
      const v = intBuf(Math.floor(Buffer.from(o.value, 'base64').readInt32LE(0) / 2)); // the kernel doubles what it is given
      try {
        setsockopt(fd, force, v, `setsockopt(SO_${opt.toUpperCase()}FORCE)`);
      } catch {
        setsockopt(fd, plain, v, `setsockopt(SO_${opt.toUpperCase()}) (${where})`);
      }
    }
  }

  private setOptions(s: UnixSocket, fd: number, where: string): void {
    const fresh = this.freshOptions(s.type);
    for (const o of s.options) {
      if (o.opt === 'sndbuf' || o.opt === 'rcvbuf' || o.opt === 'peek_off' || o.value === fresh.get(o.opt)) continue;
      setsockopt(fd, OPTIONS[o.opt], Buffer.from(o.value, 'base64'), `setsockopt(SO_${o.opt.toUpperCase()}) (${where})`);
    }
    const peek = s.options.find((o) => o.opt === 'peek_off');
    if (peek && peek.value !== fresh.get('peek_off')) setsockopt(fd, SO_PEEK_OFF, Buffer.from(peek.value, 'base64'), `setsockopt(SO_PEEK_OFF) (${where})`);
  }

  private send(fd: number, data: Buffer, to: SocketName | undefined, what: string): void {
    const name = to ? sockaddr(to) : null;
    let off = 0;
    do {
      const part = data.subarray(off);
      const { hdr } = msghdr(name, part, null);
      let n: number;
      try {
        n = syscall(SYS_SENDMSG, 'sendmsg', fd, hdr, MSG_DONTWAIT | MSG_NOSIGNAL);
      } catch (e) {
        throw new StasisError(`${what}: ${(e as Error).message}`);
      }
      off += n;
    } while (off < data.length);
  }

  private connect(fd: number, to: SocketName, what: string): void {
    const a = sockaddr(to);
    syscall(SYS_CONNECT, `${what} to ${nameText(to)}`, fd, a, a.length);
  }

  /** The accepted end of a connection: `client` connects to the listener (or a temporary one at the abstract name). */
  private acceptFrom(s: UnixSocket, client: number, listener: number | undefined, where: string): number {
    let temp: number | undefined;
    try {
      if (listener === undefined) {
        temp = syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES[s.type] | SOCK_CLOEXEC, 0);
        const a = sockaddr(s.name!);
        try {
          syscall(SYS_BIND, 'bind', temp, a, a.length);
        } catch (e) {
          throw new StasisError(`${where}: the abstract name ${nameText(s.name!)} is taken (${errCode(e)}): end whatever holds it`);
        }
        syscall(SYS_LISTEN, 'listen', temp, 1);
      }
      const l = listener ?? temp!;
      this.connect(client, s.name!, `${where}: connect`);
      const clientIno = fs.fstatSync(client).ino;
      // A process outside may connect to the listener meanwhile: take only ours.
      for (let i = 0; i < 1024; i++) {
        const got = syscall(SYS_ACCEPT4, `accept (${where})`, l, 0, 0, SOCK_CLOEXEC | SOCK_NONBLOCK);
        const d = unixDiag().get(fs.fstatSync(got).ino);
        if (d?.peer === clientIno) {
          syscall(SYS.fcntl, 'fcntl(F_SETFL)', got, F_SETFL, 0);
          return got;
        }
        fs.closeSync(got);
      }
      throw new StasisError(`${where}: could not accept the restored connection`);
    } finally {
      if (temp !== undefined) fs.closeSync(temp);
    }
  }

  /**
   * Bind a socket at its saved name. A path is made again only where the
   * saved process could have made it (the directory writable and
   * searchable for it, no symlink on the way); a socket file left there by
   * a socket nobody listens on any more is removed first; anything else
   * there is refused, never removed.
   */
  private bindName(fd: number, s: UnixSocket, creds: ImageCreds | undefined, where: string): void {
    const name = s.name!;
    const a = sockaddr(name);
    if ('abstract' in name) {
      try {
        syscall(SYS_BIND, 'bind', fd, a, a.length);
      } catch (e) {
        throw new StasisError(`${where}: the abstract name is taken (${errCode(e)}): end whatever holds it, then restart again`);
      }
      return;
    }
    const p = name.path;
    if (a.length > 2 + NAME_MAX) throw new StasisError(`${where}: the path is longer than a socket name may be`);
    const dir = p.slice(0, p.lastIndexOf('/')) || '/', base = p.slice(p.lastIndexOf('/') + 1);
    const dirfd = openDirNoSymlinks(dir, where);
    try {
      const dst = fs.fstatSync(dirfd);
      if (creds && !mayCreateIn(dst, creds)) throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not create a socket in ${dir}; refusing to with this restarter's rights`);
      let st: fs.Stats | undefined;
      try {
        st = fs.lstatSync(`/proc/self/fd/${dirfd}/${base}`);
      } catch { /* free */ }
      if (st) {
        if (!st.isSocket()) throw new StasisError(`${where}: ${p} exists and is not a socket; refusing to remove it`);
        if (this.listening(p, s.type)) throw new StasisError(`${where}: ${p} is in use by a live socket: end whatever listens there, then restart again`);
        if (creds && !mayRemoveFrom(dst, st, creds)) throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not remove the stale socket file ${p}`);
        const b = Buffer.from(base + '\0');
        syscall(SYS_UNLINKAT, `unlinkat(${p})`, dirfd, b, 0);
      }
      const old = process.umask(0o777 & ~(s.file?.mode ?? 0o777));
      try {
        syscall(SYS_BIND, `bind(${p})`, fd, a, a.length);
      } catch (e) {
        throw new StasisError(`${where}: ${(e as Error).message}`);
      } finally {
        process.umask(old);
      }
      if (s.file) {
        const now = fs.lstatSync(`/proc/self/fd/${dirfd}/${base}`);
        if (!now.isSocket()) throw new StasisError(`${where}: ${p} was replaced while it was made`);
        if (now.uid !== s.file.uid || now.gid !== s.file.gid) fs.lchownSync(`/proc/self/fd/${dirfd}/${base}`, s.file.uid, s.file.gid);
        if ((now.mode & 0o7777) !== s.file.mode) fs.chmodSync(`/proc/self/fd/${dirfd}/${base}`, s.file.mode);
      }
    } finally {
      fs.closeSync(dirfd);
    }
  }

  /** Whether a live socket answers at `p` (a stale socket file refuses connections). */
  private listening(p: string, type: SocketType): boolean {
    const probe = syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES[type] | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    try {
      const a = sockaddr({ path: p });
      syscall(SYS_CONNECT, 'connect', probe, a, a.length);
      return true;
    } catch (e) {
      return !(e instanceof SyscallError && (e.code === 'ECONNREFUSED' || e.code === 'ENOENT'));
    } finally {
      fs.closeSync(probe);
    }
  }

  /**
   * Put socket `id` into the task (at its lowest free fd, returned): the
   * task connects to our courier socket and receives it with SCM_RIGHTS.
   */
  handTo(remote: Remote, id: number, cloexec: boolean, where: string): number {
    const ours = this.fds.get(id);
    if (ours === undefined) throw new StasisError(`${where}: the image names unix socket ${id} but carries no such socket`);
    if (!this.courier) {
      const fd = syscall(SYS_SOCKET, 'socket(AF_UNIX)', AF_UNIX, SOCKET_TYPES.stream | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      const addr = sockaddr({ abstract: Buffer.from(`stasis-courier-${process.pid}-${(require('node:crypto') as typeof import('node:crypto')).randomBytes(8).toString('hex')}`).toString('base64') });
      this.courier = { fd, addr };
      syscall(SYS_BIND, 'bind(courier)', fd, addr, addr.length);
      syscall(SYS_LISTEN, 'listen(courier)', fd, 16);
    }
    remote.reset();
    const c = remote.call('socket', SYS_SOCKET, [AF_UNIX, SOCKET_TYPES.stream | SOCK_CLOEXEC, 0], `${where}: courier socket`);
    try {
      remote.call('connect', SYS_CONNECT, [c, remote.putBytes(this.courier.addr), this.courier.addr.length], `${where}: reaching stasis`);
      const conn = syscall(SYS_ACCEPT4, 'accept(courier)', this.courier.fd, 0, 0, SOCK_CLOEXEC);
      try {
        const cred = getsockopt(conn, SO_PEERCRED, 12);
        if (!cred || cred.readInt32LE(0) !== remote.task.pid) throw new StasisError(`${where}: a process other than pid ${remote.task.pid} reached stasis's courier socket`);
        const control = Buffer.alloc(24);
        control.writeBigUInt64LE(20n, 0);
        control.writeInt32LE(SOL_SOCKET, 8);
        control.writeInt32LE(SCM_RIGHTS, 12);
        control.writeInt32LE(ours, 16);
        const one = Buffer.from('s');
        const { hdr } = msghdr(null, one, control);
        syscall(SYS_SENDMSG, 'sendmsg(SCM_RIGHTS)', conn, hdr, MSG_NOSIGNAL);
      } finally {
        fs.closeSync(conn);
      }
      // recvmsg in the task: one byte and one fd.
      const dataAddr = remote.alloc(8), ctlAddr = remote.alloc(24), iovAddr = remote.alloc(16);
      const iov = Buffer.alloc(16);
      iov.writeBigUInt64LE(BigInt(dataAddr), 0);
      iov.writeBigUInt64LE(1n, 8);
      remote.task.writeMem(iovAddr, iov);
      const hdr = Buffer.alloc(56);
      hdr.writeBigUInt64LE(BigInt(iovAddr), 16);
      hdr.writeBigUInt64LE(1n, 24);
      hdr.writeBigUInt64LE(BigInt(ctlAddr), 32);
      hdr.writeBigUInt64LE(24n, 40);
      const hdrAddr = remote.putBytes(hdr);
      remote.call('recvmsg', SYS_RECVMSG, [c, hdrAddr, cloexec ? MSG_CMSG_CLOEXEC : 0], `${where}: receiving the socket`);
      const ctl = remote.read(ctlAddr, 24);
      if (ctl.readInt32LE(8) !== SOL_SOCKET || ctl.readInt32LE(12) !== SCM_RIGHTS) throw new StasisError(`${where}: the socket did not arrive`);
      return ctl.readInt32LE(16);
    } finally {
      remote.call('close', SYS.close, [c], `${where}: courier socket`);
    }
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    if (this.courier) fs.closeSync(this.courier.fd);
    this.courier = undefined;
  }
}

function openDirNoSymlinks(dir: string, where: string): number {
  const how = Buffer.alloc(24);
  how.writeBigUInt64LE(BigInt(O_PATH | O_DIRECTORY | O_CLOEXEC), 0);
  how.writeBigUInt64LE(BigInt(RESOLVE_NO_SYMLINKS), 16);
  try {
    return syscall(SYS_OPENAT2, 'openat2', AT_FDCWD, Buffer.from(dir + '\0'), how, how.length);
  } catch (e) {
    throw new StasisError(`${where}: directory ${dir}: ${(e as Error).message} (it must exist, reached without symlinks)`);
  }
}

const CAP_DAC_OVERRIDE = 1n, CAP_FOWNER = 3n;

/** The saved process could create an entry in this directory (write and search). */
function mayCreateIn(dir: fs.Stats, creds: ImageCreds): boolean {
  if (BigInt(creds.capEff) & (1n << CAP_DAC_OVERRIDE)) return true;
  const uid = creds.uid[3], gid = creds.gid[3];
  const bits = dir.uid === uid ? (dir.mode >> 6) & 7 : dir.gid === gid || creds.groups.includes(dir.gid) ? (dir.mode >> 3) & 7 : dir.mode & 7;
  return (bits & 3) === 3;
}

/** ... and remove `file` from it (the sticky bit: only its owner, the directory's, or CAP_FOWNER). */
function mayRemoveFrom(dir: fs.Stats, file: fs.Stats, creds: ImageCreds): boolean {
  if (!mayCreateIn(dir, creds)) return false;
  if (!(dir.mode & 0o1000)) return true;
  const uid = creds.uid[3];
  return file.uid === uid || dir.uid === uid || (BigInt(creds.capEff) & (1n << CAP_FOWNER)) !== 0n;
}

/** Which process's credentials decide where each socket may be made: the first holding it. */
export function socketOwners(processes: ImageProcess[]): Map<number, ImageCreds> {
  const out = new Map<number, ImageCreds>();
  for (const p of processes) for (const f of p.fds) if (f.kind === 'unix' && !out.has(f.sock)) out.set(f.sock, p.creds);
  return out;
}

// Kinds no module supports yet, each named precisely at checkpoint time
// with what to do instead: fds (fanotify, io_uring, netlink, packet and raw
// sockets ...) and mappings ([aio] rings, io_uring rings, named anonymous
// memory ...). `stasis check --kinds` lists them beside the registry's
// supported kinds. A kind module that lands for one of these removes its
// entry here (a refusal here is asked before the module would be).
import fs from 'node:fs';
import { UnsupportedError } from '../sys/errno';
import { syscall } from '../sys/libc';
import { SYS } from '../sys/x86';
import { FdKind, FoundFd } from './fdkind';

const SYS_GETXATTR = 191, SYS_GETSOCKOPT = 55, SOL_SOCKET = 1, SO_PROTOCOL = 38;

/** A kind that is refused: its name for `check --kinds` and how it is recognised and named. */
export interface RefusedKind<T> {
  name: string;
  claims(x: T): boolean;
  /** the refusal: what it is, where, and what to do */
  refusal(x: T): string;
}

/** What a mapping refusal is asked about. */
export interface MappingFacts { path: string; label: string; pid: number; shared: boolean }

/** The protocol name a socket's inode carries ("NETLINK", "TCP", "UNIX" ...). */
export function socketProtocol(f: FoundFd): string {
  const buf = Buffer.alloc(64);
  try {
    const n = syscall(SYS_GETXATTR, 'getxattr(system.sockprotoname)', Buffer.from(`/proc/${f.pid}/fd/${f.fd}\0`), Buffer.from('system.sockprotoname\0'), buf, buf.length);
    return buf.subarray(0, n).toString('latin1').replace(/\0.*$/s, '');
  } catch {
    return '?';
  }
}

/** An int socket option (SOL_SOCKET) of a process's socket, read on a copy taken with pidfd_getfd; null if it cannot be. */
function socketOption(f: FoundFd, opt: number): number | null {
  let pidfd = -1, copy = -1;
  try {
    pidfd = syscall(SYS.pidfd_open, 'pidfd_open', f.pid, 0);
    copy = syscall(SYS.pidfd_getfd, 'pidfd_getfd', pidfd, f.fd, 0);
    const v = Buffer.alloc(4), len = Buffer.alloc(4);
    len.writeUInt32LE(4);
    syscall(SYS_GETSOCKOPT, 'getsockopt', copy, SOL_SOCKET, opt, v, len);
    return v.readInt32LE(0);
  } catch {
    return null;
  } finally {
    if (copy >= 0) fs.closeSync(copy);
    if (pidfd >= 0) fs.closeSync(pidfd);
  }
}

/** A socket's row in /proc/PID/net/TABLE (by inode), as column name -> value. */
function socketRow(pid: number, table: string, ino: string): Record<string, string> | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
  } catch {
    return null;
  }
  const [head, ...rows] = text.split('\n').filter(Boolean);
  const cols = head.trim().split(/\s+/);
  const at = cols.indexOf('Inode');
  for (const r of rows) {
    const v = r.trim().split(/\s+/);
    if (v[at] === ino) return Object.fromEntries(cols.map((c, i) => [c, v[i]]));
  }
  return null;
}

const socketIno = (f: FoundFd) => /^socket:\[(\d+)\]$/.exec(f.target)?.[1] ?? '';

/** Netlink protocol numbers (linux/netlink.h) by name. */
const NETLINK_PROTOCOLS: Record<number, string> = {
  0: 'route (NETLINK_ROUTE)', 2: 'usersock', 4: 'sock_diag (NETLINK_SOCK_DIAG)', 5: 'nflog', 6: 'xfrm', 7: 'selinux', 8: 'iscsi',
  9: 'audit (NETLINK_AUDIT)', 10: 'fib_lookup', 11: 'connector', 12: 'netfilter (NETLINK_NETFILTER)', 13: 'ip6_fw', 14: 'dnrtmsg',
  15: 'uevent (NETLINK_KOBJECT_UEVENT)', 16: 'generic (NETLINK_GENERIC)', 18: 'scsitransport', 19: 'ecryptfs', 20: 'rdma', 21: 'crypto', 22: 'smc',
};

/** Sockets whose families another module does (or will) restore: not claimed here. */
const OTHERS_SOCKETS = /^(UNIX|TCP|UDP|MPTCP)/; // UNIX, UNIX-STREAM, TCPv6, UDPLITE ...
const isSocket = (f: FoundFd) => f.target.startsWith('socket:[');

const DROP = 'close it before the checkpoint, or checkpoint a program that does not hold one';

export const REFUSED_FDS: ReadonlyArray<RefusedKind<FoundFd>> = [
  {
    name: 'fanotify',
    claims: (f) => f.target === 'anon_inode:[fanotify]',
    refusal(f) {
      const marks = f.info().lines.filter((l) => l.startsWith('fanotify ') && !l.startsWith('fanotify flags:'));
      const kinds = (re: RegExp) => marks.filter((l) => re.test(l)).length;
      return `${f.where}: fanotify (init flags 0x${f.info().raw['fanotify flags']?.split(/\s+/)[0] ?? '?'}, ${marks.length} marks: ${kinds(/ ino:/)} on inodes, ${kinds(/ mnt_id:/)} on mounts, ${marks.length - kinds(/ ino:/) - kinds(/ mnt_id:/)} on filesystems) is not supported yet; ${DROP}`;
    },
  },
  { name: 'io_uring', claims: (f) => f.target === 'anon_inode:[io_uring]', refusal: (f) => `${f.where}: io_uring instance is not supported yet; ${DROP}` },
  { name: 'userfaultfd', claims: (f) => f.target === 'anon_inode:[userfaultfd]', refusal: (f) => `${f.where}: userfaultfd is not supported yet; ${DROP}` },
  { name: 'perf_event', claims: (f) => f.target === 'anon_inode:[perf_event]', refusal: (f) => `${f.where}: perf_event fd is not supported yet; ${DROP}` },
  { name: 'bpf', claims: (f) => /^anon_inode:(\[?bpf|bpf)/.test(f.target), refusal: (f) => `${f.where}: BPF object (${f.target}) is not supported yet; ${DROP}` },
  {
    name: 'netlink socket',
    claims: (f) => isSocket(f) && socketProtocol(f) === 'NETLINK',
    refusal(f) {
      const row = socketRow(f.pid, 'netlink', socketIno(f)); // listed once bound
      const proto = row ? Number(row.Eth) : socketOption(f, SO_PROTOCOL);
      const what = proto === null ? 'protocol unknown' : NETLINK_PROTOCOLS[proto] ?? `protocol ${proto}`;
      return `${f.where}: netlink socket, ${what}${row && row.Groups !== '00000000' ? `, groups 0x${row.Groups}` : ''}, is not supported yet; ${DROP} (a program can open it again after restart)`;
    },
  },
  {
    name: 'packet socket',
    claims: (f) => isSocket(f) && socketProtocol(f) === 'PACKET',
    refusal(f) {
      const row = socketRow(f.pid, 'packet', socketIno(f));
      const type = row ? ({ 1: 'SOCK_STREAM', 2: 'SOCK_DGRAM', 3: 'SOCK_RAW', 10: 'SOCK_PACKET' } as Record<string, string>)[row.Type] ?? `type ${row.Type}` : 'type unknown';
      return `${f.where}: packet socket (AF_PACKET, ${type}${row ? `, protocol 0x${row.Proto}, interface ${row.Iface}` : ''}) is not supported yet; ${DROP}`;
    },
  },
  {
    name: 'raw inet socket',
    claims: (f) => isSocket(f) && ['RAW', 'RAWv6', 'PING', 'PINGv6'].includes(socketProtocol(f)),
    refusal: (f) => `${f.where}: raw inet socket (${socketProtocol(f)}) is not supported yet; ${DROP}`,
  },
  {
    name: 'socket of another family',
    claims: (f) => isSocket(f) && !/^\?$/.test(socketProtocol(f)) && !OTHERS_SOCKETS.test(socketProtocol(f)),
    refusal: (f) => `${f.where}: socket of protocol ${socketProtocol(f)} is not supported yet; ${DROP}`,
  },
];

/** The refusals as fd kinds, asked after every kind that restores something. */
export const REFUSED_FD_KINDS: ReadonlyArray<FdKind> = REFUSED_FDS.map((r) => ({
  kinds: [],
  claims: r.claims,
  dump(f) { throw new UnsupportedError(r.refusal(f)); },
  open() { throw new UnsupportedError(`${r.name} cannot be restored`); }, // no record has this kind
}));

export const REFUSED_MAPPINGS: ReadonlyArray<RefusedKind<MappingFacts>> = [
  {
    name: '[aio] ring (io_setup)',
    claims: (m) => m.path === '/[aio] (deleted)' || m.path === '[aio]',
    refusal: (m) => `pid ${m.pid}: ${m.label}: an AIO ring (io_setup) is not supported yet; io_destroy it before the checkpoint (or use a program without Linux AIO)`,
  },
  {
    name: 'io_uring ring',
    claims: (m) => m.path.startsWith('anon_inode:[io_uring]') || m.path === '[io_uring]',
    refusal: (m) => `pid ${m.pid}: ${m.label}: the ring of an io_uring instance is not supported yet; close the io_uring before the checkpoint`,
  },
  {
    name: 'mapping of another anonymous-inode object',
    claims: (m) => m.path.startsWith('anon_inode:'),
    refusal: (m) => `pid ${m.pid}: ${m.label}: a mapping of ${m.path.slice('anon_inode:'.length)} is not supported yet; unmap it before the checkpoint`,
  },
  {
    name: 'private mapping of a memfd',
    claims: (m) => m.path.startsWith('/memfd:') && !m.shared,
    refusal: (m) => `${m.label}: private mapping of a memfd is not supported yet`,
  },

  {
    name: 'named anonymous memory',
    claims: (m) => m.path.startsWith('[anon:') || m.path.startsWith('[anon_shmem:'),
    refusal: (m) => `pid ${m.pid}: ${m.label}: named anonymous memory is not supported yet; checkpoint it without the name`,
  },
];

/** Refuse a mapping of a refused kind by name (before the memory module looks at it). */
export function refuseMapping(m: MappingFacts): void {
  const r = REFUSED_MAPPINGS.find((k) => k.claims(m));
  if (r) throw new UnsupportedError(r.refusal(m));
}

// sock_diag over netlink, from stasis itself: what the kernel tells of a
// socket without touching it (state, addresses, queue lengths, backlog,
// shutdown). Generic transport (`sockDiagDump`) plus the inet_diag request
// and reply (`inetDiag`); other families build their own request on the
// same transport.
import { syscall } from './libc';
import { StasisError } from './errno';
import { SOCK } from './sockopt';

const AF_NETLINK = 16, NETLINK_SOCK_DIAG = 4, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0o2000000;
const SOCK_DIAG_BY_FAMILY = 20, NLM_F_REQUEST = 1, NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2, NLMSG_DONE = 3;

/** One reply message: its fixed part and its attributes by type. */
export interface DiagMessage { msg: Buffer; attrs: Map<number, Buffer> }

const align4 = (n: number) => (n + 3) & ~3;

/**
 * Send one SOCK_DIAG_BY_FAMILY dump request (`body` is the family's request
 * struct) and collect every reply message until NLMSG_DONE.
 */
export function sockDiagDump(body: Buffer, fixedLen: number, what: string): DiagMessage[] {
  const fd = syscall(SOCK.socket, 'socket(AF_NETLINK)', AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  try {
    const req = Buffer.alloc(16 + body.length);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
    req.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    req.writeUInt32LE(1, 8);
    body.copy(req, 16);
    syscall(SOCK.sendto, `sendto(sock_diag ${what})`, fd, req, req.length, 0, 0, 0);
    const out: DiagMessage[] = [];
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const n = syscall(SOCK.recvfrom, `recvfrom(sock_diag ${what})`, fd, buf, buf.length, 0, 0, 0);
      if (n === 0) throw new StasisError(`sock_diag ${what}: the kernel closed the dump early`);
      for (let off = 0; off + 16 <= n;) {
        const len = buf.readUInt32LE(off), type = buf.readUInt16LE(off + 4);
        if (len < 16 || off + len > n) throw new StasisError(`sock_diag ${what}: malformed reply`);
        if (type === NLMSG_DONE) return out;
        if (type === NLMSG_ERROR) {
          const err = -buf.readInt32LE(off + 16);
          if (err === 0) return out;
          throw new StasisError(`sock_diag ${what}: the kernel answered errno ${err}`);
        }
        const msg = Buffer.from(buf.subarray(off + 16, off + 16 + fixedLen));
        const attrs = new Map<number, Buffer>();
        for (let a = off + 16 + align4(fixedLen); a + 4 <= off + len;) {
          const alen = buf.readUInt16LE(a), atype = buf.readUInt16LE(a + 2) & 0x3fff;
          if (alen < 4) break;
          attrs.set(atype, Buffer.from(buf.subarray(a + 4, a + alen)));
          a += align4(alen);
        }
        out.push({ msg, attrs });
        off += align4(len);
      }
    }
  } finally {
    syscall(3 /* close */, 'close', fd);
  }
}

export const AF_INET = 2, AF_INET6 = 10;
export const IPPROTO_TCP = 6, IPPROTO_UDP = 17;
const INET_DIAG_INFO = 2, INET_DIAG_SHUTDOWN = 8, INET_DIAG_SKV6ONLY = 11, INET_DIAG_MD5SIG = 18;
/** sizeof(struct tcp_diag_md5sig): one per key */
const MD5SIG_SIZE = 100;

/** TCP states as the kernel numbers them (include/net/tcp_states.h). */
export const TCP_STATES = ['', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV', 'BOUND_INACTIVE'] as const;

export interface InetDiag {
  family: number;
  protocol: number;
  /** TCP_STATES index (UDP: 7 unconnected, 1 connected) */
  state: number;
  localAddr: string;
  localPort: number;
  remoteAddr: string;
  remotePort: number;
  /** TCP listener: connections in the accept queue; otherwise bytes unread */
  rqueue: number;
  /** TCP listener: the backlog; otherwise bytes not yet acknowledged */
  wqueue: number;
  uid: number;
  inode: number;
  /** bits: 1 receive side shut, 2 send side shut */
  shutdown: number;
  v6only?: boolean;
  /** TCP: how many MD5 signature keys (TCP_MD5SIG) it holds; the kernel reports them to CAP_NET_ADMIN only */
  md5Keys: number;
}

function address(family: number, b: Buffer): string {
  if (family === AF_INET) return [...b.subarray(0, 4)].join('.');
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i).toString(16));
  return compressV6(words);
}

/** RFC 5952 text of an IPv6 address from its eight words. */
function compressV6(words: string[]): string {
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === '0') j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return words.join(':');
  return `${words.slice(0, best).join(':')}::${words.slice(best + bestLen).join(':')}`;
}

/**
 * The socket of `family`/`protocol` with inode `ino`, as inet_diag reports
 * it in stasis's network namespace, or null when there is none.
 */
export function inetDiag(family: number, protocol: number, ino: number): InetDiag | null {
  const body = Buffer.alloc(56); // struct inet_diag_req_v2
  body.writeUInt8(family, 0);
  body.writeUInt8(protocol, 1);
  // INET_DIAG_INFO asked for: the kernel adds TCP's auxiliary attributes (MD5 keys) with it
  body.writeUInt8(protocol === IPPROTO_TCP ? 1 << (INET_DIAG_INFO - 1) : 0, 2);
  body.writeUInt32LE(0xffffffff, 4); // every state
  const what = `${family === AF_INET ? 'inet' : 'inet6'} ${protocol === IPPROTO_TCP ? 'tcp' : 'udp'}`;
  for (const { msg, attrs } of sockDiagDump(body, 72, what)) {
    if (msg.readUInt32LE(68) !== ino) continue;
    const shut = attrs.get(INET_DIAG_SHUTDOWN), v6 = attrs.get(INET_DIAG_SKV6ONLY), md5 = attrs.get(INET_DIAG_MD5SIG);
    return {
      family: msg.readUInt8(0), protocol, state: msg.readUInt8(1),
      localPort: msg.readUInt16BE(4), remotePort: msg.readUInt16BE(6),
      localAddr: address(family, msg.subarray(8, 24)), remoteAddr: address(family, msg.subarray(24, 40)),
      rqueue: msg.readUInt32LE(56), wqueue: msg.readUInt32LE(60), uid: msg.readUInt32LE(64), inode: ino,
      shutdown: shut ? shut.readUInt8(0) : 0, md5Keys: md5 ? Math.floor(md5.length / MD5SIG_SIZE) : 0,
      ...(v6 ? { v6only: v6.readUInt8(0) !== 0 } : {}),
    };
  }
  return null;
}

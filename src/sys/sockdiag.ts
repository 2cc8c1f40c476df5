// inet_diag over the sock_diag transport (src/sys/netlink.ts), from stasis
// itself: what the kernel tells of a TCP or UDP socket without touching it
// (state, addresses, queue lengths, backlog, shutdown).
import { StasisError } from './errno';
import { sockDiag, rtAttrs } from './netlink';

/** One reply message: its fixed part and its attributes by type. */
export interface DiagMessage { msg: Buffer; attrs: Map<number, Buffer> }

/**
 * One SOCK_DIAG_BY_FAMILY dump request (`body` is the family's request
 * struct): every reply message, split into its fixed part and attributes.
 */
export function sockDiagDump(body: Buffer, fixedLen: number, what: string): DiagMessage[] {
  let answers: Buffer[];
  try {
    answers = sockDiag(body);
  } catch (e) {
    throw e instanceof StasisError ? new StasisError(`sock_diag ${what}: ${e.message}`) : e;
  }
  return answers.map((m) => ({ msg: m.subarray(0, fixedLen), attrs: rtAttrs(m, (fixedLen + 3) & ~3) }));
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

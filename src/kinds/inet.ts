// TCP and UDP sockets over IPv4 and IPv6. Read from stasis itself on a
// copy of the socket (pidfd_getfd: the same socket, so what is read is the
// target's): family, addresses, the options that differ from a fresh
// socket's, the backlog and accept queue (sock_diag). An established TCP
// connection is read in TCP repair mode (sequence numbers, both queues,
// window, MSS, window scaling, timestamps) with --tcp-established; it stays
// in repair mode, its incoming segments dropped unacknowledged by a socket
// filter, until the tree is let go: killed, it closes silently (no FIN, no
// RST); left running, it leaves repair mode and drops the filter. Datagrams
// queued on a UDP socket are peeked one by one (SO_PEEK_OFF) with senders.
// Restored by system calls injected into the task: socket, setsockopt,
// bind, listen, or repair-mode connect and queue writes; connections leave
// repair mode once every process of the tree is rebuilt (InetKeeper), which
// then sends queued datagrams again from their senders' restored sockets.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { check } from '../image/checks';
import { FdKind, FoundFd, ObjectTable, CommonFd, RestoreContext } from './fdkind';
import type { ImageCreds } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { RepairGuards } from '../ptrace/watchdog';
import { SYS } from '../sys/x86';
import { syscall, addressOf } from '../sys/libc';
import { StasisError, SyscallError, UnsupportedError } from '../sys/errno';
import { int, i32, u32, name, base64Max, base64Bytes } from '../image/fields';
import { inetDiag, InetDiag, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_STATES } from '../sys/sockdiag';
import {
  SOCK, takeFd, closeFd, getsockoptBuf, getsockoptInt, getsockoptIntOr, setsockoptBuf, setsockoptInt, ioctlInt, peek,
} from '../sys/sockopt';

const SOL_SOCKET = 1, SOL_IP = 0, SOL_TCP = 6, SOL_UDP = 17, SOL_IPV6 = 41, SO_REUSEADDR = 2;
const SOCK_SNDBUF_LOCK = 1, SOCK_RCVBUF_LOCK = 2, SO_BUF_LOCK = 72;
const SO_RCVTIMEO = 20, SO_SNDTIMEO = 21, SO_TIMESTAMPING = 37, SO_TXTIME = 61, TCP_CONGESTION = 13, TCP_ULP = 31, TCP_AO_INFO = 40;
const SOCK_RAW = 3;
const SO_TYPE = 3, SO_PROTOCOL = 38, SO_DOMAIN = 39, SO_LINGER = 13, SO_BINDTODEVICE = 25;
const SO_ATTACH_FILTER = 26, SO_DETACH_FILTER = 27, SO_RCVBUF = 8, SO_SNDBUF = 7, SO_RCVBUFFORCE = 33, SO_SNDBUFFORCE = 32;
const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_NONBLOCK = 0o4000, O_NONBLOCK = 0o4000;
const TCP_INFO = 11, TCP_MAXSEG = 2, TCP_REPAIR = 19, TCP_REPAIR_QUEUE = 20, TCP_QUEUE_SEQ = 21;
const TCP_REPAIR_OPTIONS = 22, TCP_TIMESTAMP = 24, TCP_REPAIR_WINDOW = 29;
const TCP_NO_QUEUE = 0, TCP_RECV_QUEUE = 1, TCP_SEND_QUEUE = 2;
const TCPOPT_MSS = 2, TCPOPT_WINDOW = 3, TCPOPT_SACK_PERM = 4, TCPOPT_TIMESTAMP = 8;
const TCPI_OPT_TIMESTAMPS = 1, TCPI_OPT_SACK = 2, TCPI_OPT_WSCALE = 4;
const SIOCINQ = 0x541b, SIOCOUTQ = 0x5411, SIOCOUTQNSD = 0x894b;
const F_SETFL = 4;
const TCP_ESTABLISHED = 1, TCP_CLOSE = 7, TCP_LISTEN = 10;

// node:net only for these two (its load is a few ms of every command).
function netModule(): typeof import('node:net') {
  return require('node:net') as typeof import('node:net');
}
const isIP = (s: string) => netModule().isIP(s);

/** Largest socket queue saved: well above net.core.{r,w}mem_max and tcp_{r,w}mem. */
const QUEUE_MAX = 64 << 20;
/** Largest UDP payload (IPv6 without jumbograms), and most datagrams saved per socket. */
const DATAGRAM_MAX = 65527, DATAGRAMS_MAX = 1 << 16;
const UDP_CORK = 1, SO_PEEK_OFF = 42, MSG_PEEK = 2, MSG_DONTWAIT = 0x40, MSG_TRUNC = 0x20;

/**
 * Int options, read with getsockopt and set back with setsockopt (same
 * level and number). Recorded only where they differ from a fresh socket
 * of the same family and type. SOL_IP options apply to IPv6 sockets too
 * (their IPv4-mapped traffic). Order is restore order: SO_PRIORITY comes
 * after IP_TOS (which sets the priority too), SO_BUF_LOCK after the
 * buffer sizes (which set the locks too). `notEst`: the kernel computes it
 * for an established connection (its MSS and window are restored by repair
 * mode), so it is saved for the other states only. Not here on purpose:
 * TCP_QUICKACK (the kernel's own delayed-ACK mode, flipped by traffic) and
 * SO_INCOMING_CPU (the CPU that last received, updated by the kernel).
 * Multicast options are UDP's: an accepted TCP socket reads the SYN's
 * interface and TTL there, and TCP refuses to have them set.
 */
const OPTIONS: ReadonlyArray<{ name: string; level: number; opt: number; tcp?: boolean; udp?: boolean; v6?: boolean; notEst?: boolean }> = [
  { name: 'reuseaddr', level: SOL_SOCKET, opt: 2 },
  { name: 'reuseport', level: SOL_SOCKET, opt: 15 },
  { name: 'keepalive', level: SOL_SOCKET, opt: 9 },
  { name: 'broadcast', level: SOL_SOCKET, opt: 6 },
  { name: 'oobinline', level: SOL_SOCKET, opt: 10 },
  { name: 'mark', level: SOL_SOCKET, opt: 36 },
  { name: 'rcvlowat', level: SOL_SOCKET, opt: 18 },
  { name: 'rcvbuf', level: SOL_SOCKET, opt: SO_RCVBUF },
  { name: 'sndbuf', level: SOL_SOCKET, opt: SO_SNDBUF },
  { name: 'bufLock', level: SOL_SOCKET, opt: SO_BUF_LOCK },
  { name: 'debug', level: SOL_SOCKET, opt: 1 },
  { name: 'dontroute', level: SOL_SOCKET, opt: 5 },
  { name: 'passcred', level: SOL_SOCKET, opt: 16 },
  { name: 'passsec', level: SOL_SOCKET, opt: 34 },
  { name: 'timestamp', level: SOL_SOCKET, opt: 29 },
  { name: 'timestampns', level: SOL_SOCKET, opt: 35 },
  { name: 'timestampNew', level: SOL_SOCKET, opt: 63 },
  { name: 'timestampnsNew', level: SOL_SOCKET, opt: 64 },
  { name: 'timestamping', level: SOL_SOCKET, opt: SO_TIMESTAMPING },
  { name: 'rxqOvfl', level: SOL_SOCKET, opt: 40 },
  { name: 'wifiStatus', level: SOL_SOCKET, opt: 41 },
  { name: 'peekOff', level: SOL_SOCKET, opt: 42 },
  { name: 'nofcs', level: SOL_SOCKET, opt: 43 },
  { name: 'selectErrQueue', level: SOL_SOCKET, opt: 45 },
  { name: 'busyPoll', level: SOL_SOCKET, opt: 46 },
  { name: 'maxPacingRate', level: SOL_SOCKET, opt: 47 },
  { name: 'zerocopy', level: SOL_SOCKET, opt: 60 },
  { name: 'preferBusyPoll', level: SOL_SOCKET, opt: 69 },
  { name: 'busyPollBudget', level: SOL_SOCKET, opt: 70 },
  { name: 'reserveMem', level: SOL_SOCKET, opt: 73 },
  { name: 'txrehash', level: SOL_SOCKET, opt: 74 },
  { name: 'rcvmark', level: SOL_SOCKET, opt: 75 },
  { name: 'passpidfd', level: SOL_SOCKET, opt: 76 },
  { name: 'rcvpriority', level: SOL_SOCKET, opt: 82 },
  { name: 'nodelay', level: SOL_TCP, opt: 1, tcp: true },
  { name: 'cork', level: SOL_TCP, opt: 3, tcp: true },
  { name: 'keepidle', level: SOL_TCP, opt: 4, tcp: true },
  { name: 'keepintvl', level: SOL_TCP, opt: 5, tcp: true },
  { name: 'keepcnt', level: SOL_TCP, opt: 6, tcp: true },
  { name: 'syncnt', level: SOL_TCP, opt: 7, tcp: true },
  { name: 'linger2', level: SOL_TCP, opt: 8, tcp: true },
  { name: 'deferAccept', level: SOL_TCP, opt: 9, tcp: true },
  { name: 'maxseg', level: SOL_TCP, opt: TCP_MAXSEG, tcp: true, notEst: true },
  { name: 'windowClamp', level: SOL_TCP, opt: 10, tcp: true, notEst: true },
  { name: 'thinLinearTimeouts', level: SOL_TCP, opt: 16, tcp: true },
  { name: 'userTimeout', level: SOL_TCP, opt: 18, tcp: true },
  { name: 'fastopen', level: SOL_TCP, opt: 23, tcp: true },
  { name: 'notsentLowat', level: SOL_TCP, opt: 25, tcp: true },
  { name: 'saveSyn', level: SOL_TCP, opt: 27, tcp: true },
  { name: 'fastopenConnect', level: SOL_TCP, opt: 30, tcp: true },
  { name: 'fastopenNoCookie', level: SOL_TCP, opt: 34, tcp: true },
  { name: 'inq', level: SOL_TCP, opt: 36, tcp: true },
  { name: 'txDelay', level: SOL_TCP, opt: 37, tcp: true },
  { name: 'rtoMaxMs', level: SOL_TCP, opt: 44, tcp: true },
  { name: 'rtoMinUs', level: SOL_TCP, opt: 45, tcp: true },
  { name: 'delackMaxUs', level: SOL_TCP, opt: 46, tcp: true },
  { name: 'udpCork', level: SOL_UDP, opt: 1, udp: true },
  { name: 'udpEncap', level: SOL_UDP, opt: 100, udp: true },
  { name: 'udpNoCheck6Tx', level: SOL_UDP, opt: 101, udp: true },
  { name: 'udpNoCheck6Rx', level: SOL_UDP, opt: 102, udp: true },
  { name: 'udpSegment', level: SOL_UDP, opt: 103, udp: true },
  { name: 'udpGro', level: SOL_UDP, opt: 104, udp: true },
  { name: 'tos', level: SOL_IP, opt: 1 },
  { name: 'ttl', level: SOL_IP, opt: 2 },
  { name: 'recvopts', level: SOL_IP, opt: 6 },
  { name: 'retopts', level: SOL_IP, opt: 7 },
  { name: 'pktinfo', level: SOL_IP, opt: 8 },
  { name: 'mtuDiscover', level: SOL_IP, opt: 10 },
  { name: 'recverr', level: SOL_IP, opt: 11 },
  { name: 'recvttl', level: SOL_IP, opt: 12 },
  { name: 'recvtos', level: SOL_IP, opt: 13 },
  { name: 'freebind', level: SOL_IP, opt: 15 },
  { name: 'ipPasssec', level: SOL_IP, opt: 18 },
  { name: 'transparent', level: SOL_IP, opt: 19 },
  { name: 'recvorigdstaddr', level: SOL_IP, opt: 20 },
  { name: 'minttl', level: SOL_IP, opt: 21 },
  { name: 'checksum', level: SOL_IP, opt: 23 },
  { name: 'bindAddressNoPort', level: SOL_IP, opt: 24 },
  { name: 'recvfragsize', level: SOL_IP, opt: 25 },
  { name: 'recverrRfc4884', level: SOL_IP, opt: 26 },
  { name: 'multicastIf', level: SOL_IP, opt: 32, udp: true },
  { name: 'multicastTtl', level: SOL_IP, opt: 33, udp: true },
  { name: 'multicastLoop', level: SOL_IP, opt: 34, udp: true },
  { name: 'multicastAll', level: SOL_IP, opt: 49, udp: true },
  { name: 'unicastIf', level: SOL_IP, opt: 50 },
  { name: 'localPortRange', level: SOL_IP, opt: 51 },
  { name: 'v6only', level: SOL_IPV6, opt: 26, v6: true },
  { name: 'tclass', level: SOL_IPV6, opt: 67, v6: true },
  { name: 'hops', level: SOL_IPV6, opt: 16, v6: true },
  { name: 'freebind6', level: SOL_IPV6, opt: 78, v6: true },
  { name: 'transparent6', level: SOL_IPV6, opt: 75, v6: true },
  { name: 'pktinfo2292', level: SOL_IPV6, opt: 2, v6: true },
  { name: 'hopopts2292', level: SOL_IPV6, opt: 3, v6: true },
  { name: 'dstopts2292', level: SOL_IPV6, opt: 4, v6: true },
  { name: 'rthdr2292', level: SOL_IPV6, opt: 5, v6: true },
  { name: 'checksum6', level: SOL_IPV6, opt: 7, v6: true },
  { name: 'hoplimit2292', level: SOL_IPV6, opt: 8, v6: true },
  { name: 'recvflowinfo', level: SOL_IPV6, opt: 11, v6: true },
  { name: 'multicastIf6', level: SOL_IPV6, opt: 17, v6: true, udp: true },
  { name: 'multicastHops', level: SOL_IPV6, opt: 18, v6: true, udp: true },
  { name: 'multicastLoop6', level: SOL_IPV6, opt: 19, v6: true, udp: true },
  { name: 'mtuDiscover6', level: SOL_IPV6, opt: 23, v6: true },
  { name: 'recverr6', level: SOL_IPV6, opt: 25, v6: true },
  { name: 'multicastAll6', level: SOL_IPV6, opt: 29, v6: true, udp: true },
  { name: 'recverrRfc4884v6', level: SOL_IPV6, opt: 31, v6: true },
  { name: 'flowinfoSend', level: SOL_IPV6, opt: 33, v6: true },
  { name: 'recvpktinfo', level: SOL_IPV6, opt: 49, v6: true },
  { name: 'recvhoplimit', level: SOL_IPV6, opt: 51, v6: true },
  { name: 'recvhopopts', level: SOL_IPV6, opt: 53, v6: true },
  { name: 'recvrthdr', level: SOL_IPV6, opt: 56, v6: true },
  { name: 'recvdstopts', level: SOL_IPV6, opt: 58, v6: true },
  { name: 'recvpathmtu', level: SOL_IPV6, opt: 60, v6: true },
  { name: 'dontfrag', level: SOL_IPV6, opt: 62, v6: true },
  { name: 'recvtclass', level: SOL_IPV6, opt: 66, v6: true },
  { name: 'autoflowlabel', level: SOL_IPV6, opt: 70, v6: true },
  { name: 'addrPreferences', level: SOL_IPV6, opt: 72, v6: true },
  { name: 'minhopcount', level: SOL_IPV6, opt: 73, v6: true },
  { name: 'recvorigdstaddr6', level: SOL_IPV6, opt: 74, v6: true },
  { name: 'unicastIf6', level: SOL_IPV6, opt: 76, v6: true },
  { name: 'recvfragsize6', level: SOL_IPV6, opt: 77, v6: true },
  { name: 'priority', level: SOL_SOCKET, opt: 12 },
];

const isIpText = check('ipText', (s: string) => isIP(s) !== 0);
const ipText = lazySchema(() => z.string().max(64).refine(isIpText, 'not an IP address'));
export const Endpoint = lazySchema(() => z.object({ addr: ipText, port: int(0, 65535) }));
export type Endpoint = z.infer<typeof Endpoint>;

/** Each option of OPTIONS that differs from a fresh socket's, by name. */
export const InetOptions = lazySchema(() => z.object(Object.fromEntries(OPTIONS.map((o) => [o.name, i32.optional()]))) as unknown as z.ZodType<Partial<Record<string, number>>>);
export type InetOptions = Partial<Record<string, number>>;

const unsentFits = check('tcpUnsentFits', (t: { unsent: number; sendQueue: string }) => t.unsent <= base64Bytes(t.sendQueue));
const wscaleBothWays = check('tcpWscaleBothWays', (t: { sndWscale?: number; rcvWscale?: number }) => (t.sndWscale === undefined) === (t.rcvWscale === undefined));

/** An established connection as TCP repair mode reads it. */
export const TcpRepair = lazySchema(() => z.object({
  /** TCP_QUEUE_SEQ of the send queue (write_seq) and the receive queue (rcv_nxt) */
  sndSeq: u32,
  rcvSeq: u32,
  /** bytes sent, not acknowledged, then not yet sent, base64 */
  sendQueue: base64Max(QUEUE_MAX),
  /** how many bytes at the end of sendQueue were not sent yet */
  unsent: int(0, QUEUE_MAX),
  /** bytes received, not read by the program, base64 */
  recvQueue: base64Max(QUEUE_MAX),
  mss: int(1, 65535),
  /** window scaling (absent: not negotiated) */
  sndWscale: int(0, 14).optional(),
  rcvWscale: int(0, 14).optional(),
  sack: z.boolean(),
  /** TCP_TIMESTAMP: the connection's timestamp clock (absent: no timestamps) */
  timestamp: u32.optional(),
  /** TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup */
  window: z.array(u32).length(5),
}).refine(unsentFits, 'more unsent bytes than the send queue holds').refine(wscaleBothWays, 'window scaling is both ways or none'));
export type TcpRepair = z.infer<typeof TcpRepair>;

interface InetShape {
  family: string; proto: string; state: string; local: { addr: string }; remote?: { addr: string };
  backlog?: number; tcp?: unknown; queued?: Array<{ from: { addr: string } }>;
}
const familyOf = (s: InetShape) => (s.family === 'inet' ? 4 : 6);
const INET_RULES = {
  connectedIsUdp: check('inetConnectedIsUdp', (s: InetShape) => s.proto === 'udp' || s.state !== 'connected'),
  udpNeverListens: check('inetUdpNeverListens', (s: InetShape) => s.proto === 'tcp' || (s.state !== 'listen' && s.state !== 'established')),
  tcpStateIffEstablished: check('inetTcpStateIffEstablished', (s: InetShape) => (s.state === 'established') === (s.tcp !== undefined)),
  backlogIffListening: check('inetBacklogIffListening', (s: InetShape) => (s.state === 'listen') === (s.backlog !== undefined)),
  remoteIffConnected: check('inetRemoteIffConnected', (s: InetShape) => (s.state === 'established' || s.state === 'connected') === (s.remote !== undefined)),
  queuedOnBoundUdp: check('inetQueuedOnBoundUdp', (s: InetShape) => s.queued === undefined || (s.proto === 'udp' && s.state !== 'unbound')),
  sendersOfItsFamily: check('inetSendersOfItsFamily', (s: InetShape) => (s.queued ?? []).every((d) => isIP(d.from.addr) === familyOf(s))),
  endsOfItsFamily: check('inetEndsOfItsFamily', (s: InetShape) => [s.local, ...(s.remote ? [s.remote] : [])].every((e) => isIP(e.addr) === familyOf(s))),
};

export const InetState = lazySchema(() => z.object({
  family: z.enum(['inet', 'inet6']),
  proto: z.enum(['tcp', 'udp']),
  /** unbound, bound to a port, listening (TCP), connected (UDP) or established (TCP) */
  state: z.enum(['unbound', 'bound', 'listen', 'connected', 'established']),
  local: Endpoint,
  remote: Endpoint.optional(),
  /** listen(2) backlog */
  backlog: int(0, 0x7fffffff).optional(),
  opts: InetOptions,
  /** SO_LINGER while on: seconds */
  linger: int(0, 0x7fffffff).optional(),
  /** SO_BINDTODEVICE */
  device: name(16).optional(),
  /** SO_RCVTIMEO, SO_SNDTIMEO in microseconds */
  rcvtimeo: int(0, Number.MAX_SAFE_INTEGER).optional(),
  sndtimeo: int(0, Number.MAX_SAFE_INTEGER).optional(),
  /** SO_TXTIME: clock id and flags */
  txtime: z.object({ clock: i32, flags: u32 }).optional(),
  /** TCP_CONGESTION: the congestion control algorithm's name */
  congestion: z.string().min(1).max(15).regex(/^[A-Za-z0-9_-]+$/, 'not an algorithm name').optional(),
  tcp: TcpRepair.optional(),
  /** UDP: datagrams received, not read by the program, oldest first, each with its sender */
  queued: z.array(z.object({ data: base64Max(DATAGRAM_MAX), from: Endpoint })).min(1).max(DATAGRAMS_MAX).optional(),
}).refine(INET_RULES.connectedIsUdp, 'connected is a UDP state (TCP: established)')
  .refine(INET_RULES.udpNeverListens, 'a UDP socket neither listens nor is established')
  .refine(INET_RULES.tcpStateIffEstablished, 'established connections, and only they, carry tcp repair state')
  .refine(INET_RULES.backlogIffListening, 'listening sockets, and only they, carry a backlog')
  .refine(INET_RULES.remoteIffConnected, 'only a connected socket has a remote end')
  .refine(INET_RULES.queuedOnBoundUdp, 'only a bound UDP socket has datagrams queued')
  .refine(INET_RULES.sendersOfItsFamily, 'a datagram from an address of the other family')
  .refine(INET_RULES.endsOfItsFamily, 'an address of the other family'));
export type InetState = z.infer<typeof InetState>;
export const InetFd = lazySchema(() => z.object({ kind: z.literal('inet'), inet: InetState }));
export type InetFd = z.infer<typeof InetFd>;

/** "tcp 127.0.0.1:6379", "udp [::1]:53": how messages name an endpoint. */
export function endpointText(proto: string, e: Endpoint): string {
  return `${proto} ${e.addr.includes(':') ? `[${e.addr}]` : e.addr}:${e.port}`;
}

// ---- checkpoint ------------------------------------------------------------------

/** Copies of the tree's sockets taken by claims(), by FoundFd; dump() keeps or closes them. */
const taken = new WeakMap<FoundFd, { fd: number; domain: number }>();

/**
 * The connections of one checkpoint held in repair mode. Let go with the
 * tree: killed, they close in repair mode (silently); resumed, they leave
 * repair mode (a window probe tells the peer where things are) and drop
 * the filter, so the program carries on as if nothing happened.
 */
export class InetTable implements ObjectTable {
  private readonly held: Array<{ fd: number; where: string; reuse: number }> = [];
  /** should stasis die while connections are held, these take them out of repair mode */
  readonly guards = new RepairGuards();

  private readonly udp: Array<{ where: string; family: InetState['family']; local: Endpoint; from: Endpoint[] }> = [];

  /** A bound UDP socket of the tree, and the senders of the datagrams queued on it. */
  noteUdp(where: string, family: InetState['family'], local: Endpoint, from: Endpoint[]): void {
    this.udp.push({ where, family, local, from });
  }

  /** Queued datagrams are sent again at restart by their sender: it must be a UDP socket of the tree. */
  refuseOutsiders(): void {
    for (const u of this.udp) {
      for (const from of u.from) {
        if (udpSenderOf(this.udp.map((o) => ({ ...o, proto: 'udp', state: 'bound' })), u.family, from)) continue;
        throw new UnsupportedError(`${u.where}: ${endpointText('udp', u.local)} has a datagram queued from ${endpointText('udp', from).slice(4)}, which is no ${u.family} UDP socket of the tree (it is sent again from its sender at restart); not supported yet: checkpoint once the program has read it`);
      }
    }
  }

  /** `reuse`: its SO_REUSEADDR, which leaving repair mode clears */
  hold(fd: number, where: string, reuse: number): void {
    this.held.push({ fd, where, reuse });
  }

  release(kill: boolean): void {
    for (const h of this.held.splice(0)) {
      try {
        if (!kill) {
          setsockoptInt(h.fd, SOL_TCP, TCP_REPAIR, 0, 'TCP_REPAIR off');
          if (h.reuse) setsockoptInt(h.fd, SOL_SOCKET, SO_REUSEADDR, h.reuse, 'SO_REUSEADDR');
          setsockoptBuf(h.fd, SOL_SOCKET, SO_DETACH_FILTER, Buffer.alloc(4), 'SO_DETACH_FILTER');
        }
      } catch { /* gone with its process */ }
      closeFd(h.fd);
    }
    this.guards.done();
  }
}

function isSocketLink(target: string): boolean {
  return /^socket:\[\d+\]$/.test(target);
}

/** The family of a socket of the tree, from a copy of it (kept for dump when inet). */
function claimInet(f: FoundFd): boolean {
  if (!isSocketLink(f.target)) return false;
  const fd = takeFd(f.pid, f.fd, f.where);
  let domain: number;
  try {
    domain = getsockoptInt(fd, SOL_SOCKET, SO_DOMAIN, 'SO_DOMAIN');
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  // Raw sockets are left to the named refusals (src/kinds/refused.ts).
  if ((domain !== AF_INET && domain !== AF_INET6) || getsockoptInt(fd, SOL_SOCKET, SO_TYPE, 'SO_TYPE') === SOCK_RAW) {
    closeFd(fd);
    return false;
  }
  taken.set(f, { fd, domain });
  return true;
}

function sockaddrText(b: Buffer): Endpoint {
  const family = b.readUInt16LE(0);
  const port = b.readUInt16BE(2);
  if (family === AF_INET) return { addr: [...b.subarray(4, 8)].join('.'), port };
  const words: string[] = [];
  for (let i = 8; i < 24; i += 2) words.push(b.readUInt16BE(i).toString(16));
  return { addr: canonicalV6(words.join(':')), port };
}

/** One text per IPv6 address (the compressed form node's net module would also accept). */
function canonicalV6(s: string): string {
  const sock = new (netModule().SocketAddress)({ address: s, family: 'ipv6' });
  return sock.address;
}

function sockname(fd: number, call: number, what: string): Endpoint | null {
  const b = Buffer.alloc(28);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(28);
  try {
    syscall(call, what, fd, b, len);
  } catch (e) {
    if (e instanceof SyscallError && e.code === 'ENOTCONN') return null;
    throw e;
  }
  return sockaddrText(b);
}

/** What a fresh socket of this family and type says of each option (the defaults). */
const freshCache = new Map<string, Map<string, number | null>>();
function freshDefaults(domain: number, type: number, protocol: number): Map<string, number | null> {
  const key = `${domain}/${type}/${protocol}`;
  let m = freshCache.get(key);
  if (m) return m;
  const fd = syscall(SOCK.socket, 'socket', domain, type, protocol);
  try {
    m = readOptions(fd, domain, type);
    freshExtras.set(key, readExtras(fd, type));
  } finally {
    closeFd(fd);
  }
  freshCache.set(key, m);
  return m;
}

function applies(o: (typeof OPTIONS)[number], domain: number, type: number, established = false): boolean {
  if (o.tcp && type !== SOCK_STREAM) return false;
  if (o.udp && type !== SOCK_DGRAM) return false;
  if (o.v6 && domain !== AF_INET6) return false;
  if (o.notEst && established) return false;
  return true;
}

function readOptions(fd: number, domain: number, type: number, established = false): Map<string, number | null> {
  const m = new Map<string, number | null>();
  for (const o of OPTIONS) if (applies(o, domain, type, established)) m.set(o.name, getsockoptIntOr(fd, o.level, o.opt, o.name));
  return m;
}

/** SO_RCVTIMEO/SO_SNDTIMEO (struct timeval) in microseconds. */
function timeoUs(fd: number, opt: number, what: string): number {
  const tv = getsockoptBuf(fd, SOL_SOCKET, opt, 16, what);
  return Number(tv.readBigInt64LE(0)) * 1e6 + Number(tv.readBigInt64LE(8));
}

/** TCP_CONGESTION: the algorithm's name. */
function congestion(fd: number): string {
  return getsockoptBuf(fd, SOL_TCP, TCP_CONGESTION, 16, 'TCP_CONGESTION').toString('latin1').replace(/\0.*$/s, '');
}

/** What is not an int option: timeouts, SO_TXTIME, the congestion control algorithm. */
type Extras = Pick<InetState, 'rcvtimeo' | 'sndtimeo' | 'txtime' | 'congestion'>;
function readExtras(fd: number, type: number): Extras {
  const tx = getsockoptBuf(fd, SOL_SOCKET, SO_TXTIME, 8, 'SO_TXTIME');
  return {
    rcvtimeo: timeoUs(fd, SO_RCVTIMEO, 'SO_RCVTIMEO'), sndtimeo: timeoUs(fd, SO_SNDTIMEO, 'SO_SNDTIMEO'),
    txtime: { clock: tx.readInt32LE(0), flags: tx.readUInt32LE(4) },
    ...(type === SOCK_STREAM ? { congestion: congestion(fd) } : {}),
  };
}
const freshExtras = new Map<string, Extras>();

function dumpOptions(fd: number, domain: number, type: number, protocol: number, established: boolean): { opts: InetOptions; linger?: number; device?: string } & Extras {
  const fresh = freshDefaults(domain, type, protocol);
  const opts: InetOptions = {};
  for (const [k, v] of readOptions(fd, domain, type, established)) if (v !== null && v !== fresh.get(k)) opts[k] = v;
  // A buffer size the program did not set (its SO_BUF_LOCK bit clear) is
  // the kernel's. An established connection keeps it (its queues must fit
  // at restart, which unlocks it again afterwards); other sockets do not.
  if (!established && !((opts.bufLock ?? 0) & SOCK_SNDBUF_LOCK)) delete opts.sndbuf;
  if (!established && !((opts.bufLock ?? 0) & SOCK_RCVBUF_LOCK)) delete opts.rcvbuf;
  const linger = getsockoptBuf(fd, SOL_SOCKET, SO_LINGER, 8, 'SO_LINGER');
  const dev = getsockoptBuf(fd, SOL_SOCKET, SO_BINDTODEVICE, 16, 'SO_BINDTODEVICE').toString('latin1').replace(/\0.*$/s, '');
  const extras: Extras = {};
  const mine = readExtras(fd, type), base = freshExtras.get(`${domain}/${type}/${protocol}`)!;
  if (mine.rcvtimeo !== base.rcvtimeo) extras.rcvtimeo = mine.rcvtimeo;
  if (mine.sndtimeo !== base.sndtimeo) extras.sndtimeo = mine.sndtimeo;
  if (mine.txtime!.clock !== base.txtime!.clock || mine.txtime!.flags !== base.txtime!.flags) extras.txtime = mine.txtime;
  if (mine.congestion !== base.congestion) extras.congestion = mine.congestion;
  return { opts, ...extras, ...(linger.readInt32LE(0) ? { linger: linger.readInt32LE(4) } : {}), ...(dev ? { device: dev } : {}) };
}

/**
 * Datagrams queued again at restart keep their bytes and sender, not what
 * the program may ask of their arrival: the time (SO_TIMESTAMP and its
 * kind), or on a socket bound to the wildcard, the address they were sent
 * to (IP_PKTINFO and its kind: they are sent again to the sender's own
 * address).
 */
function refuseLostAncillary(opts: InetOptions, local: Endpoint, where: string, n: number): void {
  const on = (names: string[]) => names.find((k) => opts[k]);
  const stamp = on(['timestamp', 'timestampns', 'timestampNew', 'timestampnsNew', 'timestamping']);
  if (stamp) throw new UnsupportedError(`${where}: ${n} queued datagram(s) on a socket that asks for their arrival time (${stamp}), which a restart cannot give them; not supported: checkpoint once they are read`);
  const dest = local.addr === '0.0.0.0' || local.addr === '::' ? on(['pktinfo', 'recvorigdstaddr', 'recvpktinfo', 'pktinfo2292', 'recvorigdstaddr6']) : undefined;
  if (dest) throw new UnsupportedError(`${where}: ${n} queued datagram(s) on a socket bound to the wildcard that asks for their destination address (${dest}), which a restart cannot give them; not supported: checkpoint once they are read`);
}

/**
 * A classic filter's length in instructions (0: none); an eBPF filter
 * (SO_ATTACH_BPF), which has no classic program to read, is refused.
 */
function filterLength(fd: number, where: string): number {
  const len = Buffer.alloc(4);
  try {
    syscall(SOCK.getsockopt, 'getsockopt(SO_GET_FILTER)', fd, SOL_SOCKET, SO_ATTACH_FILTER, Buffer.alloc(8), len);
  } catch (e) {
    if (e instanceof SyscallError && e.code === 'EACCES') throw new UnsupportedError(`${where}: an eBPF socket filter is attached (SO_ATTACH_BPF); not supported yet`);
    throw e;
  }
  return len.readUInt32LE(0);
}

const SOF_TIMESTAMPING_OPT_ID = 1 << 7, SOF_TIMESTAMPING_BIND_PHC = 1 << 15;
const IP_OPTIONS = 4, IPV6_STICKY: ReadonlyArray<[string, number]> = [['IPV6_HOPOPTS', 54], ['IPV6_RTHDRDSTOPTS', 55], ['IPV6_RTHDR', 57], ['IPV6_DSTOPTS', 59]];
const MCAST_MSFILTER = 48;

/**
 * State of a socket that is not saved and can be seen: refused by name
 * before anything is changed. (What cannot be seen is listed in
 * docs/state.md with the reason.)
 */
function refuseUnsaved(fd: number, where: string, domain: number, proto: 'tcp' | 'udp', diag: InetDiag | null): void {
  if (filterLength(fd, where)) throw new UnsupportedError(`${where}: a BPF socket filter is attached (SO_ATTACH_FILTER); not supported yet`);
  const ts = getsockoptInt(fd, SOL_SOCKET, SO_TIMESTAMPING, 'SO_TIMESTAMPING');
  if (ts & SOF_TIMESTAMPING_OPT_ID) throw new UnsupportedError(`${where}: SO_TIMESTAMPING with SOF_TIMESTAMPING_OPT_ID numbers its packets with a counter that cannot be restored; not supported`);
  if (ts & SOF_TIMESTAMPING_BIND_PHC) throw new UnsupportedError(`${where}: SO_TIMESTAMPING bound to a PTP clock (SOF_TIMESTAMPING_BIND_PHC); not supported yet`);
  if (getsockoptBuf(fd, SOL_IP, IP_OPTIONS, 40, 'IP_OPTIONS').length) throw new UnsupportedError(`${where}: IPv4 header options set with IP_OPTIONS; not supported yet`);
  if (domain === AF_INET6) {
    for (const [name, opt] of IPV6_STICKY) {
      const v = getsockoptBufOr(fd, SOL_IPV6, opt, 64, name);
      if (v && v.length) throw new UnsupportedError(`${where}: IPv6 extension headers set with ${name}; not supported yet`);
    }
  }
  if (proto === 'tcp') {
    const ulp = getsockoptBuf(fd, SOL_TCP, TCP_ULP, 16, 'TCP_ULP').toString('latin1').replace(/\0.*$/s, '');
    if (ulp) throw new UnsupportedError(`${where}: the upper layer protocol "${ulp}" (TCP_ULP, e.g. kernel TLS) is attached; not supported`);
    if (diag?.md5Keys) throw new UnsupportedError(`${where}: ${diag.md5Keys} TCP MD5 signature key(s) (TCP_MD5SIG, RFC 2385); not supported yet`);
    if (getsockoptBufOr(fd, SOL_TCP, TCP_AO_INFO, 48, 'TCP_AO_INFO', ['ENOENT'])) throw new UnsupportedError(`${where}: TCP-AO keys (TCP_AO_ADD_KEY, RFC 5925); not supported yet`);
  } else {
    const groups = memberships(fd, domain);
    if (groups.length) throw new UnsupportedError(`${where}: member of the multicast group(s) ${groups.join(', ')} (IP_ADD_MEMBERSHIP/MCAST_JOIN_GROUP); not supported yet`);
  }
}

/** getsockopt into a buffer, null where the option (or `absent` errno) says there is none. */
function getsockoptBufOr(fd: number, level: number, opt: number, len: number, what: string, absent: string[] = []): Buffer | null {
  try {
    return getsockoptBuf(fd, level, opt, len, what);
  } catch (e) {
    if (e instanceof SyscallError && ['ENOPROTOOPT', 'EOPNOTSUPP', 'ENOTSUP', ...absent].includes(e.code)) return null;
    throw e;
  }
}

/**
 * The multicast groups a UDP socket joined, as "239.1.2.3 on eth0". No call
 * lists a socket's memberships, but the kernel lists each interface's
 * groups (/proc/net/igmp, /proc/net/igmp6), and MCAST_MSFILTER asked for one
 * group on one interface answers EADDRNOTAVAIL unless this socket joined it.
 */
function memberships(fd: number, domain: number): string[] {
  const out: string[] = [];
  const ask = (level: number, family: number, ifindex: number, dev: string, addr: Buffer, text: string) => {
    const gf = Buffer.alloc(272); // struct group_filter with room for one source
    gf.writeUInt32LE(ifindex, 0);
    gf.writeUInt16LE(family, 8);
    addr.copy(gf, family === AF_INET ? 12 : 16);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(gf.length);
    try {
      syscall(SOCK.getsockopt, 'getsockopt(MCAST_MSFILTER)', fd, level, MCAST_MSFILTER, gf, len);
    } catch (e) {
      if (e instanceof SyscallError && ['EADDRNOTAVAIL', 'ENODEV', 'EINVAL', 'ENOPROTOOPT'].includes(e.code)) return;
      throw e;
    }
    out.push(`${text} on ${dev}`);
  };
  for (const g of procGroups('/proc/net/igmp', 4)) ask(SOL_IP, AF_INET, g.ifindex, g.dev, g.addr, [...g.addr].join('.'));
  if (domain === AF_INET6) {
    for (const g of procGroups('/proc/net/igmp6', 6)) {
      const words: string[] = [];
      for (let i = 0; i < 16; i += 2) words.push(g.addr.readUInt16BE(i).toString(16));
      ask(SOL_IPV6, AF_INET6, g.ifindex, g.dev, g.addr, canonicalV6(words.join(':')));
    }
  }
  return out;
}

/** Each interface's multicast groups: /proc/net/igmp (a device line, then its groups) or /proc/net/igmp6. */
function procGroups(file: string, version: 4 | 6): Array<{ ifindex: number; dev: string; addr: Buffer }> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: Array<{ ifindex: number; dev: string; addr: Buffer }> = [];
  if (version === 6) {
    for (const m of text.matchAll(/^\s*(\d+)\s+(\S+)\s+([0-9a-f]{32})\s/gm)) out.push({ ifindex: Number(m[1]), dev: m[2], addr: Buffer.from(m[3], 'hex') });
    return out;
  }
  let cur: { ifindex: number; dev: string } | undefined;
  for (const line of text.split('\n').slice(1)) {
    const d = /^(\d+)\s+(\S+)\s*:/.exec(line);
    if (d) { cur = { ifindex: Number(d[1]), dev: d[2] }; continue; }
    const g = /^\s+([0-9A-F]{8})\s/.exec(line);
    if (g && cur) {
      const addr = Buffer.alloc(4);
      addr.writeUInt32LE(parseInt(g[1], 16)); // the kernel prints the network-order word as a host number
      out.push({ ...cur, addr });
    }
  }
  return out;
}

/** A classic BPF program of one instruction, "ret 0": every incoming packet dropped. */
const DROP_ALL = Buffer.from([0x06, 0, 0, 0, 0, 0, 0, 0]);
function attachDropFilter(fd: number): void {
  const prog = Buffer.alloc(16); // struct sock_fprog
  prog.writeUInt16LE(1, 0);
  prog.writeBigUInt64LE(BigInt(addressOf(DROP_ALL)), 8);
  setsockoptBuf(fd, SOL_SOCKET, SO_ATTACH_FILTER, prog, 'SO_ATTACH_FILTER');
}

/**
 * An established connection in repair mode: what the kernel needs to make
 * it again. The socket is left in repair mode with incoming segments
 * dropped (the peer retransmits them to the restored socket).
 */
function dumpRepair(fd: number, where: string): TcpRepair {
  attachDropFilter(fd);
  try {
    setsockoptInt(fd, SOL_TCP, TCP_REPAIR, 1, 'TCP_REPAIR');
  } catch (e) {
    setsockoptBuf(fd, SOL_SOCKET, SO_DETACH_FILTER, Buffer.alloc(4), 'SO_DETACH_FILTER');
    if (e instanceof SyscallError && e.code === 'EPERM') throw new UnsupportedError(`${where}: TCP repair mode needs CAP_NET_ADMIN (EPERM): checkpoint established connections as root`);
    throw e;
  }
  const info = getsockoptBuf(fd, SOL_TCP, TCP_INFO, 8, 'TCP_INFO');
  const options = info.readUInt8(5), scales = info.readUInt8(6);
  const mss = getsockoptInt(fd, SOL_TCP, TCP_MAXSEG, 'TCP_MAXSEG');
  const timestamps = (options & TCPI_OPT_TIMESTAMPS) !== 0;
  const queue = (q: number, what: string) => {
    setsockoptInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, q, `TCP_REPAIR_QUEUE ${what}`);
    return getsockoptInt(fd, SOL_TCP, TCP_QUEUE_SEQ, `TCP_QUEUE_SEQ ${what}`) >>> 0;
  };
  const rcvSeq = queue(TCP_RECV_QUEUE, 'receive');
  const inq = ioctlInt(fd, SIOCINQ, 'SIOCINQ');
  const recvQueue = inq ? peek(fd, inq, 'the receive queue') : Buffer.alloc(0);
  const sndSeq = queue(TCP_SEND_QUEUE, 'send');
  const outq = ioctlInt(fd, SIOCOUTQ, 'SIOCOUTQ');
  const unsent = ioctlInt(fd, SIOCOUTQNSD, 'SIOCOUTQNSD');
  const sendQueue = outq ? peek(fd, outq, 'the send queue') : Buffer.alloc(0);
  setsockoptInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, 'TCP_REPAIR_QUEUE none');
  if (recvQueue.length !== inq || sendQueue.length !== outq) {
    throw new StasisError(`${where}: read ${recvQueue.length} of ${inq} received and ${sendQueue.length} of ${outq} unacknowledged bytes`);
  }
  const w = getsockoptBuf(fd, SOL_TCP, TCP_REPAIR_WINDOW, 20, 'TCP_REPAIR_WINDOW');
  return {
    sndSeq, rcvSeq, sendQueue: sendQueue.toString('base64'), unsent, recvQueue: recvQueue.toString('base64'), mss,
    ...(options & TCPI_OPT_WSCALE ? { sndWscale: scales & 0xf, rcvWscale: scales >> 4 } : {}),
    sack: (options & TCPI_OPT_SACK) !== 0,
    ...(timestamps ? { timestamp: getsockoptInt(fd, SOL_TCP, TCP_TIMESTAMP, 'TCP_TIMESTAMP') >>> 0 } : {}),
    window: [0, 4, 8, 12, 16].map((o) => w.readUInt32LE(o)),
  };
}

/**
 * The datagrams waiting on a UDP socket, oldest first, nothing consumed:
 * peeked one after the other with a peek offset (SO_PEEK_OFF steps over
 * whole datagrams), which is put back as it was. Also how a restart
 * checks that the queue holds what it re-sent.
 */
export function peekDatagrams(fd: number, where: string): Array<{ data: Buffer; from: Endpoint }> {
  const saved = getsockoptInt(fd, SOL_SOCKET, SO_PEEK_OFF, 'SO_PEEK_OFF');
  setsockoptInt(fd, SOL_SOCKET, SO_PEEK_OFF, 0, 'SO_PEEK_OFF');
  const out: Array<{ data: Buffer; from: Endpoint }> = [];
  try {
    const buf = Buffer.alloc(DATAGRAM_MAX + 1), from = Buffer.alloc(28), fromLen = Buffer.alloc(4);
    for (;;) {
      fromLen.writeUInt32LE(28);
      let n: number;
      try {
        n = syscall(SOCK.recvfrom, `recvfrom(MSG_PEEK) (${where})`, fd, buf, buf.length, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC, from, fromLen);
      } catch (e) {
        if (e instanceof SyscallError && e.code === 'EAGAIN') break;
        throw e;
      }
      // A peek marks a zero-length datagram peeked, and peeks step over
      // marked ones for good: one peeked before is not seen, and one seen
      // here could not be read back by verify or a later checkpoint.
      if (n === 0) throw new UnsupportedError(`${where}: a zero-length datagram is queued for the program to read; not supported yet: checkpoint once the program has read it`);
      if (n > DATAGRAM_MAX) throw new StasisError(`${where}: a queued datagram of ${n} bytes, more than ${DATAGRAM_MAX}`);
      if (out.length >= DATAGRAMS_MAX) throw new UnsupportedError(`${where}: more than ${DATAGRAMS_MAX} datagrams queued for the program to read; not supported`);
      out.push({ data: Buffer.from(buf.subarray(0, n)), from: sockaddrText(from) });
    }
  } finally {
    setsockoptInt(fd, SOL_SOCKET, SO_PEEK_OFF, saved, 'SO_PEEK_OFF');
  }
  return out;
}

/** Whether a datagram from `from` can be sent again by the socket bound to `local` (the wildcard sends from any local address). */
function sendsFrom(local: Endpoint, from: Endpoint): boolean {
  return local.port === from.port && (local.addr === from.addr || local.addr === '::' || local.addr === '0.0.0.0');
}

/** The first socket of `sockets` that can send again a datagram of `family` from `from`. */
export function udpSenderOf<T extends Pick<InetState, 'family' | 'proto' | 'state' | 'local'>>(sockets: T[], family: string, from: Endpoint): T | undefined {
  return sockets.find((o) => o.proto === 'udp' && o.state !== 'unbound' && o.family === family && sendsFrom(o.local, from));
}

function dumpInet(f: FoundFd, ctx: { table<T extends ObjectTable>(c: new () => T): T; tcpEstablished?: boolean }): InetState {
  const t = taken.get(f);
  if (!t) throw new StasisError(`${f.where}: socket not claimed before its dump`);
  taken.delete(f);
  const { fd, domain } = t;
  let keep = false;
  try {
    const type = getsockoptInt(fd, SOL_SOCKET, SO_TYPE, 'SO_TYPE');
    const protocol = getsockoptInt(fd, SOL_SOCKET, SO_PROTOCOL, 'SO_PROTOCOL');
    const family = domain === AF_INET ? 'inet' : 'inet6';
    const typeName = type === SOCK_STREAM ? 'stream' : type === SOCK_DGRAM ? 'datagram' : type === 3 ? 'raw' : `type ${type}`;
    if (!((type === SOCK_STREAM && protocol === IPPROTO_TCP) || (type === SOCK_DGRAM && protocol === IPPROTO_UDP))) {
      throw new UnsupportedError(`${f.where}: ${family} ${typeName} socket of protocol ${protocol} is not supported yet (TCP and UDP are)`);
    }
    const proto = protocol === IPPROTO_TCP ? 'tcp' : 'udp';
    const local = sockname(fd, SOCK.getsockname, 'getsockname')!;
    const remote = sockname(fd, SOCK.getpeername, 'getpeername');
    const ino = Number(/\d+/.exec(f.target)![0]);
    const diag: InetDiag | null = inetDiag(domain, protocol, ino);
    const tcpState = proto === 'tcp' ? getsockoptBuf(fd, SOL_TCP, TCP_INFO, 1, 'TCP_INFO').readUInt8(0) : 0;
    refuseUnsaved(fd, `${f.where}: ${endpointText(proto, local)}`, domain, proto, diag);
    const base = { family, proto, local, ...dumpOptions(fd, domain, type, protocol, tcpState === TCP_ESTABLISHED) } as const;
    if (proto === 'udp') {
      const where = `${f.where}: ${endpointText(proto, local)}`;
      const queued = !diag || diag.rqueue > 0 ? peekDatagrams(fd, where) : [];
      if (queued.length) refuseLostAncillary(base.opts, local, where, queued.length);
      const q = queued.length ? { queued: queued.map((d) => ({ data: d.data.toString('base64'), from: d.from })) } : {};
      if (queued.length) ctx.table(InetTable).noteUdp(f.where, base.family, local, queued.map((d) => d.from));
      else if (local.port) ctx.table(InetTable).noteUdp(f.where, base.family, local, []);
      return remote ? { ...base, state: 'connected', remote, ...q } : { ...base, state: local.port ? 'bound' : 'unbound', ...q };
    }
    if (tcpState === TCP_LISTEN) {
      if (!diag) throw new StasisError(`${f.where}: listening ${endpointText(proto, local)} not found by sock_diag`);
      if (diag.rqueue > 0) {
        throw new UnsupportedError(`${f.where}: listening ${endpointText(proto, local)} has ${diag.rqueue} connection(s) waiting in its accept queue; not supported yet: checkpoint once the program has accepted them`);
      }
      return { ...base, state: 'listen', backlog: diag.wqueue };
    }
    if (tcpState === TCP_CLOSE) return { ...base, state: local.port ? 'bound' : 'unbound' };
    const conn = `${endpointText(proto, local)} -> ${remote ? endpointText(proto, remote).slice(4) : '?'}`;
    if (tcpState !== TCP_ESTABLISHED) {
      throw new UnsupportedError(`${f.where}: ${conn} is in state ${TCP_STATES[tcpState] ?? tcpState}; only listening and established TCP sockets are supported yet`);
    }
    if (diag?.shutdown) throw new UnsupportedError(`${f.where}: ${conn} is half-closed (shutdown ${diag.shutdown === 1 ? 'of reading' : diag.shutdown === 2 ? 'of writing' : 'both ways'}); not supported yet`);
    if (!ctx.tcpEstablished) throw new UnsupportedError(`${f.where}: established connection ${conn}: pass --tcp-established to checkpoint it with TCP repair mode`);
    const table = ctx.table(InetTable);
    table.guards.guard(fd, (base.opts.reuseaddr ?? 0) !== 0);
    const tcp = dumpRepair(fd, f.where);
    table.hold(fd, f.where, base.opts.reuseaddr ?? 0);
    // Test hook (inet.test): stasis dies with the connection in repair mode.
    if (process.env.STASIS_TEST_DIE_IN_REPAIR) process.kill(process.pid, 'SIGKILL');
    keep = true;
    return { ...base, state: 'established', remote: remote!, tcp };
  } finally {
    if (!keep) closeFd(fd);
  }
}

// ---- restart -------------------------------------------------------------------

function sockaddr(family: 'inet' | 'inet6', e: Endpoint): Buffer {
  if (family === 'inet') {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(e.port, 2);
    e.addr.split('.').forEach((x, i) => b.writeUInt8(Number(x), 4 + i));
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(e.port, 2);
  v6Bytes(e.addr).copy(b, 8);
  return b;
}

function v6Bytes(addr: string): Buffer {
  const out = Buffer.alloc(16);
  let text = addr;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const p = v4[1].split('.').map(Number);
    text = text.slice(0, -v4[1].length) + `${((p[0] << 8) | p[1]).toString(16)}:${((p[2] << 8) | p[3]).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail ? tail.split(':') : [];
  const words = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t];
  words.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), i * 2));
  return out;
}

/** Connections rebuilt in repair mode, let out of it once the whole tree is rebuilt. */
export class InetKeeper {
  private readonly pending: Array<{ remote: Remote; fd: number; unsent: Buffer; nonblock: boolean; reuse: number; bufLock?: number; where: string }> = [];

  /** `bufLock`: SO_BUF_LOCK to set once the queues are written (buffer sizes were set) */
  note(remote: Remote, fd: number, unsent: Buffer, nonblock: boolean, reuse: number, where: string, bufLock?: number): void {
    this.pending.push({ remote, fd, unsent, nonblock, reuse, where, bufLock });
  }

  private readonly udp: Array<{ pid: number; fd: number; s: InetState; where: string }> = [];

  /** A bound UDP socket restored as fd `fd` of `pid` (a host pid): a sender, or a receiver with datagrams queued. */
  noteUdp(pid: number, fd: number, s: InetState, where: string): void {
    this.udp.push({ pid, fd, s, where });
  }

  /**
   * Every connection out of repair mode; the bytes that were not sent yet
   * are sent now. Then each queued datagram is sent again, in order, by its
   * sender (a copy of that socket of the tree: the same source address, so
   * a connected receiver takes it), and each receive queue is read back.
   */
  finish(): void {
    this.finishTcp();
    for (const u of this.udp) {
      if (!u.s.queued) continue;
      const dests: Array<{ data: Buffer; from: Endpoint }> = [];
      for (const d of u.s.queued) {
        const sender = udpSenderOf(this.udp.map((o) => ({ ...o.s, o })), u.s.family, d.from);
        if (!sender) throw new StasisError(`${u.where}: no UDP socket of the tree sends from ${endpointText('udp', d.from).slice(4)}`);
        const data = Buffer.from(d.data, 'base64');
        const wild = u.s.local.addr === '::' || u.s.local.addr === '0.0.0.0';
        const to = sockaddr(u.s.family, { addr: wild ? d.from.addr : u.s.local.addr, port: u.s.local.port });
        const fd = takeFd(sender.o.pid, sender.o.fd, sender.o.where);
        try {
          // A corked sender would hold the datagram back: uncorked for the send.
          if (sender.opts.udpCork) setsockoptInt(fd, SOL_UDP, UDP_CORK, 0, 'UDP_CORK');
          const n = syscall(SOCK.sendto, `sendto (${u.where}: a queued datagram from ${endpointText('udp', d.from).slice(4)})`, fd, data, data.length, MSG_DONTWAIT, to, to.length);
          if (n !== data.length) throw new StasisError(`${u.where}: sent ${n} of a queued datagram's ${data.length} bytes`);
          if (sender.opts.udpCork) setsockoptInt(fd, SOL_UDP, UDP_CORK, sender.opts.udpCork, 'UDP_CORK');
        } finally {
          closeFd(fd);
        }
        dests.push({ data, from: d.from });
      }
      // Loopback delivers in sendto; a full receive buffer drops silently: read back.
      const fd = takeFd(u.pid, u.fd, u.where);
      let got: Array<{ data: Buffer; from: Endpoint }>;
      try {
        got = peekDatagrams(fd, u.where);
      } finally {
        closeFd(fd);
      }
      const missing = dests.findIndex((d, i) => !got[i] || !got[i].data.equals(d.data) || got[i].from.port !== d.from.port || got[i].from.addr !== d.from.addr);
      if (missing >= 0) throw new StasisError(`${u.where}: ${endpointText('udp', u.s.local)}: queued datagram ${missing} of ${dests.length} did not arrive as saved (${got.length} in its receive queue): the receive buffer may be too small or a firewall in the way`);
    }
  }

  private finishTcp(): void {
    for (const p of this.pending.splice(0)) {
      const { remote, fd, where } = p;
      remote.reset();
      setInt(remote, fd, SOL_TCP, TCP_REPAIR, 0, where, 'TCP_REPAIR off');
      // Leaving repair mode clears SO_REUSEADDR.
      if (p.reuse) setInt(remote, fd, SOL_SOCKET, SO_REUSEADDR, p.reuse, where, 'SO_REUSEADDR');
      writeAll(remote, fd, p.unsent, `${where}: unsent bytes`);
      // Buffer sizes set with SO_*BUFFORCE are locked: autotuned ones are let go again.
      if (p.bufLock !== undefined) setInt(remote, fd, SOL_SOCKET, SO_BUF_LOCK, p.bufLock, where, 'SO_BUF_LOCK');
      if (!p.nonblock) remote.call('fcntl', SYS.fcntl, [fd, F_SETFL, 0], `${where}: blocking again`);
    }
  }
}

function setInt(remote: Remote, fd: number, level: number, opt: number, val: number, where: string, what: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(val);
  remote.call('setsockopt', SOCK.setsockopt, [fd, level, opt, remote.putBytes(b), 4], `${where}: ${what}`);
}

function writeAll(remote: Remote, fd: number, data: Buffer, where: string): void {
  const chunk = Math.max(4096, remote.scratchSize - 4096);
  for (let off = 0; off < data.length;) {
    remote.reset();
    const part = data.subarray(off, off + chunk);
    const n = remote.call('sendto', SOCK.sendto, [fd, remote.putBytes(part), part.length, 0, 0, 0], where);
    if (n <= 0) throw new StasisError(`${where}: the socket took no bytes`);
    off += n;
  }
}

function setOptions(remote: Remote, fd: number, s: InetState, where: string): void {
  const type = s.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM;
  const domain = s.family === 'inet' ? AF_INET : AF_INET6;
  for (const o of OPTIONS) {
    const v = s.opts[o.name];
    if (v === undefined || !applies(o, domain, type)) continue;
    remote.reset();
    if (o.level === SOL_SOCKET && (o.opt === SO_RCVBUF || o.opt === SO_SNDBUF)) {
      // The kernel doubles what it is given: half of what it reported.
      const force = o.opt === SO_RCVBUF ? SO_RCVBUFFORCE : SO_SNDBUFFORCE;
      try {
        setInt(remote, fd, SOL_SOCKET, force, Math.floor(v / 2), where, `${o.name} ${v}`);
      } catch {
        setInt(remote, fd, SOL_SOCKET, o.opt, Math.floor(v / 2), where, `${o.name} ${v}`);
      }
      continue;
    }
    setInt(remote, fd, o.level, o.opt, v, where, `${o.name} ${v}`);
  }
  if (s.linger !== undefined) {
    remote.reset();
    const b = Buffer.alloc(8);
    b.writeInt32LE(1, 0);
    b.writeInt32LE(s.linger, 4);
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_SOCKET, SO_LINGER, remote.putBytes(b), 8], `${where}: SO_LINGER`);
  }
  if (s.device !== undefined) {
    remote.reset();
    const b = Buffer.from(s.device + '\0', 'latin1');
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_SOCKET, SO_BINDTODEVICE, remote.putBytes(b), b.length], `${where}: SO_BINDTODEVICE ${s.device}`);
  }
  for (const [opt, us, what] of [[SO_RCVTIMEO, s.rcvtimeo, 'SO_RCVTIMEO'], [SO_SNDTIMEO, s.sndtimeo, 'SO_SNDTIMEO']] as const) {
    if (us === undefined) continue;
    remote.reset();
    const tv = Buffer.alloc(16);
    tv.writeBigInt64LE(BigInt(Math.floor(us / 1e6)), 0);
    tv.writeBigInt64LE(BigInt(us % 1e6), 8);
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_SOCKET, opt, remote.putBytes(tv), 16], `${where}: ${what} ${us} us`);
  }
  if (s.txtime !== undefined) {
    remote.reset();
    const b = Buffer.alloc(8);
    b.writeInt32LE(s.txtime.clock, 0);
    b.writeUInt32LE(s.txtime.flags, 4);
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_SOCKET, SO_TXTIME, remote.putBytes(b), 8], `${where}: SO_TXTIME`);
  }
  if (s.congestion !== undefined) {
    remote.reset();
    const b = Buffer.from(s.congestion, 'latin1');
    try {
      remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_TCP, TCP_CONGESTION, remote.putBytes(b), b.length], `${where}: TCP_CONGESTION ${s.congestion}`);
    } catch (e) {
      if (e instanceof SyscallError && e.code === 'ENOENT') throw new StasisError(`${where}: the congestion control algorithm "${s.congestion}" (TCP_CONGESTION) is not available on this machine (ENOENT): load its module (tcp_${s.congestion}) and restart again`);
      throw e;
    }
  }
}

function bindTo(remote: Remote, fd: number, s: InetState, where: string): void {
  remote.reset();
  const a = sockaddr(s.family, s.local);
  try {
    remote.call('bind', SOCK.bind, [fd, remote.putBytes(a), a.length], where);
  } catch (e) {
    if (e instanceof SyscallError) throw new StasisError(`${where}: cannot bind ${endpointText(s.proto, s.local)} (${e.code}): ${e.code === 'EADDRINUSE' ? 'another socket holds it; free it and restart again' : 'the address must exist on this machine'}`);
    throw e;
  }
}

function openInet(remote: Remote, r: InetFd & CommonFd, ctx: RestoreContext, where: string): number {
  const s = r.inet;
  const domain = s.family === 'inet' ? AF_INET : AF_INET6;
  const type = s.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM;
  const fd = remote.call('socket', SOCK.socket, [domain, type | SOCK_NONBLOCK, s.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP], where);
  const nonblock = (r.flags & O_NONBLOCK) !== 0;
  if (s.state === 'established') {
    const tcp = s.tcp!;
    // Options first: SO_REUSEADDR would undo the forced reuse repair mode
    // gives its bind (the listener holds the same port).
    setOptions(remote, fd, s, where);
    setInt(remote, fd, SOL_TCP, TCP_REPAIR, 1, where, 'TCP_REPAIR');
    // A bind to one IPv6 address sets IPV6_V6ONLY for good; a socket that
    // got its address from connect() has it clear: bound to the wildcard
    // then, and connect() picks the same source address again.
    const byConnect = s.family === 'inet6' && !s.opts.v6only && !s.local.addr.startsWith('::ffff:');
    bindTo(remote, fd, byConnect ? { ...s, local: { addr: '::', port: s.local.port } } : s, where);
    const send = Buffer.from(tcp.sendQueue, 'base64'), recv = Buffer.from(tcp.recvQueue, 'base64');
    if (tcp.unsent > send.length) throw new StasisError(`${where}: more unsent bytes (${tcp.unsent}) than queued (${send.length})`);
    remote.reset();
    setInt(remote, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, where, 'TCP_REPAIR_QUEUE receive');
    setInt(remote, fd, SOL_TCP, TCP_QUEUE_SEQ, (tcp.rcvSeq - recv.length) | 0, where, 'TCP_QUEUE_SEQ receive');
    setInt(remote, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, where, 'TCP_REPAIR_QUEUE send');
    setInt(remote, fd, SOL_TCP, TCP_QUEUE_SEQ, (tcp.sndSeq - send.length) | 0, where, 'TCP_QUEUE_SEQ send');
    remote.reset();
    const peer = sockaddr(s.family, s.remote!);
    try {
      remote.call('connect', SOCK.connect, [fd, remote.putBytes(peer), peer.length], where);
    } catch (e) {
      if (e instanceof SyscallError) throw new StasisError(`${where}: cannot restore ${endpointText('tcp', s.local)} -> ${endpointText('tcp', s.remote!).slice(4)} (${e.code}): ${e.code === 'EADDRNOTAVAIL' || e.code === 'EADDRINUSE' ? 'that connection still exists here; checkpoint with --kill before restarting it' : 'repair-mode connect failed'}`);
      throw e;
    }
    remote.reset();
    const opts: Array<[number, number]> = [[TCPOPT_MSS, tcp.mss]];
    if (tcp.sndWscale !== undefined) opts.push([TCPOPT_WINDOW, tcp.sndWscale | (tcp.rcvWscale! << 16)]);
    if (tcp.sack) opts.push([TCPOPT_SACK_PERM, 0]);
    if (tcp.timestamp !== undefined) opts.push([TCPOPT_TIMESTAMP, 0]);
    const ob = Buffer.alloc(opts.length * 8);
    opts.forEach(([c, v], i) => { ob.writeUInt32LE(c, i * 8); ob.writeUInt32LE(v >>> 0, i * 8 + 4); });
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_TCP, TCP_REPAIR_OPTIONS, remote.putBytes(ob), ob.length], `${where}: TCP_REPAIR_OPTIONS`);
    if (tcp.timestamp !== undefined) setInt(remote, fd, SOL_TCP, TCP_TIMESTAMP, tcp.timestamp | 0, where, 'TCP_TIMESTAMP');
    remote.reset();
    setInt(remote, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, where, 'TCP_REPAIR_QUEUE receive');
    writeAll(remote, fd, recv, `${where}: received bytes`);
    remote.reset();
    setInt(remote, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, where, 'TCP_REPAIR_QUEUE send');
    writeAll(remote, fd, send.subarray(0, send.length - tcp.unsent), `${where}: sent bytes`);
    remote.reset();
    setInt(remote, fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, where, 'TCP_REPAIR_QUEUE none');
    const w = Buffer.alloc(20);
    tcp.window.forEach((v, i) => w.writeUInt32LE(v, i * 4));
    remote.call('setsockopt', SOCK.setsockopt, [fd, SOL_TCP, TCP_REPAIR_WINDOW, remote.putBytes(w), 20], `${where}: TCP_REPAIR_WINDOW`);
    if (!ctx.inet) throw new StasisError(`${where}: no keeper for TCP connections in this restart`);
    const sized = s.opts.sndbuf !== undefined || s.opts.rcvbuf !== undefined;
    ctx.inet.note(remote, r.fd, send.subarray(send.length - tcp.unsent), nonblock, s.opts.reuseaddr ?? 0, where, sized ? s.opts.bufLock ?? 0 : undefined);
    return fd;
  }
  setOptions(remote, fd, s, where);
  if (s.state !== 'unbound') bindTo(remote, fd, s, where);
  if (s.state === 'listen') remote.call('listen', SOCK.listen, [fd, s.backlog!], `${where}: listen`);
  if (s.state === 'connected') {
    remote.reset();
    const peer = sockaddr(s.family, s.remote!);
    remote.call('connect', SOCK.connect, [fd, remote.putBytes(peer), peer.length], `${where}: connect to ${endpointText(s.proto, s.remote!)}`);
  }
  if (!nonblock) remote.call('fcntl', SYS.fcntl, [fd, F_SETFL, 0], `${where}: blocking`);
  if (s.queued && !ctx.inet) throw new StasisError(`${where}: no keeper for queued datagrams in this restart`);
  if (s.proto === 'udp' && s.state !== 'unbound') ctx.inet?.noteUdp(remote.pid, r.fd, s, where);
  return fd;
}

const CAP_NET_BIND_SERVICE = 10n, CAP_NET_ADMIN = 12n;

/**
 * Before any process exists: the address can be bound here (a test bind
 * with the socket's own reuse options), and the saved process could have
 * bound it or used repair mode.
 */
function checkInet(r: InetFd & CommonFd, creds: ImageCreds, where: string): void {
  const s = r.inet;
  const caps = BigInt(creds.capEff);
  if (s.congestion !== undefined) {
    let avail = '';
    try { avail = fs.readFileSync('/proc/sys/net/ipv4/tcp_available_congestion_control', 'utf8'); } catch { /* no such file: setsockopt will say */ }
    if (avail && !avail.trim().split(/\s+/).includes(s.congestion)) throw new StasisError(`${where}: the congestion control algorithm "${s.congestion}" (TCP_CONGESTION) is not available on this machine (${avail.trim()}): load its module (tcp_${s.congestion}) and restart again`);
  }
  if (s.state === 'established') {
    if (!(caps & (1n << CAP_NET_ADMIN))) throw new StasisError(`${where}: a TCP connection restored in repair mode needs CAP_NET_ADMIN, which the saved process did not have`);
    return;
  }
  if (s.state === 'unbound' || s.local.port === 0) return;
  if (s.local.port < 1024 && !(caps & (1n << CAP_NET_BIND_SERVICE))) throw new StasisError(`${where}: ${endpointText(s.proto, s.local)} is a privileged port the saved process could not bind`);
  const domain = s.family === 'inet' ? AF_INET : AF_INET6;
  const fd = syscall(SOCK.socket, 'socket', domain, (s.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM) | 0o2000000, 0);
  try {
    for (const o of OPTIONS) {
      if (!['reuseaddr', 'reuseport', 'v6only', 'freebind', 'freebind6', 'transparent', 'transparent6'].includes(o.name)) continue;
      const v = s.opts[o.name];
      if (v !== undefined && applies(o, domain, s.proto === 'tcp' ? SOCK_STREAM : SOCK_DGRAM)) setsockoptInt(fd, o.level, o.opt, v, o.name);
    }
    const a = sockaddr(s.family, s.local);
    try {
      syscall(SOCK.bind, 'bind', fd, a, a.length);
    } catch (e) {
      if (e instanceof SyscallError) throw new StasisError(`${where}: cannot bind ${endpointText(s.proto, s.local)} (${e.code}): ${e.code === 'EADDRINUSE' ? 'another socket holds it; free it and restart again' : 'the address must exist on this machine'}`);
      throw e;
    }
  } finally {
    closeFd(fd);
  }
}

export const inetKind: FdKind<InetFd> = {
  kinds: ['inet'],
  claims: claimInet,
  dump: (f, ctx) => ({ kind: 'inet', pos: 0, inet: dumpInet(f, ctx) }),
  open: openInet,
  check: (r, creds, where) => checkInet(r, creds, where),
};

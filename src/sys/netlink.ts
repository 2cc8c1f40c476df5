// The kernel's sock_diag interface (NETLINK_SOCK_DIAG): one request, every
// answer message's payload back. Family-specific requests and answers
// (unix_diag, inet_diag) are built and parsed by the kind modules; this is
// only the transport. It reads sockets without touching them.
import fs from 'node:fs';
import { syscall } from './libc';
import { StasisError } from './errno';

const SYS_SOCKET = 41, SYS_SENDTO = 44, SYS_RECVFROM = 45;
const AF_NETLINK = 16, SOCK_RAW = 3, SOCK_CLOEXEC = 0o2000000, NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1, NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2, NLMSG_DONE = 3;
const HDR = 16;

/**
 * Send one sock_diag request (the family's request struct, without the
 * netlink header) and collect the payloads of the answers. `dump` asks for
 * every matching socket; without it the request names one socket.
 */
export function sockDiag(request: Buffer, dump = true): Buffer[] {
  const sock = syscall(SYS_SOCKET, 'socket(AF_NETLINK, NETLINK_SOCK_DIAG)', AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  try {
    const msg = Buffer.alloc(HDR + request.length);
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
    msg.writeUInt16LE(NLM_F_REQUEST | (dump ? NLM_F_DUMP : 0), 6);
    msg.writeUInt32LE(1, 8); // sequence number
    request.copy(msg, HDR);
    syscall(SYS_SENDTO, 'sendto(sock_diag)', sock, msg, msg.length, 0, 0, 0);
    const out: Buffer[] = [];
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const n = syscall(SYS_RECVFROM, 'recvfrom(sock_diag)', sock, buf, buf.length, 0, 0, 0);
      if (n === 0) return out;
      for (let at = 0; at + HDR <= n;) {
        const len = buf.readUInt32LE(at), type = buf.readUInt16LE(at + 4);
        if (len < HDR || at + len > n) throw new StasisError(`sock_diag: a malformed answer (message of ${len} bytes)`);
        if (type === NLMSG_DONE) return out;
        if (type === NLMSG_ERROR) {
          const err = -buf.readInt32LE(at + HDR);
          if (err === 0) return out;
          const e = new StasisError(`sock_diag request failed: errno ${err}`) as StasisError & { errno: number };
          e.errno = err;
          throw e;
        }
        out.push(Buffer.from(buf.subarray(at + HDR, at + len)));
        if (!dump) return out;
        at += (len + 3) & ~3;
      }
    }
  } finally {
    fs.closeSync(sock);
  }
}

/** The rtattr attributes after a fixed-size header: type -> payload. */
export function rtAttrs(msg: Buffer, from: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let at = from; at + 4 <= msg.length;) {
    // The top bits of the type are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
    const len = msg.readUInt16LE(at), type = msg.readUInt16LE(at + 2) & 0x3fff;
    if (len < 4 || at + len > msg.length) break;
    out.set(type, msg.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

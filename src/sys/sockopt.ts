// Socket calls made by stasis on its own fds: a copy of a target's socket
// taken with pidfd_getfd is the same socket, so options read or set on it
// are the target's.
import { syscall } from './libc';
import { SyscallError } from './errno';

/** x86-64 system call numbers of the socket calls. */
export const SOCK = {
  socket: 41, connect: 42, sendto: 44, recvfrom: 45, sendmsg: 46, recvmsg: 47, shutdown: 48,
  bind: 49, listen: 50, getsockname: 51, getpeername: 52, setsockopt: 54, getsockopt: 55,
} as const;

const SYS_PIDFD_OPEN = 434, SYS_PIDFD_GETFD = 438, SYS_CLOSE = 3, SYS_IOCTL = 16;

/** A copy in this process of fd `fd` of `pid` (the same open file); close it after use. */
export function takeFd(pid: number, fd: number, where: string): number {
  const pidfd = syscall(SYS_PIDFD_OPEN, `pidfd_open (${where})`, pid, 0);
  try {
    return syscall(SYS_PIDFD_GETFD, `pidfd_getfd (${where})`, pidfd, fd, 0);
  } finally {
    syscall(SYS_CLOSE, 'close', pidfd);
  }
}

export function closeFd(fd: number): void {
  syscall(SYS_CLOSE, 'close', fd);
}

/** getsockopt into a buffer of `len` bytes; returns the bytes the kernel filled. */
export function getsockoptBuf(fd: number, level: number, opt: number, len: number, what: string): Buffer {
  const buf = Buffer.alloc(Math.max(len, 4));
  const lenBuf = Buffer.alloc(4);
  lenBuf.writeUInt32LE(len);
  syscall(SOCK.getsockopt, `getsockopt(${what})`, fd, level, opt, buf, lenBuf);
  return buf.subarray(0, lenBuf.readUInt32LE(0));
}

export function getsockoptInt(fd: number, level: number, opt: number, what: string): number {
  const b = getsockoptBuf(fd, level, opt, 4, what);
  return b.length >= 4 ? b.readInt32LE(0) : b.length ? b.readUInt8(0) : 0;
}

/** getsockopt that may be unsupported for this socket: null then. */
export function getsockoptIntOr(fd: number, level: number, opt: number, what: string): number | null {
  try {
    return getsockoptInt(fd, level, opt, what);
  } catch (e) {
    if (e instanceof SyscallError && (e.code === 'ENOPROTOOPT' || e.code === 'EOPNOTSUPP' || e.code === 'ENOTSUP')) return null;
    throw e;
  }
}

export function setsockoptBuf(fd: number, level: number, opt: number, val: Buffer, what: string): void {
  syscall(SOCK.setsockopt, `setsockopt(${what})`, fd, level, opt, val, val.length);
}

export function setsockoptInt(fd: number, level: number, opt: number, val: number, what: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(val);
  setsockoptBuf(fd, level, opt, b, what);
}

/** ioctl(fd, req, &int): SIOCINQ, SIOCOUTQ, SIOCOUTQNSD. */
export function ioctlInt(fd: number, req: number, what: string): number {
  const b = Buffer.alloc(4);
  syscall(SYS_IOCTL, `ioctl(${what})`, fd, req, b);
  return b.readInt32LE(0);
}

const MSG_PEEK = 2, MSG_DONTWAIT = 0x40, MSG_TRUNC = 0x20;

/**
 * recvfrom with MSG_PEEK: up to `len` bytes, nothing consumed; with `from`,
 * the sender's address is written there. Returns the bytes (a datagram's
 * whole length with MSG_TRUNC).
 */
export function peek(fd: number, len: number, what: string, from?: Buffer): Buffer {
  const buf = Buffer.alloc(Math.max(len, 1));
  const fromLen = Buffer.alloc(4);
  fromLen.writeUInt32LE(from?.length ?? 0);
  let n: number;
  try {
    n = from
      ? syscall(SOCK.recvfrom, `recvfrom(${what})`, fd, buf, len, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC, from, fromLen)
      : syscall(SOCK.recvfrom, `recvfrom(${what})`, fd, buf, len, MSG_PEEK | MSG_DONTWAIT, 0, 0);
  } catch (e) {
    if (e instanceof SyscallError && e.code === 'EAGAIN') return Buffer.alloc(0);
    throw e;
  }
  return buf.subarray(0, Math.min(n, len));
}

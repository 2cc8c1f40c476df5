// Terminals. A pty pair inside the tree (its master, /dev/ptmx, held by a
// process of the tree) is saved whole: the slave's termios, window size,
// packet mode, lock, exclusive mode, the session it controls and its
// foreground process group, and the bytes queued in both directions. The
// queues cannot be peeked, so they are read out while the tree is frozen
// and written back exactly at once (and at restart): see drainAndRequeue.
// A terminal whose master is outside the tree (the user's own terminal, a
// job started from a shell) is taken only with --shell-job: at restart
// its fds and the controlling terminal are the restarter's stdin terminal.
//
// At restart stasis opens a new pair (the slave most likely gets another
// number: /dev/pts/N of the image is not kept) and holds both ends while
// the tree is rebuilt: tasks take the master with pidfd_getfd (reopening
// /dev/ptmx would make a new pair) and open the slave through
// /proc/<stasis>/fd. A session leader acquires its controlling terminal
// right after setsid, before it forks the members of its session, so
// they inherit it as they did.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { syscall } from '../sys/libc';
import { SYS } from '../sys/x86';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';
import { count, int, u32, pidOrZero, base64Max } from '../image/fields';
import { outsideFdLinks, readFdinfo } from '../proc';
import { Remote, AT_FDCWD } from '../ptrace/remote';
import { FdKind, FoundFd, ObjectTable, reopenFlags } from './fdkind';

// ioctls (x86-64)
const TCGETS2 = 0x802c542a, TCSETS2 = 0x402c542b;
const TIOCGWINSZ = 0x5413, TIOCSWINSZ = 0x5414;
const TIOCPKT = 0x5420, TIOCGPKT = 0x80045438;
const TIOCSPTLCK = 0x40045431, TIOCGPTLCK = 0x80045439, TIOCGPTN = 0x80045430;
const TIOCSCTTY = 0x540e, TIOCSPGRP = 0x5410, TIOCGPGRP = 0x540f, TIOCGSID = 0x5429;
const FIONREAD = 0x541b, TIOCGETD = 0x5424, TIOCGDEV = 0x80045432;
const TIOCEXCL = 0x540c, TIOCGEXCL = 0x80045440;
const O_RDWR = 2, O_NOCTTY = 0o400, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
const F_GETFL = 3, F_SETFL = 4;
const SYS_POLL = 7, POLLIN = 1, POLLPRI = 2, POLLOUT = 4, POLLHUP = 0x10;
const SIG_BLOCK = 0, SIG_SETMASK = 2, SIGTTOU = 22;

// termios flags the requeue clears so that bytes pass the line discipline unchanged
const OPOST = 1;
const ICANON = 2, ISIG = 1, ECHO = 0o10, ECHOE = 0o20, ECHOK = 0o40, ECHONL = 0o100, IEXTEN = 0o100000, EXTPROC = 0o200000;
const ECHOCTL = 0o1000, ECHOPRT = 0o2000, ECHOKE = 0o4000;
const INLCR = 0o100, IGNCR = 0o200, ICRNL = 0o400, IUCLC = 0o1000, ISTRIP = 0o40, PARMRK = 0o10, BRKINT = 2, IGNBRK = 1;
const IXON = 0o2000, IXANY = 0o4000;
// c_cc indices
const VERASE = 2, VKILL = 3, VEOF = 4, VTIME = 5, VMIN = 6, VSTART = 8, VSTOP = 9, VEOL = 11, VREPRINT = 12, VWERASE = 14, VLNEXT = 15, VEOL2 = 16;
const NL = 0x0a;
/** n_tty's read buffer (N_TTY_BUF_SIZE); a non-canonical one keeps one byte less. */
const N_TTY_BUF = 4096, N_TTY_MAX = N_TTY_BUF - 1;

const PTS_MAJOR_FIRST = 136, PTS_MAJOR_LAST = 143, PTMX = '5:2', DEV_TTY = '5:0';

/** struct termios2, by field. */
export const Termios = lazySchema(() => z.object({
  iflag: u32, oflag: u32, cflag: u32, lflag: u32,
  line: int(0, 255),
  cc: z.array(int(0, 255)).length(19),
  ispeed: u32, ospeed: u32,
}));
export type Termios = z.infer<typeof Termios>;

/**
 * A pty of the tree, or (external) the terminal of a --shell-job. `id` is
 * its /dev/pts number at checkpoint time.
 */
export const ImageTty = lazySchema(() => z.object({
  id: count,
  /** outside the tree (--shell-job): the restarter's stdin terminal stands in; nothing else is saved */
  external: z.boolean().optional(),
  /** the session it controls (0: none) and its foreground process group (0: none) */
  session: pidOrZero,
  foreground: pidOrZero,
  termios: Termios.optional(),
  winsize: z.object({ rows: int(0, 0xffff), cols: int(0, 0xffff), xpixel: int(0, 0xffff), ypixel: int(0, 0xffff) }).optional(),
  packet: z.boolean().optional(),
  locked: z.boolean().optional(),
  /** TIOCEXCL on the slave */
  exclusive: z.boolean().optional(),
  /** the slave was opened and closed again: the master reads EOF/EIO (POLLHUP) */
  hungUp: z.boolean().optional(),
  /** typed into the terminal, not yet read on the slave side (base64); a slave in non-canonical mode */
  input: base64Max(1 << 16),
  /**
   * A slave in canonical mode: the complete lines waiting, each as read()
   * returns it (base64; one not ending in a newline was ended by VEOF, an
   * empty one is a VEOF alone), and the keys of the unfinished line.
   */
  lines: z.array(base64Max(N_TTY_BUF)).max(N_TTY_BUF).optional(),
  partial: base64Max(N_TTY_BUF).optional(),
  /** written on the slave side, not yet read from the master (base64) */
  output: base64Max(1 << 20),
}));
export type ImageTty = z.infer<typeof ImageTty>;

/** An fd on a terminal: its id in the Objects record's ttys, and which end it is. */
export const TtyFd = lazySchema(() => z.object({ kind: z.literal('tty'), tty: count, side: z.enum(['master', 'slave', 'ctty']) }));
export type TtyFd = z.infer<typeof TtyFd>;

/** A process's controlling terminal: its id in the ttys table (only for sessions led inside the tree, or a --shell-job's). */
export const Ctty = lazySchema(() => count.optional());

function devOf(rdev: bigint): { major: number; minor: number } {
  return { major: Number(rdev >> 8n) & 0xfff, minor: Number(rdev & 0xffn) | (Number(rdev >> 12n) & 0xfff00) };
}

/** /dev/pts number of a device, or null when it is not a pty slave. */
export function ptsIndex(rdev: bigint): number | null {
  const { major, minor } = devOf(rdev);
  return major >= PTS_MAJOR_FIRST && major <= PTS_MAJOR_LAST ? (major - PTS_MAJOR_FIRST) * 256 + minor : null;
}

/** A device number as in /proc/PID/stat's tty_nr: the pts index, null for none, 'other' for another terminal. */
export function cttyIndex(ttyNr: number): number | null | 'other' {
  if (!ttyNr) return null;
  const i = ptsIndex(BigInt(ttyNr));
  return i === null ? 'other' : i;
}

function isTerminalPath(p: string): boolean {
  return /^\/dev\/(tty|pts\/|ptmx|console|pts\/ptmx)/.test(p);
}

export const ttyKind: FdKind<TtyFd> = {
  kinds: ['tty'],
  claims: (f) => f.target.startsWith('/') && isTerminalPath(f.target) && f.stat().isCharacterDevice(),
  dump(f, ctx) {
    const { major, minor } = devOf(f.stat().rdev);
    const dev = `${major}:${minor}`;
    const table = ctx.table(TtyTable);
    if (dev === PTMX) {
      const idx = readFdinfo(f.pid, f.fd).raw['tty-index'];
      if (idx === undefined) throw new UnsupportedError(`${f.where}: pty master without tty-index in fdinfo; not supported on this kernel`);
      return { kind: 'tty', pos: 0, tty: table.note(Number(idx), 'master', f), side: 'master' };
    }
    const pts = ptsIndex(f.stat().rdev);
    if (pts !== null) {
      if (!f.target.startsWith('/dev/pts/')) throw new UnsupportedError(`${f.where}: pty ${f.target} of another devpts instance is not supported`);
      return { kind: 'tty', pos: 0, tty: table.note(pts, 'slave', f), side: 'slave' };
    }
    if (dev === DEV_TTY) {
      const real = withFd(f.pid, f.fd, f.where, (fd) => {
        const b = Buffer.alloc(4);
        syscall(SYS.ioctl, 'ioctl(TIOCGDEV)', fd, TIOCGDEV, b);
        return ptsIndex(BigInt(b.readUInt32LE(0)));
      });
      if (real === null) throw new UnsupportedError(`${f.where}: /dev/tty opened on a controlling terminal that is not a pty: not supported`);
      return { kind: 'tty', pos: 0, tty: table.note(real, 'ctty', f), side: 'ctty' };
    }
    throw new UnsupportedError(`${f.where}: terminal ${f.target} (${dev}) is not a pseudo-terminal: not supported`);
  },
  sharingKey: (r) => `tty:${r.tty}:${r.side}`,
  open(remote, r, ctx, where) {
    const keeper = ctx.ttys;
    if (!keeper) throw new StasisError(`${where}: a terminal without the ttys table`);
    if (r.side === 'ctty') {
      return remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString('/dev/tty'), reopenFlags(r) | O_NOCTTY, 0], `${where}: /dev/tty`);
    }
    if (r.side === 'slave') {
      return remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(keeper.slavePath(r.tty, where)), reopenFlags(r) | O_NOCTTY, 0], where);
    }
    // The master: stasis's own open file description, taken over.
    const pidfd = remote.call('pidfd_open', SYS.pidfd_open, [process.pid, 0], where);
    const fd = remote.call('pidfd_getfd', SYS.pidfd_getfd, [pidfd, keeper.masterFd(r.tty, where), 0], `${where}: pty master`);
    remote.call('close', SYS.close, [pidfd], where);
    return fd;
  },
  settle(remote, r, where) {
    if (r.side === 'master') remote.call('fcntl', SYS.fcntl, [r.fd, F_SETFL, r.flags], `${where}: flags`);
  },
};

/** Run `fn` on a copy of fd `fd` of `pid` (pidfd_getfd: the same open file description). */
function withFd<T>(pid: number, fd: number, where: string, fn: (fd: number) => T): T {
  const pidfd = syscall(SYS.pidfd_open, 'pidfd_open', pid, 0);
  let mine: number;
  try {
    mine = syscall(SYS.pidfd_getfd, `pidfd_getfd (${where})`, pidfd, fd, 0);
  } finally {
    fs.closeSync(pidfd);
  }
  try {
    return fn(mine);
  } finally {
    fs.closeSync(mine);
  }
}

function ioctlInt(fd: number, req: number, what: string): number {
  const b = Buffer.alloc(4);
  syscall(SYS.ioctl, `ioctl(${what})`, fd, req, b);
  return b.readInt32LE(0);
}

function setInt(fd: number, req: number, v: number, what: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  syscall(SYS.ioctl, `ioctl(${what})`, fd, req, b);
}

export function getTermios(fd: number): Termios {
  const b = Buffer.alloc(44);
  syscall(SYS.ioctl, 'ioctl(TCGETS2)', fd, TCGETS2, b);
  return {
    iflag: b.readUInt32LE(0), oflag: b.readUInt32LE(4), cflag: b.readUInt32LE(8), lflag: b.readUInt32LE(12),
    line: b[16], cc: [...b.subarray(17, 36)], ispeed: b.readUInt32LE(36), ospeed: b.readUInt32LE(40),
  };
}

export function setTermios(fd: number, t: Termios): void {
  const b = Buffer.alloc(44);
  b.writeUInt32LE(t.iflag, 0); b.writeUInt32LE(t.oflag, 4); b.writeUInt32LE(t.cflag, 8); b.writeUInt32LE(t.lflag, 12);
  b[16] = t.line;
  Buffer.from(t.cc).copy(b, 17);
  b.writeUInt32LE(t.ispeed, 36); b.writeUInt32LE(t.ospeed, 40);
  syscall(SYS.ioctl, 'ioctl(TCSETS2)', fd, TCSETS2, b);
}

function pollEvents(fd: number): number {
  const b = Buffer.alloc(8);
  b.writeInt32LE(fd, 0);
  b.writeInt16LE(POLLPRI | 1, 4);
  syscall(SYS_POLL, 'poll', b, 1, 0);
  return b.readInt16LE(6);
}

/** poll one fd for `events`, up to `ms` milliseconds; the events it has. */
function pollWait(fd: number, events: number, ms: number): number {
  const b = Buffer.alloc(8);
  b.writeInt32LE(fd, 0);
  b.writeInt16LE(events, 4);
  syscall(SYS_POLL, 'poll', b, 1, ms);
  return b.readInt16LE(6);
}

/** Read everything readable now (the fd is non-blocking; a read that finds nothing flushes the pending receive work first). */
function readAll(fd: number): Buffer {
  const parts: Buffer[] = [];
  const b = Buffer.alloc(65536);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, b, 0, b.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EIO') break;
      throw e;
    }
    if (n <= 0) break;
    parts.push(Buffer.from(b.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

function writeAll(fd: number, data: Buffer, what: string): void {
  for (let off = 0; off < data.length;) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      throw new StasisError(`${what}: writing ${data.length} queued bytes back: ${(e as NodeJS.ErrnoException).code}`);
    }
  }
}

/** With O_NONBLOCK set on an open file description for a while (the tree is frozen: nobody sees it). */
function nonBlocking<T>(fd: number, fn: () => T): T {
  const old = syscall(SYS.fcntl, 'fcntl(F_GETFL)', fd, F_GETFL);
  if (!(old & O_NONBLOCK)) syscall(SYS.fcntl, 'fcntl(F_SETFL)', fd, F_SETFL, old | O_NONBLOCK);
  try {
    return fn();
  } finally {
    if (!(old & O_NONBLOCK)) syscall(SYS.fcntl, 'fcntl(F_SETFL)', fd, F_SETFL, old);
  }
}

/** Until the slave holds `want` readable bytes (the line discipline takes written bytes in a kernel worker). */
function awaitQueued(slave: number, want: number, what: string): void {
  const until = Date.now() + 5000;
  for (;;) {
    const got = ioctlInt(slave, FIONREAD, 'FIONREAD');
    if (got >= want) return;
    if (Date.now() > until) throw new StasisError(`${what}: ${got} of ${want} queued bytes reached the terminal`);
    pollEvents(slave); // runs the pending receive work when nothing is readable yet
  }
}

/** Termios under which bytes written to the master are queued on the slave unchanged: raw, no echo, no signals. */
function passThrough(t: Termios): Termios {
  return {
    ...t,
    iflag: t.iflag & ~(INLCR | IGNCR | ICRNL | IUCLC | ISTRIP | PARMRK | BRKINT | IGNBRK),
    lflag: t.lflag & ~(ICANON | ISIG | ECHO | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | IEXTEN),
  };
}

/** What a pty holds queued: non-canonical input, canonical lines and the unfinished line, output. */
export interface Queued { input: Buffer; lines: Buffer[]; partial: Buffer; output: Buffer }

export const nothingQueued = (): Queued => ({ input: Buffer.alloc(0), lines: [], partial: Buffer.alloc(0), output: Buffer.alloc(0) });

/** Put queued bytes into a pty: input as if typed (unprocessed), output as if written by the slave side. */
export function requeue(master: number, slave: number, t: Termios, q: Queued, what: string): void {
  if (q.input.length) {
    setTermios(master, passThrough(t));
    try {
      writeAll(master, q.input, `${what}: input`);
      awaitQueued(slave, Math.min(q.input.length, N_TTY_MAX), `${what}: input`);
    } finally {
      setTermios(master, t);
    }
  }
  requeueLines(master, t, q.lines, q.partial, what);
  if (q.output.length) {
    setTermios(master, { ...t, oflag: t.oflag & ~OPOST });
    try {
      writeAll(slave, q.output, `${what}: output`);
    } finally {
      setTermios(master, t);
    }
  }
}

/** The bytes the lines of an image take in n_tty's buffer once queued again (a line not ending in '\n' gets VEOF's marker). */
export function queuedLineBytes(t: Pick<ImageTty, 'lines' | 'partial'>): number {
  let n = Buffer.from(t.partial ?? '', 'base64').length;
  for (const l of t.lines ?? []) {
    const b = Buffer.from(l, 'base64');
    n += b.length + (b.length && b[b.length - 1] === NL ? 0 : 1);
  }
  return n;
}

/** ICANON without EXTPROC: the slave reads whole lines (with EXTPROC n_tty queues input raw). */
export function isCanonical(t: Termios): boolean {
  return (t.lflag & ICANON) !== 0 && (t.lflag & EXTPROC) === 0;
}

/**
 * Read out the input of a canonical-mode slave (the tree is frozen): the
 * complete lines one read() each, as the program would get them (a line
 * ended by VEOF comes without it, an empty one reads 0), until none is
 * left (that read first runs the pending receive work); then, switched
 * to non-canonical (VMIN = VTIME = 0), the keys of the unfinished line,
 * which no canonical read returns. The slave is left non-canonical with an
 * empty buffer: switching ICANON back on with bytes queued would end the
 * unfinished line (n_tty_set_termios), so requeueLines puts it back first.
 */
function drainLines(m: number, s: number, t: Termios, into: Queued, who: string): void {
  nonBlocking(s, () => {
    const b = Buffer.alloc(2 * N_TTY_BUF);
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(s, b, 0, b.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw e;
      }
      into.lines.push(Buffer.from(b.subarray(0, n)));
      if (into.lines.length > N_TTY_BUF) throw new StasisError(`${who}: more lines than a terminal holds read back; is it hung up?`);
    }
    const cc = [...t.cc];
    cc[VMIN] = 0;
    cc[VTIME] = 0;
    setTermios(m, { ...t, lflag: t.lflag & ~ICANON, cc });
    into.partial = readAll(s);
  });
}

/**
 * The termios under which lines written to the master are queued exactly
 * as they were: canonical, no signals, no input mapping, VERASE, VKILL,
 * VWERASE, VEOL and VEOL2 off; VLNEXT, VEOF and VREPRINT on bytes of our
 * choosing. Every byte of a line that is special here is written after
 * VLNEXT (so a '\n', ^D... typed after ^V originally is queued as data again);
 * a line not ending in '\n' gets VEOF (it reads the same). ECHO is on with
 * OPOST off: the echo of a closing VREPRINT, which queues nothing, tells
 * when the line discipline has taken every byte (it does so in a kernel
 * worker after the write returns).
 */
function lineRebuild(t: Termios): { termios: Termios; lnext: number; eof: number; reprint: number; special: Set<number> } {
  // With IXON the flow control characters are taken first, even escaped: never pick them.
  const flow = t.iflag & IXON ? [t.cc[VSTART], t.cc[VSTOP]].filter((c) => c !== 0) : [];
  const taken = new Set([0, NL, ...flow]);
  const pick = (): number => {
    const c = [0x16, 0x04, 0x12, 0x01, 0x02, 0x05, 0x06, 0x07].find((x) => !taken.has(x))!;
    taken.add(c);
    return c;
  };
  const lnext = pick(), eof = pick(), reprint = pick();
  const cc = [...t.cc];
  for (const i of [VERASE, VKILL, VWERASE, VEOL, VEOL2]) cc[i] = 0;
  cc[VLNEXT] = lnext;
  cc[VEOF] = eof;
  cc[VREPRINT] = reprint;
  return {
    termios: {
      ...t,
      iflag: t.iflag & ~(INLCR | IGNCR | ICRNL | IUCLC | ISTRIP | PARMRK | IXANY),
      oflag: t.oflag & ~OPOST,
      lflag: (t.lflag & ~(ISIG | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | EXTPROC)) | ICANON | IEXTEN | ECHO,
      cc,
    },
    lnext, eof, reprint,
    special: new Set([NL, lnext, eof, reprint, ...flow]),
  };
}

/** Queue canonical lines and an unfinished line again on a slave whose buffer is empty; leaves termios `t`. */
function requeueLines(master: number, t: Termios, lines: Buffer[], partial: Buffer, what: string): void {
  if (!lines.length && !partial.length) {
    if (isCanonical(t)) setTermios(master, t);
    return;
  }
  const r = lineRebuild(t);
  const data: number[] = [], echo: number[] = [];
  const put = (bytes: Buffer) => {
    for (const c of bytes) {
      if (r.special.has(c)) data.push(r.lnext);
      data.push(c);
      echo.push(c);
    }
  };
  for (const line of lines) {
    const newline = line.length > 0 && line[line.length - 1] === NL;
    put(newline ? line.subarray(0, -1) : line);
    data.push(newline ? NL : r.eof);
    if (newline) echo.push(NL);
  }
  put(partial);
  data.push(r.reprint);
  echo.push(r.reprint, NL, ...partial);
  setTermios(master, r.termios);
  try {
    writeAll(master, Buffer.from(data), `${what}: input lines`);
    awaitEcho(master, Buffer.from(echo), `${what}: input lines`);
  } finally {
    setTermios(master, t);
  }
}

/** Read the master until `want` has come back (the echo of what was written, ending with the VREPRINT's). */
function awaitEcho(master: number, want: Buffer, what: string): void {
  const got = Buffer.alloc(want.length);
  let n = 0;
  nonBlocking(master, () => {
    while (n < want.length) {
      // poll blocks until the line discipline echoes (a bound, not a pace: it only runs out if the terminal is stuck)
      if (!(pollWait(master, POLLIN, 10000) & POLLIN)) break;
      try {
        n += fs.readSync(master, got, n, want.length - n, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      }
    }
  });
  if (n < want.length || !got.equals(want)) {
    throw new StasisError(`${what}: the terminal did not take the queued input back as expected (${n} of ${want.length} echoed bytes, ${got.subarray(0, n).equals(want.subarray(0, n)) ? 'then nothing' : 'differing'})`);
  }
}

interface Holder { pid: number; fd: number }

/** Checkpoint side: every terminal the tree's fds and sessions name. */
export class TtyTable implements ObjectTable {
  private readonly masters = new Map<number, Holder>();
  private readonly slaves = new Map<number, Holder[]>();
  private readonly cttys = new Map<number, number>(); // pid -> pts index
  private result?: ImageTty[];
  /** --shell-job: terminals whose master is outside the tree are taken as the job's terminal */
  shellJob = false;
  /** Reading a restored tree back: nothing outside is looked at. */
  readBack = false;

  note(index: number, side: 'master' | 'slave' | 'ctty', f: FoundFd): number {
    if (side === 'master') {
      if (!this.masters.has(index)) this.masters.set(index, { pid: f.pid, fd: f.fd });
    } else if (side === 'slave') {
      let list = this.slaves.get(index);
      if (!list) this.slaves.set(index, list = []);
      list.push({ pid: f.pid, fd: f.fd });
    } else if (!this.slaves.has(index)) {
      this.slaves.set(index, []);
    }
    return index;
  }

  /** A process's controlling terminal (from stat's tty_nr), recorded when its session is led inside the tree or it is a --shell-job's. */
  noteCtty(pid: number, ttyNr: number, session: number, tree: Set<number>): number | undefined {
    const idx = cttyIndex(ttyNr);
    if (idx === null) return undefined;
    if (!tree.has(session)) {
      // The session of the caller, led outside: its terminal is the restarter's, like the session itself.
      if (!(this.shellJob && idx !== 'other')) return undefined;
    }
    if (idx === 'other') throw new UnsupportedError(`pid ${pid}: its controlling terminal (device ${ttyNr >> 8}:${ttyNr & 0xff}) is not a pseudo-terminal: not supported`);
    this.cttys.set(pid, idx);
    if (!this.slaves.has(idx)) this.slaves.set(idx, []);
    return idx;
  }

  refuseOutsiders(tree: Set<number>): void {
    this.result = this.read(tree);
  }

  collect(): { ttys?: ImageTty[] } {
    return this.result?.length ? { ttys: this.result } : {};
  }

  /** Every terminal's state (the tree is frozen); refuses by name what cannot be taken. */
  read(tree: Set<number>): ImageTty[] {
    const ids = new Set([...this.masters.keys(), ...this.slaves.keys()]);
    if (!ids.size) return [];
    const outside = this.readBack ? [] : [...outsideFdLinks(tree)];
    const out: ImageTty[] = [];
    for (const id of [...ids].sort((a, b) => a - b)) {
      const master = this.masters.get(id);
      const slaves = this.slaves.get(id) ?? [];
      const first = slaves[0];
      const who = master ? `pty /dev/pts/${id} (master fd ${master.fd} of pid ${master.pid})` : first ? `fd ${first.fd} of pid ${first.pid}: terminal /dev/pts/${id}` : `terminal /dev/pts/${id}`;
      if (!master) {
        if (!this.shellJob) {
          throw new UnsupportedError(`${who} belongs to a terminal outside the tree (its master is not held in the tree); pass --shell-job to checkpoint a job of your terminal and restart it with --shell-job on a terminal, or start the program with its stdin, stdout and stderr away from the terminal`);
        }
        out.push({ id, external: true, session: 0, foreground: this.externalForeground(id, tree), input: '', output: '' });
        continue;
      }
      for (const o of outside) {
        if (o.link === `/dev/pts/${id}`) throw new UnsupportedError(`${who}: its slave is also open in pid ${o.pid} (fd ${o.fd}) outside the tree; not supported`);
        if (o.link === '/dev/ptmx' && readFdinfoSafe(o.pid, o.fd)?.raw['tty-index'] === String(id)) {
          throw new UnsupportedError(`${who}: its master is also open in pid ${o.pid} (fd ${o.fd}) outside the tree; not supported`);
        }
      }
      out.push(withFd(master.pid, master.fd, who, (m) => (first
        ? withFd(first.pid, first.fd, who, (s) => this.readPty(id, m, s, tree, who))
        : this.readPty(id, m, undefined, tree, who))));
    }
    return out;
  }

  /** The foreground group of an external terminal, when it is a group of the tree (else 0: left as the restarter has it). */
  private externalForeground(id: number, tree: Set<number>): number {
    for (const [pid, idx] of this.cttys) {
      if (idx !== id) continue;
      const fg = statTpgid(pid);
      if (fg > 0 && tree.has(fg)) return fg;
    }
    return 0;
  }

  private readPty(id: number, m: number, s: number | undefined, tree: Set<number>, who: string): ImageTty {
    const disc = ioctlInt(m, TIOCGETD, 'TIOCGETD');
    if (disc !== 0) throw new UnsupportedError(`${who}: line discipline ${disc} (not N_TTY) is not supported`);
    const termios = getTermios(m);
    const ws = Buffer.alloc(8);
    syscall(SYS.ioctl, 'ioctl(TIOCGWINSZ)', m, TIOCGWINSZ, ws);
    const packet = ioctlInt(m, TIOCGPKT, 'TIOCGPKT') !== 0;
    const locked = ioctlInt(m, TIOCGPTLCK, 'TIOCGPTLCK') !== 0;
    const exclusive = s !== undefined && ioctlInt(s, TIOCGEXCL, 'TIOCGEXCL') !== 0;
    let session = 0;
    try {
      session = ioctlInt(m, TIOCGSID, 'TIOCGSID');
    } catch (e) {
      if (!(e instanceof SyscallError && e.code === 'ENOTTY')) throw e;
    }
    const foreground = session ? ioctlInt(m, TIOCGPGRP, 'TIOCGPGRP') : 0;
    if (session && !tree.has(session)) throw new UnsupportedError(`${who}: it is the controlling terminal of session ${session}, led outside the tree; not supported`);
    if (foreground && !tree.has(foreground) && !this.readBack) throw new UnsupportedError(`${who}: its foreground process group ${foreground} is led outside the tree; not supported`);
    const events = pollEvents(m);
    const hungUp = !s && (events & POLLHUP) !== 0;
    if (packet && (events & POLLPRI)) throw new UnsupportedError(`${who}: a packet-mode status change (TIOCPKT) is waiting to be read from the master; not supported`);
    const q = drainAndRequeue(m, s, termios, packet, who);
    return {
      id, session, foreground, termios,
      winsize: { rows: ws.readUInt16LE(0), cols: ws.readUInt16LE(2), xpixel: ws.readUInt16LE(4), ypixel: ws.readUInt16LE(6) },
      packet, locked, exclusive, hungUp, input: q.input.toString('base64'), output: q.output.toString('base64'),
      ...(q.lines.length ? { lines: q.lines.map((l) => l.toString('base64')) } : {}),
      ...(q.partial.length ? { partial: q.partial.toString('base64') } : {}),
    };
  }
}

function readFdinfoSafe(pid: number, fd: number) {
  try {
    return readFdinfo(pid, fd);
  } catch {
    return undefined;
  }
}

function statTpgid(pid: number): number {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[5]);
}

/**
 * The bytes queued in a pty, read out and written back at once (the tree
 * is frozen; nothing can peek a terminal's queues). Output (slave to
 * master) is read from the master, whose line discipline is always raw,
 * and written back through the slave with OPOST off: the same bytes. Input
 * (master to slave) of a non-canonical slave is read from it and written
 * back through the master with the slave raw and silent (passThrough); a
 * canonical slave's lines and unfinished line are read out (drainLines)
 * and typed again so that n_tty rebuilds them (requeueLines).
 */
function drainAndRequeue(m: number, s: number | undefined, t: Termios, packet: boolean, who: string): Queued {
  const canonical = isCanonical(t);
  if (packet && (t.lflag & EXTPROC)) {
    // Changing termios would report TIOCPKT_IOCTL to the master.
    if (ioctlInt(m, FIONREAD, 'FIONREAD') > 0 || (s !== undefined && ioctlInt(s, FIONREAD, 'FIONREAD') > 0)) {
      throw new UnsupportedError(`${who}: bytes are queued in a packet-mode terminal with EXTPROC; not supported`);
    }
    return nothingQueued();
  }
  if (s === undefined) {
    // No slave to write them back through: refused before anything is read.
    if (ioctlInt(m, FIONREAD, 'FIONREAD') > 0) throw new UnsupportedError(`${who}: bytes written by a slave no process of the tree holds any more wait to be read from the master; not supported`);
    return nothingQueued();
  }
  // No room to write on the slave side: its output is stopped (^S), or 64 KiB wait in the master.
  // Then output could not be written back, nor the echo that tells the lines are back come.
  if (!(pollWait(s, POLLOUT, 0) & POLLOUT) && (canonical || ioctlInt(m, FIONREAD, 'FIONREAD') > 0)) {
    throw new UnsupportedError(`${who}: its output is stopped (^S with IXON) or full; resume it (^Q) or read the master, then checkpoint`);
  }
  const hungUp = (pollEvents(s) & POLLHUP) !== 0; // reads of a hung-up file return 0: nothing to take
  if (packet) setInt(m, TIOCPKT, 0, 'TIOCPKT'); // no status byte before each read; nothing is pending (checked)
  const q = nothingQueued();
  try {
    q.output = nonBlocking(m, () => readAll(m));
    if (!canonical) q.input = nonBlocking(s, () => readAll(s));
    else if (!hungUp) drainLines(m, s, t, q, who);
  } finally {
    // Whatever was read goes back, whatever happens next.
    try {
      requeue(m, s, t, q, who);
    } finally {
      if (packet) setInt(m, TIOCPKT, 1, 'TIOCPKT');
    }
  }
  return q;
}

// ---- restart ----------------------------------------------------------------

/** Restore side: stasis makes every pty of the image and holds both ends until the tree has them. */
export class TtyKeeper {
  private readonly held = new Map<number, { master: number; slave: number; tty: ImageTty }>();
  /** the external terminal (--shell-job): our stdin */
  private external?: number;

  /** `slaveUsed`: ids of ttys whose slave a task opens or has as controlling terminal (else it is left never opened, unless hung up) */
  constructor(ttys: ImageTty[], opts: { shellJob?: boolean; slaveUsed?: Set<number> } = {}) {
    try {
      for (const t of ttys) {
        if (t.external) {
          if (!opts.shellJob) throw new StasisError(`the image holds a job of a terminal outside its tree (/dev/pts/${t.id}): restart with --shell-job on a terminal`);
          if (this.external === undefined) {
            const st = fs.fstatSync(0);
            if (!st.isCharacterDevice() || !requireTty(0)) throw new StasisError('--shell-job: stdin is not a terminal; run the restart on the terminal the job is to use');
            this.external = 0;
          }
          continue;
        }
        this.held.set(t.id, this.make(t, !!(t.hungUp || t.input || t.lines || t.partial || t.output || opts.slaveUsed?.has(t.id))));
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private make(t: ImageTty, needSlave: boolean): { master: number; slave: number; tty: ImageTty } {
    const what = `pty /dev/pts/${t.id} of the image`;
    const master = fs.openSync('/dev/ptmx', O_RDWR | O_NOCTTY | O_CLOEXEC);
    let slave = -1;
    try {
      const n = ioctlInt(master, TIOCGPTN, 'TIOCGPTN');
      setInt(master, TIOCSPTLCK, 0, 'TIOCSPTLCK');
      if (needSlave) slave = fs.openSync(`/dev/pts/${n}`, O_RDWR | O_NOCTTY | O_CLOEXEC);
      const w = Buffer.alloc(8);
      const ws = t.winsize ?? { rows: 0, cols: 0, xpixel: 0, ypixel: 0 };
      w.writeUInt16LE(ws.rows, 0); w.writeUInt16LE(ws.cols, 2); w.writeUInt16LE(ws.xpixel, 4); w.writeUInt16LE(ws.ypixel, 6);
      syscall(SYS.ioctl, 'ioctl(TIOCSWINSZ)', master, TIOCSWINSZ, w);
      const termios = t.termios ?? getTermios(master);
      setTermios(master, termios);
      requeue(master, slave, termios, {
        input: Buffer.from(t.input, 'base64'),
        lines: (t.lines ?? []).map((l) => Buffer.from(l, 'base64')),
        partial: Buffer.from(t.partial ?? '', 'base64'),
        output: Buffer.from(t.output, 'base64'),
      }, what);
      if (t.packet) setInt(master, TIOCPKT, 1, 'TIOCPKT');
      return { master, slave, tty: t };
    } catch (e) {
      if (slave >= 0) fs.closeSync(slave);
      fs.closeSync(master);
      throw e instanceof StasisError ? e : new StasisError(`${what}: re-creating it: ${(e as Error).message}`);
    }
  }

  /** Our fd on the master of tty `id` (tasks take it with pidfd_getfd). */
  masterFd(id: number, where: string): number {
    const h = this.held.get(id);
    if (!h) throw new StasisError(`${where}: the image names pty ${id} but carries no such pty`);
    return h.master;
  }

  /** The path a task opens to get the slave of tty `id` (the restarter's terminal for an external one). */
  slavePath(id: number, where: string): string {
    const h = this.held.get(id);
    if (h && h.slave >= 0) return `/proc/${process.pid}/fd/${h.slave}`;
    if (this.external !== undefined) return `/proc/${process.pid}/fd/${this.external}`;
    throw new StasisError(`${where}: the image names terminal ${id} but carries no such terminal`);
  }

  /** Lock, exclusive mode and hang-up as saved, once every task has its fds. */
  finish(): void {
    for (const h of this.held.values()) {
      if (h.tty.exclusive && h.slave >= 0) syscall(SYS.ioctl, 'ioctl(TIOCEXCL)', h.slave, TIOCEXCL);
      if (h.tty.locked) setInt(h.master, TIOCSPTLCK, 1, 'TIOCSPTLCK');
      // Our slave was its last: closing it hangs the master up, as it was.
      if (h.tty.hungUp && h.slave >= 0) {
        fs.closeSync(h.slave);
        h.slave = -1;
      }
    }
  }

  close(): void {
    for (const h of this.held.values()) {
      if (h.slave >= 0) fs.closeSync(h.slave);
      fs.closeSync(h.master);
    }
    this.held.clear();
  }
}

function requireTty(fd: number): boolean {
  try {
    getTermios(fd);
    return true;
  } catch {
    return false;
  }
}

/**
 * Right after a session leader's setsid (before it forks the members of
 * its session): it acquires its controlling terminal.
 */
export function acquireTerminal(remote: Remote, e: { pid: number; sid: number; ctty?: number }, keeper: TtyKeeper): void {
  if (e.ctty === undefined || e.sid !== e.pid) return;
  const where = `pid ${e.pid}: controlling terminal`;
  remote.reset();
  const fd = remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(keeper.slavePath(e.ctty, where)), O_RDWR | O_NOCTTY | O_CLOEXEC, 0], where);
  remote.call('ioctl', SYS.ioctl, [fd, TIOCSCTTY, 0], where);
  remote.call('close', SYS.close, [fd], where);
}

/**
 * The foreground process group of each terminal, once every group exists:
 * set by a process of its session (the leader, or for a --shell-job the
 * root) with SIGTTOU blocked for the call, as a background group may.
 */
export function restoreForeground(ttys: ImageTty[], procs: Array<{ pid: number; sid: number; ctty?: number }>, remoteOf: (pid: number) => Remote, keeper: TtyKeeper, view: (pid: number) => number): void {
  for (const t of ttys) {
    if (!t.foreground) continue;
    const setter = t.external ? procs.find((p) => p.ctty === t.id) : procs.find((p) => p.pid === t.session);
    if (!setter) throw new StasisError(`terminal ${t.id}: no process of its session to give it its foreground group`);
    const remote = remoteOf(setter.pid);
    const where = `pid ${setter.pid}: foreground group ${t.foreground} of its terminal`;
    remote.reset();
    const mask = Buffer.alloc(8);
    mask.writeBigUInt64LE(1n << BigInt(SIGTTOU - 1));
    const set = remote.putBytes(mask), old = remote.putBytes(Buffer.alloc(8));
    remote.call('rt_sigprocmask', SYS.rt_sigprocmask, [SIG_BLOCK, set, old, 8], where);
    try {
      const fd = remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(keeper.slavePath(t.id, where)), O_RDWR | O_NOCTTY | O_CLOEXEC, 0], where);
      const pg = Buffer.alloc(4);
      pg.writeInt32LE(view(t.foreground));
      remote.call('ioctl', SYS.ioctl, [fd, TIOCSPGRP, remote.putBytes(pg)], where);
      remote.call('close', SYS.close, [fd], where);
    } finally {
      remote.call('rt_sigprocmask', SYS.rt_sigprocmask, [SIG_SETMASK, old, 0, 8], where);
    }
  }
}

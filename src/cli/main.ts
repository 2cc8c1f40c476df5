// The `stasis` command: checkpoint, restart, show, check.
import fs from 'node:fs';
import tty from 'node:tty';
import { checkpoint, DEFAULT_FREEZE_TIMEOUT_MS } from '../checkpoint';
import { restartSync, loadImage } from '../restart';
import { showImage } from './show';
import { runChecks } from './check';
import { StasisError } from '../sys/errno';
import { ptraceRequestsSoFar } from '../sys/libc';
import { constants as osConstants } from 'node:os';

const USAGE = `usage:
  stasis checkpoint PID [-o FILE] [--kill] [--external pipe:[INO]|FIFO]...
                    [--freeze-timeout SECONDS] [-v]
      save the process tree rooted at PID into an image (FILE, or stdout when
      it is not a terminal); it keeps running unless --kill is given;
      --external takes along a pipe shared with a process outside the tree
      (or a FIFO held open outside, whose bytes stay in it);
      --freeze-timeout: the longest the tree stays frozen (default 60, 0: no
      limit), then the checkpoint is abandoned and the tree resumed
  stasis restart [FILE|-] [-d|--detach] [--pidfile FILE] [--pid-ns] [--verify]
                 [--inherit-fd FD:pipe:[INO]]... [-v]
      recreate the process tree from an image (a file, or stdin with - or no
      FILE) with its original pids; waits for its root and returns its exit
      status unless --detach; --pid-ns restores inside a new pid namespace
      (for a user without CAP_CHECKPOINT_RESTORE, always, in a new user
      namespace too, mapping only their own uid and gid); --verify reads the
      tree back before it runs and fails the restart on any difference from
      the image; --inherit-fd connects an external pipe of the image to fd FD
  stasis show FILE [--json]
      describe an image (--json: all metadata, no page contents)
  stasis check
      report the kernel features stasis relies on`;

class UsageError extends Error {}

interface Parsed {
  positional: string[];
  flags: Map<string, string | true>;
  /** every value of flags that may repeat */
  lists: Map<string, string[]>;
}

/** Minimal option parser: known flags, some taking a value. */
function parse(args: string[], withValue: string[], boolean: string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  const lists = new Map<string, string[]>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '-' || !a.startsWith('-')) {
      positional.push(a);
      continue;
    }
    const [name, inline] = a.split(/=(.*)/s, 2);
    if (withValue.includes(name)) {
      const v = inline ?? args[++i];
      if (v === undefined) throw new UsageError(`${name} needs a value`);
      flags.set(name, v);
      lists.set(name, [...(lists.get(name) ?? []), v]);
    } else if (boolean.includes(name)) {
      flags.set(name, true);
    } else {
      throw new UsageError(`unknown option ${a}`);
    }
  }
  return { positional, flags, lists };
}

function logger(verbose: boolean): ((m: string) => void) | undefined {
  if (!verbose) return undefined;
  const t0 = process.hrtime.bigint();
  return (m) => {
    // Under the test hook, where each step begins in ptrace requests (test/safety-restart.test.ts aims at them).
    const n = ptraceRequestsSoFar();
    process.stderr.write(`[${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms] ${n === undefined ? '' : `[ptrace ${n}] `}${m}\n`);
  };
}

async function cmdCheckpoint(args: string[]): Promise<number> {
  const p = parse(args, ['-o', '--output', '--external', '--freeze-timeout'], ['--kill', '-v', '--verbose']);
  const timeoutArg = p.flags.get('--freeze-timeout') as string | undefined;
  const timeoutS = timeoutArg === undefined ? DEFAULT_FREEZE_TIMEOUT_MS / 1000 : Number(timeoutArg);
  if (!Number.isFinite(timeoutS) || timeoutS < 0) throw new UsageError(`--freeze-timeout takes seconds, not ${timeoutArg}`);
  if (p.positional.length !== 1) throw new UsageError('checkpoint takes one PID');
  const pid = Number(p.positional[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new UsageError(`not a pid: ${p.positional[0]}`);
  const file = (p.flags.get('-o') ?? p.flags.get('--output')) as string | undefined;
  let output: string | number;
  if (file && file !== '-') output = file;
  else {
    if (tty.isatty(1)) throw new StasisError('refusing to write an image to a terminal: give -o FILE or redirect stdout');
    output = 1;
  }
  // Dying half way would leave the tree frozen or with injected registers:
  // a terminating signal only takes effect once the tree is let go.
  let interrupted: NodeJS.Signals | undefined;
  const hold = (sig: NodeJS.Signals) => { interrupted ??= sig; };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  for (const sig of signals) process.on(sig, hold);
  try {
    const r = await checkpoint(pid, output, { kill: p.flags.has('--kill'), external: p.lists.get('--external'), freezeTimeoutMs: timeoutS * 1000, log: logger(p.flags.has('-v') || p.flags.has('--verbose')) });
    if (p.flags.has('-v') || p.flags.has('--verbose')) {
      process.stderr.write(`checkpointed pid ${r.pid}: ${r.imageBytes} bytes (${r.pageBytes} of pages), frozen ${r.frozenMs.toFixed(1)} ms\n`);
    }
  } finally {
    for (const sig of signals) process.off(sig, hold);
    if (interrupted) process.stderr.write(`stasis: ${interrupted} arrived during the checkpoint; the checkpoint finished first and let the tree go\n`);
  }
  return interrupted ? 128 + osConstants.signals[interrupted] : 0;
}

function signalName(sig: number): string {
  return Object.entries(osConstants.signals).find(([, v]) => v === sig)?.[0] ?? String(sig);
}

async function cmdRestart(args: string[]): Promise<number> {
  const p = parse(args, ['--pidfile', '--inherit-fd'], ['-d', '--detach', '-v', '--verbose', '--pid-ns', '--verify']);
  const inheritFds: Record<string, number> = {};
  for (const spec of p.lists.get('--inherit-fd') ?? []) {
    const m = /^(\d+):(pipe:\[\d+\])$/.exec(spec);
    if (!m) throw new UsageError(`--inherit-fd takes FD:pipe:[INODE], not ${spec}`);
    inheritFds[m[2]] = Number(m[1]);
  }
  if (p.positional.length > 1) throw new UsageError('restart takes at most one image');
  const src = p.positional[0] ?? '-';
  const detach = p.flags.has('-d') || p.flags.has('--detach');
  const r = restartSync(src === '-' ? 0 : src, { setsid: detach, pidNs: p.flags.has('--pid-ns'), verify: p.flags.has('--verify'), inheritFds, log: logger(p.flags.has('-v') || p.flags.has('--verbose')) });
  const pidfile = p.flags.get('--pidfile') as string | undefined;
  if (pidfile) fs.writeFileSync(pidfile, `${r.pid}\n`);
  if (detach) {
    process.stdout.write(`${r.pid}\n`);
    return 0;
  }
  // Foreground: pass our terminating signals on, then mirror its end.
  const forward = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const;
  for (const s of forward) process.on(s, () => { try { process.kill(r.pid, s); } catch { /* ended */ } });
  const end = await r.wait();
  for (const s of forward) process.removeAllListeners(s);
  if (end.signal !== null) {
    process.stderr.write(`stasis: restored process ${r.pid} was killed by ${signalName(end.signal)}\n`);
    try { process.kill(process.pid, end.signal); } catch { /* fall through */ }
    return 128 + end.signal;
  }
  return end.code ?? 1;
}

function cmdShow(args: string[]): number {
  const p = parse(args, [], ['--json']);
  if (p.positional.length !== 1) throw new UsageError('show takes one image file (or - for stdin)');
  const img = loadImage(p.positional[0] === '-' ? 0 : p.positional[0]);
  process.stdout.write(p.flags.has('--json') ? JSON.stringify(img.process, null, 2) + '\n' : showImage(img));
  return 0;
}

/** Control characters shown escaped, so a refusal stays one line. */
function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

export async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  // For tests and the bench: how much memory the command took at its peak.
  if (process.env.STASIS_REPORT_RSS) process.on('exit', () => process.stderr.write(`stasis: peak RSS ${process.resourceUsage().maxRSS} KiB\n`));
  let code: number;
  try {
    switch (cmd) {
      case 'checkpoint': case 'dump': code = await cmdCheckpoint(rest); break;
      case 'restart': case 'restore': code = await cmdRestart(rest); break;
      case 'show': code = cmdShow(rest); break;
      case 'check': code = runChecks(); break;
      case '-h': case '--help': case 'help': process.stdout.write(USAGE + '\n'); code = 0; break;
      default: throw new UsageError(cmd ? `unknown command ${cmd}` : 'no command given');
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`stasis: ${e.message}\n${USAGE}\n`);
      code = 2;
    } else if (e instanceof StasisError) {
      // One line, whatever an image put into a name or path.
      process.stderr.write(`stasis: ${oneLine(e.message)}\n`);
      code = 1;
    } else {
      process.stderr.write(`stasis: internal error: ${(e as Error).stack ?? e}\n`);
      code = 1;
    }
  }
  process.exitCode = code;
  // A checkpoint is over: an image write still blocked on a stalled reader
  // (on a worker thread) must not keep the command alive.
  if (cmd === 'checkpoint' || cmd === 'dump') process.exit(code);
}


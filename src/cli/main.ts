// The `stasis` command: checkpoint, restart, show, check.
//
// Start-up is part of every command's time, so this file loads nothing but
// node:util's parseArgs and node:fs (both in Node's own start-up snapshot):
// each command requires the modules it uses when it runs (inside the bundle,
// each module still runs on first require), and --help and --version run
// no stasis module at all.
import { parseArgs } from 'node:util';
import { writeSync } from 'node:fs';
import type { CheckpointResult } from '../checkpoint';



/**
 * A line (or a few) to stdout or stderr, written at once: making Node's
 * process.stdout or process.stderr stream costs ~4 ms of a command that
 * prints one line. Waits out EAGAIN on a descriptor left non-blocking;
 * a closed one (EPIPE, EBADF) loses the text, as Node's streams would.
 */
function say(fd: 1 | 2, text: string): void {
  const b = Buffer.from(text, 'utf8');
  for (let off = 0; off < b.length;) {
    try {
      off += writeSync(fd, b, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return; // closed (EPIPE, EBADF): nobody to tell
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

interface Command {
  /** the first line of its usage, after "stasis " */
  synopsis: string;
  /** one line for the list of commands */
  summary: string;
  /** what it does, wrapped at 78 columns */
  about: string;
  options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean; help: string }>;
  /** positional arguments: at least, at most */
  positionals: [number, number];
  run(p: Parsed): Promise<number> | number;
}

interface Parsed {
  positionals: string[];
  values: Record<string, string | boolean | string[] | undefined>;
}

const verbose = { type: 'boolean', short: 'v', help: 'say each step on stderr, with times' } as const;

const COMMANDS: Record<string, Command> = {
  checkpoint: {
    synopsis: 'checkpoint PID [-o FILE] [--kill] [--external pipe:[INO]|unix:[INO]|FIFO]... [--tcp-established] [--shell-job] [--ghost-limit SIZE] [--freeze-timeout SECONDS] [-v]',
    summary: 'save the process tree rooted at PID into an image',
    about: `Save the process tree rooted at PID into an image: FILE, or stdout when it
is not a terminal. The tree keeps running unless --kill is given. Anything
stasis cannot restore is refused by name before a byte is written, and the
tree is left running as it was.`,
    options: {
      output: { type: 'string', short: 'o', help: 'write the image to FILE (- for stdout)' },
      kill: { type: 'boolean', help: 'end the tree once the image is written and flushed' },
      external: { type: 'string', multiple: true, help: 'take along a pipe shared with a process outside the tree (pipe:[INO]), a FIFO held open outside (its bytes stay in it), or a unix socket (unix:[INO], its own inode) connected to one outside; at restart, connect it with --inherit-fd' },
      'tcp-established': { type: 'boolean', help: 'take established TCP connections along (TCP repair mode; with --kill they close without a FIN or RST to the peer); needs CAP_NET_ADMIN' },
      'shell-job': { type: 'boolean', help: 'take a job started from a terminal outside the tree (restart it with --shell-job on a terminal)' },
      'ghost-limit': { type: 'string', help: 'the most data one deleted file held open or mapped may carry into the image (default 64M; K, M, G suffixes; at most 512M)' },
      'freeze-timeout': { type: 'string', help: 'the longest the tree stays frozen, in seconds (default 60, 0: no limit); past it the checkpoint is abandoned, the tree resumed, exit status 1' },
      verbose,
    },
    positionals: [1, 1],
    run: cmdCheckpoint,
  },
  restart: {
    synopsis: 'restart [FILE|-] [-d] [--pidfile FILE] [--pid-ns] [--verify] [--inherit-fd FD:pipe:[INO]|FD:unix:[INO]]... [--shell-job] [-v]',
    summary: 'recreate the process tree of an image, with its pids',
    about: `Recreate the process tree of an image (FILE, or stdin with - or no FILE)
with its original pids. The whole image is verified before any process
exists. In the foreground, stasis waits for the tree's root and ends with
its exit status (or its fatal signal); with -d it prints the root's pid.`,
    options: {
      detach: { type: 'boolean', short: 'd', help: 'start the tree in a new session, print its pid and return' },
      pidfile: { type: 'string', help: 'write the root\'s pid to FILE' },
      'pid-ns': { type: 'boolean', help: 'restore inside a new pid namespace, where the saved pids are free (always, in a new user namespace too, for a user without CAP_CHECKPOINT_RESTORE)' },
      verify: { type: 'boolean', help: 'read the tree back before it runs and fail the restart on any difference from the image' },
      'inherit-fd': { type: 'string', multiple: true, help: 'connect the external pipe pipe:[INO] of the image to fd FD of stasis, or put socket FD in the place of the external unix socket unix:[INO]' },
      'shell-job': { type: 'boolean', help: 'give a job\'s terminal fds the terminal on stdin (an image checkpointed with --shell-job)' },
      verbose,
    },
    positionals: [0, 1],
    run: cmdRestart,
  },
  show: {
    synopsis: 'show FILE [--json]',
    summary: 'describe an image',
    about: 'Describe an image (FILE, or - for stdin): every process, thread, mapping and fd.',
    options: {
      json: { type: 'boolean', help: 'print all metadata of the whole tree as JSON (no page contents)' },
    },
    positionals: [1, 1],
    run: cmdShow,
  },
  check: {
    synopsis: 'check [--kinds]',
    summary: 'try the kernel features stasis relies on',
    about: 'Try, on this machine, each kernel feature stasis relies on; with --kinds, list every fd and mapping kind, supported or refused.',
    options: {
      kinds: { type: 'boolean', help: 'list every fd and mapping kind with supported or refused' },
    },
    positionals: [0, 0],
    run: (p) => {
      const check = require('./check') as typeof import('./check');
      return flag(p, 'kinds') ? check.runKindList() : check.runChecks();
    },
  },
};

const ALIASES: Record<string, string> = { dump: 'checkpoint', restore: 'restart' };

const EXIT_CODES = `exit status:
  0        done (restart -d: the tree is running)
  1        refused or failed: the message on stderr says what, where and what to do
  2        the command line is wrong (usage)
  70       internal error: a bug in stasis, please report it
  128+N    checkpoint: signal N arrived meanwhile (the checkpoint finished first)
  restart in the foreground ends as the restored root ended: its exit
  status, or 128+N when signal N killed it`;

function commandHelp(name: string): string {
  const c = COMMANDS[name];
  const lines = [`usage: ${synopsis(name)}`, '', c.about, ''];
  const entries = Object.entries({ ...c.options, help: { type: 'boolean', short: 'h', help: 'show this help' } } as Command['options']);
  if (entries.length) lines.push('options:');
  for (const [long, o] of entries) {
    const arg = o.type === 'string' ? ` ${long === 'inherit-fd' ? 'FD:pipe:[INO]|FD:unix:[INO]' : long === 'external' ? 'pipe:[INO]|unix:[INO]|FIFO' : long === 'freeze-timeout' ? 'SECONDS' : long === 'ghost-limit' ? 'SIZE' : 'FILE'}` : '';
    lines.push(`  ${o.short ? `-${o.short}, ` : '    '}--${long}${arg}${o.multiple ? ' (repeatable)' : ''}`);
    lines.push(...wrap(o.help, 78 - 8).map((l) => `        ${l}`));
  }
  lines.push('', EXIT_CODES);
  return lines.join('\n') + '\n';
}

function usage(): string {
  const lines = ['usage: stasis COMMAND [OPTION]... [ARG]...', '', 'commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) {
    lines.push(`  ${synopsis(name, '  ')}`);
    lines.push(`      ${c.summary}`);
  }
  lines.push('', "'stasis COMMAND --help' describes each command's options; 'stasis --version' prints the version.", '', EXIT_CODES);
  return lines.join('\n') + '\n';
}

/** `stasis SYNOPSIS`, wrapped at 78 columns, continued lines indented. */
function synopsis(name: string, indent = ''): string {
  return wrap(`stasis ${COMMANDS[name].synopsis}`, 78 - indent.length).join(`\n${indent}        `);
}

function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) out.push(line);
  return out;
}

/** A wrong command line: exit status 2, the command's usage on stderr. */
class UsageError extends Error {
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

/**
 * Options through node's util.parseArgs (loose mode, then checked here, so
 * every complaint is one short line that names the command and the option).
 */
function parse(name: string, args: string[]): Parsed {
  const c = COMMANDS[name];
  const options: Command['options'] = { ...c.options, help: { type: 'boolean', short: 'h', help: '' } };
  const { values, positionals, tokens } = parseArgs({ args, options, allowPositionals: true, strict: false, tokens: true });
  const known = (raw: string) => Object.entries(options).some(([long, o]) => raw === `--${long}` || (o.short && raw === `-${o.short}`));
  for (const t of tokens) {
    if (t.kind !== 'option') continue;
    const o = options[t.name];
    if (!o) throw new UsageError(`unknown option ${t.rawName}`, name);
    if (o.type === 'boolean' && t.value !== undefined) throw new UsageError(`${t.rawName} takes no value`, name);
    if (o.type === 'string' && (t.value === undefined || (!t.inlineValue && t.value.startsWith('-') && known(t.value)))) {
      throw new UsageError(`${t.rawName} needs a value`, name);
    }
  }
  return { positionals, values: values as Parsed['values'] };
}

const str = (p: Parsed, k: string) => p.values[k] as string | undefined;
const list = (p: Parsed, k: string) => (p.values[k] as string[] | undefined) ?? [];
const flag = (p: Parsed, k: string) => p.values[k] === true;

function logger(on: boolean): ((m: string) => void) | undefined {
  if (!on) return undefined;
  const t0 = process.hrtime.bigint();
  const { ptraceRequestsSoFar } = require('../sys/libc') as typeof import('../sys/libc');
  return (m) => {
    // Under the test hook, where each step begins in ptrace requests (test/safety-restart.test.ts aims at them).
    const n = ptraceRequestsSoFar();
    say(2, `[${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms] ${n === undefined ? '' : `[ptrace ${n}] `}${m}\n`);
  };
}

async function cmdCheckpoint(p: Parsed): Promise<number> {
  const timeoutArg = str(p, 'freeze-timeout');
  const timeoutS = timeoutArg === undefined ? undefined : Number(timeoutArg);
  if (timeoutS !== undefined && (!Number.isFinite(timeoutS) || timeoutS < 0)) throw new UsageError(`--freeze-timeout takes seconds, not ${timeoutArg}`, 'checkpoint');
  const pid = Number(p.positionals[0]);
  if (!/^\d+$/.test(p.positionals[0]) || !Number.isSafeInteger(pid) || pid <= 0) throw new UsageError(`not a pid: ${p.positionals[0]}`, 'checkpoint');
  const file = str(p, 'output');
  const ghostLimit = parseSize(str(p, 'ghost-limit'), '--ghost-limit', 512 << 20); // GHOST_LIMIT_MAX, without loading kinds/ghost
  const { checkpoint, DEFAULT_FREEZE_TIMEOUT_MS } = require('../checkpoint') as typeof import('../checkpoint');
  let output: string | number;
  if (file && file !== '-') output = file;
  else {
    if ((require('node:tty') as typeof import('node:tty')).isatty(1)) {
      const { StasisError } = require('../sys/errno') as typeof import('../sys/errno');
      throw new StasisError('refusing to write an image to a terminal: give -o FILE or redirect stdout');
    }
    output = 1;
  }
  // Dying half way would leave the tree frozen or with injected registers:
  // a terminating signal only takes effect once the tree is let go.
  let interrupted: NodeJS.Signals | undefined;
  const hold = (sig: NodeJS.Signals) => { interrupted ??= sig; };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  for (const sig of signals) process.on(sig, hold);
  let r: CheckpointResult;
  try {
    r = await checkpoint(pid, output, { kill: flag(p, 'kill'), external: list(p, 'external'), shellJob: flag(p, 'shell-job'), tcpEstablished: flag(p, 'tcp-established'), ghostLimit, freezeTimeoutMs: (timeoutS ?? DEFAULT_FREEZE_TIMEOUT_MS / 1000) * 1000, log: logger(flag(p, 'verbose')) });
  } finally {
    for (const sig of signals) process.off(sig, hold);
    if (interrupted) say(2, `stasis: ${interrupted} arrived during the checkpoint; the checkpoint finished first and let the tree go\n`);
  }
  if (flag(p, 'verbose')) {
    say(2, `checkpointed pid ${r.pid}: ${r.processes} process(es), ${r.threads} thread(s), ${r.imageBytes} bytes (${r.pageBytes} of pages), frozen ${r.frozenMs.toFixed(1)} ms\n`);
  }
  return interrupted ? 128 + (require('node:os') as typeof import('node:os')).constants.signals[interrupted] : 0;
}

/** A size in bytes with an optional K, M or G suffix, at most `max`. */
function parseSize(v: string | undefined, option: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([kKmMgG]?)$/.exec(v);
  const n = m ? Number(m[1]) * ({ '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 } as Record<string, number>)[m[2].toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n) || n > max) throw new UsageError(`${option} takes a size in bytes (K, M, G suffixes) up to ${max}, not ${v}`, 'checkpoint');
  return n;
}

function signalName(sig: number): string {
  const { constants } = require('node:os') as typeof import('node:os');
  return Object.entries(constants.signals).find(([, v]) => v === sig)?.[0] ?? String(sig);
}

async function cmdRestart(p: Parsed): Promise<number> {
  const inheritFds: Record<string, number> = {};
  for (const spec of list(p, 'inherit-fd')) {
    const m = /^(\d+):((?:pipe|unix):\[\d+\])$/.exec(spec);
    if (!m) throw new UsageError(`--inherit-fd takes FD:pipe:[INODE] or FD:unix:[INODE], not ${spec}`, 'restart');
    inheritFds[m[2]] = Number(m[1]);
  }
  const src = p.positionals[0] ?? '-';
  const detach = flag(p, 'detach');
  const { restartSync } = require('../restart') as typeof import('../restart');
  const r = restartSync(src === '-' ? 0 : src, { setsid: detach, pidNs: flag(p, 'pid-ns'), verify: flag(p, 'verify'), shellJob: flag(p, 'shell-job'), inheritFds, log: logger(flag(p, 'verbose')) });
  // Not in silence: the program sees another pid than the one it had.
  if (r.movedFrom !== undefined) say(2, `stasis: pid ${r.movedFrom} is in use: restored as pid ${r.pid}\n`);
  const pidfile = str(p, 'pidfile');
  if (pidfile) (require('node:fs') as typeof import('node:fs')).writeFileSync(pidfile, `${r.pid}\n`);
  if (detach) {
    say(1, `${r.pid}\n`);
    return 0;
  }
  // Foreground: pass our terminating signals on, then mirror its end.
  const forward = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const;
  for (const s of forward) process.on(s, () => { try { process.kill(r.pid, s); } catch { /* ended */ } });
  const end = await r.wait();
  for (const s of forward) process.removeAllListeners(s);
  if (end.signal !== null) {
    say(2, `stasis: restored process ${r.pid} was killed by ${signalName(end.signal)}\n`);
    try { process.kill(process.pid, end.signal); } catch { /* fall through */ }
    return 128 + end.signal;
  }
  return end.code ?? 1;
}

function cmdShow(p: Parsed): number {
  const { loadImage } = require('../image/load') as typeof import('../image/load');
  const img = loadImage(p.positionals[0] === '-' ? 0 : p.positionals[0]);
  if (flag(p, 'json')) {
    const { imageJson } = require('./show') as typeof import('./show');
    process.stdout.write(JSON.stringify(imageJson(img), null, 2) + '\n');
  } else {
    const { showImage } = require('./show') as typeof import('./show');
    process.stdout.write(showImage(img));
  }
  return 0;
}

/** Control characters shown escaped, so a refusal stays one line. */
function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** STASIS_REPORT_RSS=1: the command's peak resident memory on stderr at exit (for the benchmark). */
function reportRss(): void {
  if (!process.env.STASIS_REPORT_RSS) return;
  process.on('exit', () => say(2, `stasis: peak RSS ${process.resourceUsage().maxRSS} KiB\n`));
}

/** What the launcher (bin/stasis) knows: the package's version, its code cache. */
export interface Launcher {
  version?(): string;
  /** the code cache learns from the first successful run of each command (compile-cache.ts) */
  learnFrom?(command: string): void;
}

async function run(argv: string[], launcher: Launcher): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('no command given');
  if (first === '--version' || first === '-V' || first === 'version') {
    say(1, `stasis ${launcher.version?.() ?? 'unknown version'}\n`);
    return 0;
  }
  if (first === '-h' || first === '--help' || first === 'help') {
    const about = rest[0] && (ALIASES[rest[0]] ?? rest[0]);
    if (about && !COMMANDS[about]) throw new UsageError(`unknown command ${rest[0]}`);
    process.stdout.write(about ? commandHelp(about) : usage());
    return 0;
  }
  const name = ALIASES[first] ?? first;
  const c = COMMANDS[name];
  if (!c) throw new UsageError(first.startsWith('-') ? `unknown option ${first} (options follow the command)` : `unknown command ${first}`);
  const p = parse(name, rest);
  if (flag(p, 'help')) {
    process.stdout.write(commandHelp(name));
    return 0;
  }
  const [min, max] = c.positionals;
  const n = p.positionals.length;
  if (n < min || n > max) {
    const what = name === 'checkpoint' ? 'one PID' : name === 'show' ? 'one image file (or - for stdin)' : name === 'restart' ? 'at most one image' : 'no arguments';
    throw new UsageError(`takes ${what}${n > max ? `; extra: ${p.positionals.slice(max).join(' ')}` : ''}`, name);
  }
  reportRss();
  launcher.learnFrom?.(`${name}${flag(p, 'verify') ? ' --verify' : ''}`);
  return c.run(p);
}

export async function main(argv: string[], launcher: Launcher = {}): Promise<void> {
  let code: number;
  try {
    code = await run(argv, launcher);
  } catch (e) {
    if (e instanceof UsageError) {
      const c = e.command;
      say(2, `stasis${c ? ` ${c}` : ''}: ${e.message}\n`);
      say(2, c ? `usage: ${synopsis(c)}\n'stasis ${c} --help' says more.\n` : usage());
      code = 2;
    } else if ((e as Error)?.name && isStasisError(e)) {
      // One line, whatever an image put into a name or path.
      say(2, `stasis: ${oneLine((e as Error).message)}\n`);
      code = 1;
    } else {
      say(2, `stasis: internal error (a bug in stasis; please report it with this message): ${(e as Error)?.stack ?? e}\n`);
      code = 70;
    }
  }
  process.exitCode = code;
  // A checkpoint is over: an image write still blocked on a stalled reader
  // (on a worker thread) must not keep the command alive.
  if (argv[0] === 'checkpoint' || argv[0] === 'dump') process.exit(code);
}

/** Without loading the error module for a usage error (any command that failed past parsing has it loaded). */
function isStasisError(e: unknown): boolean {
  const { StasisError } = require('../sys/errno') as typeof import('../sys/errno');
  return e instanceof StasisError;
}

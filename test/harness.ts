// Shared helpers of the end-to-end tests: build the C targets, start them in
// a fresh session without libuv, wait for what they print, and end exactly
// the processes a test started, by pid.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { posixSpawn, waitpidSync, WNOHANG, __WALL, syscall } from '../src/sys/libc';
import { SYS } from '../src/sys/x86';
import { scanTree } from '../src/ptrace/freeze';
import { readStat, readStatus } from '../src/proc';
import { waitpidAsync } from '../src/sys/libc';
import { checkpointSync, restartSync } from '../src';
import type { Restarted, RestartOptions } from '../src';
import { ImageWriter, RecordType, readImageBuffer } from '../src/image/stream';

export const ROOT = path.resolve(__dirname, '..', '..');
export const PROGRAMS = path.join(ROOT, 'test', 'programs');
const BUILD = path.join(ROOT, 'test', '.build');
export const CLI = path.join(ROOT, 'bin', 'stasis');

/** Compile test/programs/NAME.c once per content, its own headers' included (flags from a `// build:` line). */
export function build(name: string): string {
  const src = path.join(PROGRAMS, `${name}.c`);
  const own = fs.readFileSync(src, 'utf8');
  const headers = [...own.matchAll(/^#include "([\w.-]+)"$/gm)].map((m) => fs.readFileSync(path.join(PROGRAMS, m[1]), 'utf8'));
  const text = [own, ...headers].join('\n');
  const extra = /\/\/ build: (.*)/.exec(text)?.[1].trim().split(/\s+/) ?? [];
  fs.mkdirSync(BUILD, { recursive: true });
  const out = path.join(BUILD, name);
  const stamp = `${out}.src`;
  if (!fs.existsSync(out) || !fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== text) {
    execFileSync('gcc', ['-O1', '-g', '-Wall', '-Wextra', ...extra, '-o', out, src], { stdio: 'inherit' });
    fs.writeFileSync(stamp, text);
  }
  return out;
}

const made: string[] = [];
process.on('exit', () => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh directory, removed when the test process ends. */
export function tmpdir(tag: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `stasis-${tag}-`));
  made.push(d);
  return d;
}

/** Every pid a test started; `cleanup` kills and reaps exactly these. */
export class Procs {
  private readonly pids = new Set<number>();

  /**
   * Start a target in a new session with stdout/stderr to `out` and no
   * other fds; it is our child but not libuv's, so we reap it ourselves.
   */
  start(file: string, args: string[], out: string, opts: { cwd?: string; stdout?: number } = {}): number {
    const fd = opts.stdout ?? fs.openSync(out, 'a');
    const nul = fs.openSync('/dev/null', 'r');
    try {
      const argv = [file, ...args];
      const real = opts.cwd ? '/bin/sh' : file;
      const realArgv = opts.cwd ? ['sh', '-c', `cd "$0" && exec "$@"`, opts.cwd, ...argv] : argv;
      const pid = posixSpawn(real, realArgv, { fds: { 0: nul, 1: fd, 2: fd }, setsid: true, closeFrom: 3 });
      this.pids.add(pid);
      return pid;
    } finally {
      if (opts.stdout === undefined) fs.closeSync(fd);
      fs.closeSync(nul);
    }
  }

  add(pid: number): number {
    this.pids.add(pid);
    return pid;
  }

  /** A restored tree: its root and every descendant it has now. */
  addTree(root: number): number {
    for (const p of scanTree(root)) this.pids.add(p.pid);
    return root;
  }

  /** Reap a child of ours that ended (or note that it is still running). */
  reap(pid: number): boolean {
    try {
      return waitpidSync(pid, WNOHANG | __WALL).pid === pid;
    } catch {
      return true; // not our child, or already reaped
    }
  }

  /**
   * End one process a test started, with its descendants, now: a target
   * that spins, left running until the file ends, slows every later test
   * (safety.test's self-checking targets keep two CPUs busy each).
   */
  end(pid: number): void {
    this.kill(this.treeOf([pid]));
  }

  cleanup(): void {
    this.kill(this.treeOf([...this.pids]));
  }

  /** The given pids and their descendants (started by them, hence by the test). */
  private treeOf(roots: number[]): Set<number> {
    const all = new Set(roots);
    for (const pid of roots) {
      try {
        for (const p of scanTree(pid)) all.add(p.pid);
      } catch { /* gone */ }
    }
    return all;
  }

  /** SIGKILL each; a child of ours not dead yet stays listed for cleanup to reap. */
  private kill(pids: Set<number>): void {
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* ended */ }
      if (this.reap(pid)) this.pids.delete(pid);
      else this.pids.add(pid);
    }
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return !/\) Z /.test(stat);
}

/** Wait (polling its output file) until `file` matches `want`; fail after `ms`. */
export async function waitFor(file: string, want: RegExp | ((text: string) => boolean), ms = 20000): Promise<string> {
  const until = Date.now() + ms;
  const re = typeof want === 'function' ? { test: want } : want;
  for (;;) {
    let text = '';
    try { text = fs.readFileSync(file, 'utf8'); } catch { /* not there yet */ }
    if (re.test(text)) return text;
    if (Date.now() > until) throw new Error(`timed out waiting for ${re} in ${file}; it holds:\n${text.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Poll `check` (a readiness condition, not a timing assertion) until it holds; `check` says why not yet. */
export async function until(what: string, check: () => string | null, ms = 10000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const why = check();
    if (why === null) return;
    if (Date.now() > deadline) throw new Error(`${what}: ${why}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Wait until `cond` holds (at most `ms`): `until` for a plain yes or no. */
export function untilTrue(what: string, cond: () => boolean, ms = 10000): Promise<void> {
  return until(what, () => (cond() ? null : 'timed out'), ms);
}

/** Wait until a pid no longer exists at all (killed and reaped, by us if it is ours). */
export async function waitGone(pid: number, procs: Procs, ms = 10000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    procs.reap(pid);
    if (!fs.existsSync(`/proc/${pid}`)) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`pid ${pid} did not end`);
}

export interface CliResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Run the stasis command line as a child process (libuv's, which is fine: it is not traced). */
export function cli(args: string[], opts: { input?: Buffer; stdoutFile?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const outFd = opts.stdoutFile ? fs.openSync(opts.stdoutFile, 'w') : undefined;
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', outFd ?? 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let stdout = '', stderr = '';
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (outFd !== undefined) fs.closeSync(outFd);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin!.end(opts.input);
  });
}

/**
 * Checkpoint the tree rooted at `pid` with --kill, wait until its root is
 * gone, restart it (verified against the image unless `verify: false`);
 * every restored process is remembered for cleanup.
 */
export async function checkpointKillRestart(procs: Procs, pid: number, dir: string, opts: RestartOptions = {}): Promise<Restarted> {
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const r = restartVerified(img, opts);
  procs.addTree(r.pid);
  return r;
}

/**
 * Every restart in the tests is read back and compared with its image
 * (restart --verify) unless a test says `verify: false`.
 */
export function restartVerified(input: Parameters<typeof restartSync>[0], opts: RestartOptions = {}): Restarted {
  return restartSync(input, { verify: true, ...opts });
}

/** Run a program to its end without interruption; resolves with its output. */
export async function referenceRun(procs: Procs, file: string, args: string[], dir: string): Promise<string> {
  const out = path.join(dir, 'reference.out');
  const pid = procs.start(file, args, out, { cwd: dir });
  const { status } = await waitpidAsync(pid, 0);
  if (status !== 0) throw new Error(`reference run of ${file} failed (wait status ${status})`);
  return fs.readFileSync(out, 'utf8');
}

/** mulberry32: a small seeded generator, so a failing case can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The target of a refused or failed checkpoint: untraced, running or
 * sleeping (not stopped), and out of any stasis freezer cgroup.
 */
export function assertLeftRunning(pids: number | number[]): void {
  for (const p of typeof pids === 'number' ? [pids] : pids) {
    assert.equal(readStatus(p).tracerPid, 0, `pid ${p} untraced`);
    assert.match(readStat(p).state, /^[RS]$/, `pid ${p} running`);
    assert.doesNotMatch(fs.readFileSync(`/proc/${p}/cgroup`, 'utf8'), /freezer:\/stasis|stasis-/, `pid ${p} back in its own cgroup`);
  }
}

const PR_SET_CHILD_SUBREAPER = 36;

/**
 * Make this test process adopt the orphans of its descendants
 * (PR_SET_CHILD_SUBREAPER): what a killed stasis or a killed tree root
 * leaves comes to us, not to pid 1 (which reaps about once a second
 * here), to be found and reaped at once.
 */
export function adoptOrphans(): void {
  syscall(SYS.prctl, 'prctl', PR_SET_CHILD_SUBREAPER, 1);
}

/** Our children now. */
export function ourChildren(): number[] {
  return fs.readdirSync('/proc/self/task').flatMap((t) => {
    try {
      return fs.readFileSync(`/proc/self/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  });
}

/** Reap every child of ours that has ended (libuv waits for its own children by pid, never on those it has not reaped). */
export function reapOrphans(): void {
  for (const c of ourChildren()) {
    let stat = '';
    try { stat = fs.readFileSync(`/proc/${c}/stat`, 'utf8'); } catch { continue; }
    if (/\) Z /.test(stat)) {
      try { waitpidSync(c, WNOHANG | __WALL); } catch { /* not ours after all */ }
    }
  }
}

/** Rewrite an image with its Process records edited; checksums recomputed by the writer. */
export function editImage(from: string, to: string, edit: (p: Record<string, any>) => void): void {
  const records = readImageBuffer(fs.readFileSync(from), from);
  const fd = fs.openSync(to, 'w', 0o644);
  try {
    const w = new ImageWriter(fd);
    for (const r of records) {
      if (r.type === RecordType.Process) {
        const p = JSON.parse(r.payload.toString('utf8'));
        edit(p);
        w.json(RecordType.Process, p);
      } else {
        w.record(r.type, [r.payload]);
      }
    }
    w.end();
  } finally {
    fs.closeSync(fd);
  }
}

// At the limits stasis is sized for: a process with 1,000 threads, one with
// 60,000 VMAs, one with 50,000 fds (or as many as RLIMIT_NOFILE allows
// here), a tree of 1,000 processes. Each is checkpointed with the command
// (--kill), restarted with -d --verify, and must then pass its own checks
// again (test/programs/scale.c). Stasis's peak RSS for each command
// (STASIS_REPORT_RSS) is reported and must stay under a fixed bound: it
// may grow with what is saved, never without limit.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { build, Procs, tmpdir, waitFor, waitGone, CLI, adoptOrphans, reapOrphans } from './harness';
import { scanTree } from '../src/ptrace/freeze';
import { readLimits } from '../src/proc';

const procs = new Procs();
after(() => procs.cleanup());
// A killed tree's children come to us, to be reaped at once (their pids are restored next).
before(adoptOrphans);

/** Peak RSS allowed to one stasis command: bounded, generously. */
const RSS_LIMIT_KIB = 1024 * 1024;

interface Command { code: number | null; stdout: string; stderr: string; rssKiB: number; ms: number }

/** The stasis command with its peak RSS reported; `prefix` runs it under another command (prlimit). */
function stasis(args: string[], prefix: string[] = []): Promise<Command> {
  return new Promise((resolve, reject) => {
    const argv = [...prefix, process.execPath, CLI, ...args];
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STASIS_REPORT_RSS: '1' } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const rss = /^stasis: peak RSS (\d+) KiB$/m.exec(stderr);
      if (!rss) return reject(new Error(`stasis ${args[0]} reported no peak RSS (exit ${code}):\n${stderr}`));
      resolve({ code, stdout, stderr: stderr.replace(rss[0], '').trim(), rssKiB: Number(rss[1]), ms: performance.now() - t0 });
    });
  });
}

const passes = (file: string) => Number(fs.readFileSync(file, 'utf8').trim() || 0);

/** Wait until the program has made two more full passes of its own checks, and none failed. */
async function checksPass(progress: string, out: string, what: string): Promise<void> {
  const from = passes(progress);
  await waitFor(progress, () => passes(progress) >= from + 2, 60000);
  const text = fs.readFileSync(out, 'utf8');
  assert.doesNotMatch(text, /FAIL/, `${what}: the program's own checks failed:\n${text}`);
}

/** End a tree we started or restored and wait until every pid of it is free. */
async function endTree(pids: number[]): Promise<void> {
  for (const p of pids) {
    try { process.kill(p, 'SIGKILL'); } catch { /* ended */ }
  }
  for (const p of pids) {
    reapOrphans();
    await waitGone(p, procs, 30000);
  }
}

const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;

/**
 * Start `scale MODE N`, checkpoint it with --kill, restart it verified,
 * check it runs; report times and peak RSS of both commands.
 */
async function scaleCase(t: { diagnostic: (m: string) => void }, mode: string, n: number, check?: (img: string) => Promise<void>): Promise<void> {
  const prog = build('scale');
  const dir = tmpdir(`scale-${mode}`);
  const progress = path.join(dir, 'progress');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [mode, String(n), progress], out);
  await waitFor(out, /^ready$/m, 120000);
  await checksPass(progress, out, `${mode} ${n} before the checkpoint`);
  const pids = scanTree(pid).map((p) => p.pid);
  for (const p of pids) procs.add(p);
  const img = path.join(dir, 'image');
  // The default freeze timeout (60 s) applies: a checkpoint this size must fit in it.
  const c = await stasis(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(c.code, 0, `${mode} ${n}: checkpoint: ${c.stderr}`);
  await endTree(pids);
  await check?.(img);
  const r = await stasis(['restart', img, '-d', '--verify']);
  assert.equal(r.code, 0, `${mode} ${n}: restart: ${r.stderr}`);
  const root = Number(r.stdout.trim());
  assert.equal(root, pid, 'restored at its pid');
  const restored = scanTree(root).map((p) => p.pid);
  for (const p of restored) procs.add(p);
  assert.equal(restored.length, pids.length, 'every process restored');
  await checksPass(progress, out, `${mode} ${n} after restart`);
  await endTree(restored);
  const size = fs.statSync(img).size;
  t.diagnostic(`${mode} ${n}: image ${(size / 1048576).toFixed(1)} MiB; checkpoint ${(c.ms / 1000).toFixed(1)} s, peak RSS ${mib(c.rssKiB)}; restart --verify ${(r.ms / 1000).toFixed(1)} s, peak RSS ${mib(r.rssKiB)}`);
  assert.ok(c.rssKiB < RSS_LIMIT_KIB, `checkpoint peak RSS ${mib(c.rssKiB)} within ${mib(RSS_LIMIT_KIB)}`);
  assert.ok(r.rssKiB < RSS_LIMIT_KIB, `restart peak RSS ${mib(r.rssKiB)} within ${mib(RSS_LIMIT_KIB)}`);
}

test('a process with 1,000 threads checkpoints and restarts, memory bounded', async (t) => {
  await scaleCase(t, 'threads', 1000);
});

test('a process with 60,000 VMAs checkpoints and restarts, memory bounded', async (t) => {
  // vm.max_map_count (65530 by default) bounds how many a process may have.
  const max = Number(fs.readFileSync('/proc/sys/vm/max_map_count', 'utf8'));
  assert.ok(max >= 60100, `vm.max_map_count is ${max}`);
  await scaleCase(t, 'vmas', 60000);
});

test('a process with 50,000 fds (or as many as RLIMIT_NOFILE allows) checkpoints and restarts; a restarter with a lower limit is refused by name', async (t) => {
  // Raising the hard limit needs CAP_SYS_RESOURCE, which root here lacks: the hard limit of this test is the ceiling.
  const hard = readLimits('self').find((l) => l.resource === 7)!.hard;
  const n = Math.min(50000, Number(hard < 1000000n ? hard : 1000000n) - 16);
  if (n < 50000) t.diagnostic(`RLIMIT_NOFILE hard limit here is ${hard} (raising it needs CAP_SYS_RESOURCE): ${n} fds instead of 50,000`);
  await scaleCase(t, 'fds', n, async (img) => {
    // A restarter that may not open fds that high is refused, naming the limit, before any process exists.
    const low = await stasis(['restart', img, '-d'], ['prlimit', '--nofile=1024:1024', '--']);
    assert.equal(low.code, 1);
    assert.match(low.stderr, /^stasis: pid \d+: fd \d+ is at or above this restarter's RLIMIT_NOFILE \(1024\); raise it \(ulimit -n\) and restart again$/);
  });
});

test('a tree of 1,000 processes checkpoints and restarts, memory bounded', async (t) => {
  await scaleCase(t, 'tree', 1000);
});

// The target is never harmed: `stasis checkpoint` (the command) is killed
// with SIGKILL at random moments across the whole checkpoint of a program
// with 64 MiB of memory and five threads that checks its own memory and
// registers, sleeps in restartable calls and blocks in read(). After every
// kill the target must be running by itself: not frozen, not traced, not
// stopped, its address space as it was, every check of its own passing.
// With --kill it either survives untouched, or the image is complete and
// restarts into a program whose checks pass.
//
// Two kinds of random moments, both seeded (STASIS_SAFETY_SEED):
// - wall-clock delays after the command starts, aimed at the windows of
//   each phase measured in a calibration run (the phase a kill actually
//   landed in is read from the -v log);
// - the Nth ptrace request (STASIS_TEST_DIE_AT_PTRACE, stratified over all
//   requests of a checkpoint), which reaches the short phases (seize,
//   detach) and every boundary between two requests.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { build, Procs, tmpdir, waitFor, waitGone, alive, CLI, seededRandom, until } from './harness';
import { loadImage, restartSync } from '../src';
import { scanTree } from '../src/ptrace/freeze';
import { Remote, BatchCall } from '../src/ptrace/remote';
import type { Tracee } from '../src/ptrace/tracee';

const procs = new Procs();
after(() => procs.cleanup());

const SEED = Number(process.env.STASIS_SAFETY_SEED ?? 20261129);

const seeded = seededRandom;

const PHASES: Array<[RegExp, string]> = [
  [/\] (freezing|thawed .*)$/, 'freeze'],
  [/\] frozen; seizing/, 'seize'],
  [/\] pid \d+ was still in the code of an abandoned checkpoint/, 'seize'],
  [/\] froze \d+ processes/, 'survey'],
  [/\] injecting into/, 'injection'],
  [/\] \d+ processes, \d+ zombies/, 'metadata'],
  [/\] dumping pages/, 'page dump'],
  [/\] image written/, 'image closed'],
  [/\] (detaching|killing the tree)$/, 'detach'],
  [/\] tree (resumed|killed)$/, 'finished'],
];

/** The phase stasis was in when it died: its last -v line. */
function phaseOf(log: string): string {
  const lines = log.split('\n').filter((l) => l.startsWith('['));
  const last = lines.at(-1);
  if (!last) return 'start-up';
  return PHASES.find(([re]) => re.test(last))?.[1] ?? `after "${last}"`;
}

/** Milliseconds into the log at which each phase began. */
function phaseStarts(log: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const l of log.split('\n')) {
    const ms = /^\[([\d.]+) ms\]/.exec(l)?.[1];
    const phase = PHASES.find(([re]) => re.test(l))?.[1];
    if (ms && phase && !m.has(phase)) m.set(phase, Number(ms));
  }
  return m;
}

interface Run { log: string; phase: string; killed: boolean; wallMs: number; ptraceRequests?: number }

interface Kill {
  /** SIGKILL this long after the command starts, or after it logs that it is freezing */
  killAfterMs?: number;
  fromFreeze?: boolean;
  /** or just before its Nth ptrace request */
  dieAtPtrace?: number;
}

/** The stasis command on `pid`, SIGKILLed as `how` says. */
function checkpointCommand(pid: number, dir: string, how: Kill & { kill?: boolean }): Promise<Run> {
  const logFile = path.join(dir, 'stasis.log');
  const img = path.join(dir, 'image');
  fs.rmSync(img, { force: true });
  const fd = fs.openSync(logFile, 'w');
  const env = { ...process.env };
  if (how.dieAtPtrace !== undefined) env.STASIS_TEST_DIE_AT_PTRACE = String(how.dieAtPtrace);
  const t0 = performance.now();
  const child = spawn(process.execPath, [CLI, 'checkpoint', String(pid), '-o', img, '-v', ...(how.kill ? ['--kill'] : [])], { stdio: ['ignore', 'ignore', fd], env });
  fs.closeSync(fd);
  let timer: NodeJS.Timeout | undefined;
  let watcher: fs.FSWatcher | undefined;
  const arm = () => { timer = setTimeout(() => child.kill('SIGKILL'), how.killAfterMs); };
  if (how.killAfterMs !== undefined && !how.fromFreeze) arm();
  if (how.killAfterMs !== undefined && how.fromFreeze) {
    watcher = fs.watch(logFile, () => {
      if (timer || !fs.readFileSync(logFile, 'utf8').includes('] freezing')) return;
      arm();
      watcher!.close();
    });
  }
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      watcher?.close();
      const log = fs.readFileSync(logFile, 'utf8');
      const count = /^ptrace requests: (\d+)$/m.exec(log)?.[1];
      if (signal === null && code !== 0) reject(new Error(`stasis checkpoint failed by itself (exit ${code}):\n${log}`));
      resolve({ log, phase: phaseOf(log), killed: signal === 'SIGKILL', wallMs: performance.now() - t0, ptraceRequests: count ? Number(count) : undefined });
    });
  });
}

function counters(progress: string): number[] {
  return fs.readFileSync(progress, 'utf8').trim().split(/\s+/).map(Number);
}

interface Target { pid: number; dir: string; out: string; progress: string; /** each process's mappings at the start */ maps: Map<number, string>; freezer: string; /** its processes, the root first */ tree: number[] }

const freezerOf = (pid: number) => /^\d+:freezer:(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8'))?.[1] ?? '';

/** selfcheck, with `children` forked children checking themselves too. */
async function startTarget(prog: string, dir: string, children = 0): Promise<Target> {
  const out = path.join(dir, 'out');
  const progress = path.join(dir, 'progress');
  fs.rmSync(out, { force: true });
  const pid = procs.start(prog, children ? [progress, String(children)] : [progress], out);
  await waitFor(out, /^ready$/m);
  const tree = scanTree(pid).map((p) => p.pid);
  return { pid, dir, out, progress, maps: new Map(tree.map((p) => [p, fs.readFileSync(`/proc/${p}/maps`, 'utf8')])), freezer: freezerOf(pid), tree };
}

/**
 * Running by itself, as it was: no thread stopped or traced, back in its
 * own freezer cgroup (no stasis cgroup left), the same mappings, and each
 * of its own checks (memory, registers, sleeps) done again and passed.
 */
async function assertUnharmed(t: Target, trial: string, sameMaps = true): Promise<void> {
  await until(`${trial}: pid ${t.pid} let go`, () => {
    // Every process of the tree (a restarted one has the same pids).
    for (const pid of t.pid === t.tree[0] ? t.tree : [t.pid]) {
      if (!alive(pid)) return `pid ${pid} is dead`;
      for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
        const status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
        if (/^State:\s+[tT]/m.test(status)) return `pid ${pid} thread ${tid} is stopped`;
        if (!/^TracerPid:\s+0$/m.test(status)) return `pid ${pid} thread ${tid} is still traced`;
      }
      if (freezerOf(pid) !== t.freezer) return `pid ${pid} is in freezer cgroup ${freezerOf(pid)}`;
    }
    const left = fs.readdirSync('/sys/fs/cgroup/freezer').filter((d) => /^stasis-/.test(d));
    for (const d of left) {
      const owner = Number(d.split('-')[1]);
      if (!fs.existsSync(`/proc/${owner}`)) return `freezer cgroup ${d} of a dead stasis is left`;
    }
    return null;
  });
  const before = counters(t.progress);
  await until(`${trial}: pid ${t.pid} checks itself again`, () => {
    const now = counters(t.progress);
    return now.every((c, i) => c > before[i]) ? null : `counters ${before.join(' ')} -> ${now.join(' ')} (${whereAre(t)})`;
  });
  const out = fs.readFileSync(t.out, 'utf8');
  assert.doesNotMatch(out, /FAIL/, `${trial}: the target's own checks failed:\n${out}`);
  // No scratch area or anything else left in any process of the tree, once
  // a thread left waiting in a batch (2 s) has gone home and unmapped it.
  for (const [pid, maps] of sameMaps ? t.maps : []) {
    await until(`${trial}: the mappings of pid ${pid} are as they were`, () => {
      const now = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n');
      const was = maps.split('\n');
      const diff = [...now.filter((l) => !was.includes(l)).map((l) => `+ ${l}`), ...was.filter((l) => !now.includes(l)).map((l) => `- ${l}`)];
      return diff.length ? diff.join('\n') : null;
    }, 5000);
  }
}

/** Where each process of a target is, for a failure: its state, its system call, mappings it did not have. */
function whereAre(t: Target): string {
  return t.tree.map((p) => {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
      const added = fs.readFileSync(`/proc/${p}/maps`, 'utf8').split('\n').filter((l) => l && !t.maps.get(p)?.includes(l));
      return `pid ${p} ${stat[0]}${stat[0] === 'Z' ? ` (exit status ${stat.at(-1)!.trim()})` : ''}, syscall ${fs.readFileSync(`/proc/${p}/syscall`, 'utf8').trim().split(' ')[0]}${added.length ? `, new mappings ${added.join(' | ')}` : ''}`;
    } catch (e) {
      return `pid ${p}: ${(e as Error).message}`;
    }
  }).join('; ');
}

/** Phase windows of an undisturbed checkpoint, for aiming wall-clock kills; and its ptrace request count. */
async function calibrate(pid: number, dir: string): Promise<{ startupMs: number; windows: Array<[number, number]>; requests: number }> {
  const runs: Run[] = [];
  for (let i = 0; i < 2; i++) runs.push(await checkpointCommand(pid, dir, { dieAtPtrace: 1e9 }));
  const run = runs[1];
  const starts = phaseStarts(run.log);
  const startupMs = Math.max(0, run.wallMs - Math.max(...starts.values()) + starts.get('freeze')!);
  const at = (p: string) => starts.get(p)! - starts.get('freeze')!;
  const windows: Array<[number, number]> = [
    [at('freeze'), at('seize')],
    [at('seize'), at('survey')],
    [at('injection'), at('metadata')],
    [at('page dump'), at('image closed')],
    [at('image closed') - 2, at('finished') + 2],
  ];
  return { startupMs, windows, requests: run.ptraceRequests! };
}

/**
 * Seeded trials: `timed` wall-clock kills (one in five anywhere from the
 * command's start, the rest aimed at one phase window each, counted from
 * its freeze; `tail` of them near and after the end), and `byRequest`
 * kills at ptrace requests stratified over all of them, plus a few among
 * the last thirtieth (detach).
 */
function plan(rand: () => number, cal: Awaited<ReturnType<typeof calibrate>>, timed: number, byRequest: number, tail = 0): Kill[] {
  const trials: Kill[] = [];
  const end = cal.windows[4][1];
  for (let i = 0; i < timed; i++) {
    if (i % 5 === 4) {
      trials.push({ killAfterMs: rand() * (cal.startupMs + end) });
      continue;
    }
    const [lo, hi] = i < tail ? [cal.windows[3][1] - 2, end + 100] : cal.windows[i % 5];
    trials.push({ killAfterMs: Math.max(0, lo + rand() * (hi - lo)), fromFreeze: true });
  }
  for (let i = 0; i < byRequest; i++) trials.push({ dieAtPtrace: 1 + Math.floor(((i + rand()) * cal.requests) / byRequest) });
  for (let i = 0; i < Math.ceil(byRequest / 5); i++) trials.push({ dieAtPtrace: cal.requests - Math.floor(rand() * cal.requests / 30) });
  // Interleave the kinds.
  for (let i = trials.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [trials[i], trials[j]] = [trials[j], trials[i]];
  }
  return trials;
}

function describe(k: Kill): string {
  if (k.dieAtPtrace) return `ptrace request ${k.dieAtPtrace}`;
  return `${k.killAfterMs!.toFixed(1)} ms after ${k.fromFreeze ? 'freezing began' : 'start'}`;
}

function report(t: { diagnostic: (m: string) => void }, landed: Map<string, number>): void {
  t.diagnostic(`seed ${SEED}; kills landed in: ${[...landed].map(([p, n]) => `${p} ${n}`).join(', ')}`);
}

/** Kill `stasis checkpoint` at many moments; after each, the target is as it was. */
async function sigkillTrials(t: { diagnostic: (m: string) => void }, tag: string, children: number, seed: number): Promise<void> {
  const prog = build('selfcheck');
  const dir = tmpdir(tag);
  const target = await startTarget(prog, dir, children);
  const cal = await calibrate(target.pid, dir);
  await assertUnharmed(target, 'after the calibration checkpoints');
  const rand = seeded(seed);
  const landed = new Map<string, number>();
  try {
    for (const [i, how] of plan(rand, cal, 76, 20).entries()) {
      const run = await checkpointCommand(target.pid, dir, how);
      const trial = `trial ${i} (${describe(how)}, ${run.killed ? `killed in ${run.phase}` : 'finished'})`;
      landed.set(run.killed ? run.phase : 'after it finished', (landed.get(run.killed ? run.phase : 'after it finished') ?? 0) + 1);
      await assertUnharmed(target, trial);
    }
  } finally {
    procs.end(target.pid);
  }
  report(t, landed);
  // A tree is seized apart after the freezer; a process alone is seized as it is frozen.
  for (const phase of [children ? 'seize' : 'freeze', 'injection', 'page dump', 'detach']) assert.ok(landed.get(phase), `no kill landed in ${phase}: ${[...landed]}`);
}

// A process alone is frozen by ptrace only.
test('SIGKILL of `stasis checkpoint` at any moment leaves the target running as it was', async (t) => {
  await sigkillTrials(t, 'safety', 0, SEED);
});

// A tree of two is frozen by the freezer cgroup: the next checkpoint often
// comes while a child is still in the code a killed one left it in.
test('SIGKILL of `stasis checkpoint` at any moment leaves a tree of two (the freezer path) running as it was', async (t) => {
  await sigkillTrials(t, 'safety-tree', 1, SEED);
});

test('with --kill, a killed stasis leaves the target untouched or a complete image of it', async (t) => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-kill');
  let target = await startTarget(prog, dir);
  const cal = await calibrate(target.pid, dir);
  const rand = seeded(SEED + 1);
  const landed = new Map<string, number>();
  let restarts = 0;
  for (const [i, how] of plan(rand, cal, 14, 6, 6).entries()) {
    const run = await checkpointCommand(target.pid, dir, { ...how, kill: true });
    const where = run.killed ? `killed in ${run.phase}` : 'finished';
    const trial = `--kill trial ${i} (${describe(how)}, ${where})`;
    landed.set(run.killed ? run.phase : 'after it finished', (landed.get(run.killed ? run.phase : 'after it finished') ?? 0) + 1);
    procs.reap(target.pid);
    if (alive(target.pid)) {
      await assertUnharmed(target, trial);
      continue;
    }
    // Gone: the image must be whole, and restart into a program that checks out.
    await waitGone(target.pid, procs);
    const img = path.join(dir, 'image');
    assert.ok(fs.existsSync(img), `${trial}: the target is dead and there is no image`);
    assert.doesNotThrow(() => loadImage(img), `${trial}: the target is dead and its image does not load`);
    const r = restartSync(img, {});
    procs.addTree(r.pid);
    restarts++;
    await assertUnharmed({ ...target, pid: r.pid }, `${trial}, restarted`, false);
    process.kill(r.pid, 'SIGKILL');
    await r.wait();
    await waitGone(r.pid, procs);
    target = await startTarget(prog, dir);
  }
  procs.end(target.pid);
  t.diagnostic(`${restarts} trials ended with the target gone and its image restarted`);
  report(t, landed);
  assert.ok(restarts > 0, 'some kills came after the target was killed, and its image restarted');
});

// A batch of calls runs in the target's main thread by itself, then waits to
// be stopped: a stasis that dies there leaves the target to finish the
// wait and go home. timed_waits sleeps in restart_block calls in every
// thread (the main one in nanosleep): any of them disturbed prints FAIL.
/** timed_waits running and counting; its four counters. */
async function startTimedWaits(tag: string): Promise<{ pid: number; dir: string; out: string; counts: () => number[] }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out'), progress = path.join(dir, 'progress');
  const pid = procs.start(build('timed_waits'), [progress], out);
  await waitFor(out, /^ready$/m);
  const counts = () => fs.readFileSync(progress, 'utf8').trim().split(/\s+/).map(Number);
  await until('timed_waits counts', () => (counts().length === 4 ? null : 'no counts yet'));
  return { pid, dir, out, counts };
}

test('unit: a batch\'s code holds each argument as its 64-bit immediate (negative, past 2^32, BigInt), before and after a call that loads an earlier result', () => {
  const values: Array<number | bigint> = [0, 1, -1, -100, 0xffffffff, 0x100000000, 2 ** 53 - 1, -(2 ** 53 - 1), 0x7fffffffffffffffn, 0xffffffffffffffffn, -1n, 1n << 63n, 123n, 0xdead_beef_cafen];
  const calls: BatchCall[] = [
    { name: 'a', nr: 1, args: values.slice(0, 6) },
    { name: 'b', nr: 2, args: values.slice(6, 12) },
    { name: 'c', nr: 3, args: [values[12]] },
    { name: 'd', nr: 4, args: [{ result: 0 }, values[13], -5] },
    { name: 'e', nr: 5, args: values.slice(3, 9) },
  ];
  const area = 0x7f0000001000;
  const task = { injectsSafely: false, pid: 1, tgid: 1 } as unknown as Tracee;
  const { code, at } = (new Remote(task) as unknown as { batchCode(p: BatchCall[], area: number, first: number): { code: Buffer; at: number } }).batchCode(calls, area, 0);
  const u64 = (v: number | bigint) => BigInt.asUintN(64, BigInt(v));
  let o = 0;
  const movabs = (prefix: number[]): bigint => {
    assert.deepEqual([...code.subarray(o, o + prefix.length)], prefix, `opcode at ${o}`);
    o += prefix.length + 8;
    return code.readBigUInt64LE(o - 8);
  };
  const regs = [[0x48, 0xbf], [0x48, 0xbe], [0x48, 0xba], [0x49, 0xba], [0x49, 0xb8], [0x49, 0xb9]];
  calls.forEach((c, k) => {
    assert.equal(movabs([0x48, 0xb8]), u64(c.nr), `call ${k}: rax`);
    regs.forEach((r, a) => {
      const v = c.args[a] ?? 0;
      if (typeof v === 'object') {
        assert.equal(movabs(r), BigInt(at + v.result * 8), `call ${k}: argument ${a}, the result's address`);
        assert.equal(code[o + 1], 0x8b, `call ${k}: argument ${a} loaded through it`);
        o += 3;
      } else {
        assert.equal(movabs(r), u64(v), `call ${k}: argument ${a}`);
      }
    });
    assert.deepEqual([...code.subarray(o, o + 2)], [0x0f, 0x05]);
    o += 2;
    assert.equal(movabs([0x48, 0xa3]), BigInt(at + k * 8), `call ${k}: its result's slot`);
  });
  assert.equal(code[o], 0xcc, 'int3 after the last call');
});

test('a stasis killed while a batch of calls waits in the target: the target goes home by itself, its sleeps undisturbed', async () => {
  const { pid, dir, out, counts } = await startTimedWaits('safety-batch');
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  const child = spawn(process.execPath, [CLI, 'checkpoint', String(pid), '-o', path.join(dir, 'image')], { stdio: 'ignore', env: { ...process.env, STASIS_TEST_DIE_IN_BATCH: '1' } });
  const [, signal] = await new Promise<[number | null, string | null]>((r) => child.on('close', (c, s) => r([c, s])));
  assert.equal(signal, 'SIGKILL', 'stasis died in its first batch');
  // Within the batch's wait (2 s) the main thread is home: untraced, counting again.
  const before = counts();
  await until(`pid ${pid} runs by itself again`, () => {
    const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    if (!/^TracerPid:\s+0$/m.test(st)) return 'still traced';
    return counts().every((n, i) => n >= before[i] + 2) ? null : `counts ${before.join(' ')} -> ${counts().join(' ')}`;
  });
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  assert.equal(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'), maps, 'no scratch area or other mapping left');
  procs.end(pid);
});

// The next checkpoint may come while a task is still in the code a killed
// stasis left it in (its batch's wait, or the way home): it finishes that
// way home itself, from the block's saved registers and mask, and sweeps
// the scratch area, instead of taking the abandoned code for the task's own
// place (issue #7: the task then looped there, or died of SIGSEGV).
test('a checkpoint that finds a task still in a killed stasis\'s batch takes it home first, and its image restarts', async () => {
  const { pid, dir, out, counts } = await startTimedWaits('safety-batch-next');
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  // The abandoned batch waits 30 s, so the next checkpoint surely finds the task in it.
  const env = { ...process.env, STASIS_TEST_DIE_IN_BATCH: '1', STASIS_TEST_BATCH_WAIT_S: '30' };
  const child = spawn(process.execPath, [CLI, 'checkpoint', String(pid), '-o', path.join(dir, 'image')], { stdio: 'ignore', env });
  const [, signal] = await new Promise<[number | null, string | null]>((r) => child.on('close', (c, s) => r([c, s])));
  assert.equal(signal, 'SIGKILL', 'stasis died in its first batch');
  const img = path.join(dir, 'image');
  const run = await checkpointCommand(pid, dir, {});
  assert.equal(run.killed, false);
  assert.match(run.log, new RegExp(`pid ${pid} was still in the code of an abandoned checkpoint; taken home`));
  const before = counts();
  await until(`pid ${pid} counts on`, () => (counts().every((n, i) => n >= before[i] + 2) ? null : `counts ${before.join(' ')} -> ${counts().join(' ')}`));
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  assert.equal(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'), maps, 'no scratch area or other mapping left');
  // The image holds the task at home, not in the abandoned code.
  procs.end(pid);
  await waitGone(pid, procs);
  const r = restartSync(img, {});
  procs.addTree(r.pid);
  const restarted = counts();
  await until(`restarted pid ${r.pid} counts on`, () => (counts().every((n, i) => n >= restarted[i] + 2) ? null : `counts ${restarted.join(' ')} -> ${counts().join(' ')}`));
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  assert.equal(fs.readFileSync(`/proc/${r.pid}/maps`, 'utf8').split('\n').filter((l) => / rwxp 00000000 00:00 0 *$/.test(l)).length, 0, 'no scratch area in the restarted process');
  procs.end(r.pid);
});

// SIGSTOP is the one signal a held mask does not keep pending: an injected
// call meets it. It was dropped, and the target ran on where its user had
// stopped it.
test('a SIGSTOP sent while stasis injects calls stops the target once it is let go', async () => {
  const { pid, dir, out, counts } = await startTimedWaits('safety-sigstop');
  const env = { ...process.env, STASIS_TEST_SIGNAL_AT_INJECTION: '19' };
  const child = spawn(process.execPath, [CLI, 'checkpoint', String(pid), '-o', path.join(dir, 'image')], { stdio: 'ignore', env });
  const [code] = await new Promise<[number | null, string | null]>((r) => child.on('close', (c, s) => r([c, s])));
  assert.equal(code, 0);
  await until(`pid ${pid} stopped and untraced`, () => {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const st = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      if (!/^TracerPid:\s+0$/m.test(st)) return `thread ${tid} still traced`;
      if (!/^State:\s+T \(stopped\)/m.test(st)) return `thread ${tid}: ${/^State:.*$/m.exec(st)?.[0]}`;
    }
    return null;
  });
  process.kill(pid, 'SIGCONT');
  const before = counts();
  await until(`pid ${pid} counts on after SIGCONT`, () => (counts().every((n, i) => n >= before[i] + 2) ? null : `counts ${before.join(' ')} -> ${counts().join(' ')}`));
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  procs.end(pid);
});

test('a snapshot leaves threads in restart_block calls (nanosleep in the main thread, where batches run) waiting as they were', async () => {
  const { pid, dir, out, counts } = await startTimedWaits('snapshot-waits');
  const r = await checkpointCommand(pid, dir, {});
  assert.equal(r.killed, false);
  const before = counts();
  await until(`pid ${pid} counts on`, () => (counts().every((n, i) => n >= before[i] + 2) ? null : `counts ${before.join(' ')} -> ${counts().join(' ')}`));
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  procs.end(pid);
});

/** Run the command to its end; stdout to `stdout` (an fd) or ignored. */
function command(args: string[], stdout: number | 'ignore' | 'pipe' = 'ignore'): { child: ReturnType<typeof spawn>; done: Promise<{ code: number | null; stderr: string }> } {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', stdout, 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  // On exit, not close: a stdout left unread (a stalled reader) never closes by itself.
  const done = new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      child.stdout?.destroy();
      if (child.stderr!.readableEnded) resolve({ code, stderr });
      else child.stderr!.on('end', () => resolve({ code, stderr }));
    });
  });
  return { child, done };
}

const oneLine = (s: string) => s.trim().split('\n').filter((l) => !l.startsWith('[')).filter(Boolean);

test('a second checkpoint of a tree being checkpointed is refused by name; a stalled reader ends the first at --freeze-timeout', async () => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-busy');
  const target = await startTarget(prog, dir);
  // The first writes to a pipe nobody reads: it fills and the checkpoint stalls with the tree held.
  const first = command(['checkpoint', String(target.pid), '--freeze-timeout', '8', '-v'], 'pipe');
  first.child.stdout!.pause();
  let log = '';
  first.child.stderr!.on('data', (d) => (log += d));
  await until('the first checkpoint holds the tree', () => (/froze \d+ processes/.test(log) ? null : log || 'nothing logged yet'), 30000);
  const second = await command(['checkpoint', String(target.pid), '-o', '/dev/null']).done;
  assert.equal(second.code, 1);
  assert.deepEqual(oneLine(second.stderr), [`stasis: pid ${target.pid}: the tree is being checkpointed by pid ${first.child.pid}; try again once it has finished`]);
  const r = await first.done;
  assert.equal(r.code, 1, r.stderr);
  assert.match(oneLine(r.stderr).join('\n'), /^stasis: pid \d+: the tree stayed frozen 8 s while the image was written \(is its reader stalled\?\); checkpoint abandoned, the tree resumed/);
  await assertUnharmed(target, 'after the stalled checkpoint');
  procs.end(target.pid);
});

test('a target traced by a debugger is refused by name and left to it', async () => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-traced');
  const target = await startTarget(prog, dir);
  const strace = spawn('strace', ['-p', String(target.pid), '-o', '/dev/null'], { stdio: 'ignore' });
  try {
    await until('strace attached', () => (/^TracerPid:\s+0$/m.test(fs.readFileSync(`/proc/${target.pid}/status`, 'utf8')) ? 'not yet' : null));
    const r = await command(['checkpoint', String(target.pid), '-o', path.join(dir, 'image')]).done;
    assert.equal(r.code, 1);
    assert.deepEqual(oneLine(r.stderr), [`stasis: pid ${target.pid} is traced by pid ${strace.pid} (strace); stasis cannot trace it at the same time: detach the debugger first`]);
    assert.ok(!fs.existsSync(path.join(dir, 'image')), 'no image left');
  } finally {
    strace.kill('SIGINT');
    await new Promise((r) => strace.on('close', r));
  }
  await assertUnharmed(target, 'after strace let it go');
  procs.end(target.pid);
});

test('a full disk (ENOSPC on a small tmpfs): one-line error, no partial image, target unharmed', async () => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-enospc');
  const target = await startTarget(prog, dir);
  const mnt = path.join(dir, 'small');
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'stasis-test', mnt]);
  try {
    const img = path.join(mnt, 'image');
    const r = await command(['checkpoint', String(target.pid), '-o', img]).done;
    assert.equal(r.code, 1);
    const lines = oneLine(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^stasis: .*ENOSPC/);
    assert.deepEqual(fs.readdirSync(mnt), [], 'the partial image is removed');
  } finally {
    execFileSync('umount', [mnt]);
  }
  await assertUnharmed(target, 'after a checkpoint that filled the disk');
  procs.end(target.pid);
});

/**
 * A filesystem whose device fails under it: ext4 (one block group, so all
 * its metadata sits in the first megabyte) on a loop device whose backing
 * file is then cut to 16 MiB and its capacity shrunk (losetup -c). Writes
 * past that end fail in the block layer ("attempt to access beyond end of
 * device"): a real EIO from the kernel, at fsync after buffered writes,
 * and at write() itself when mounted -o sync.
 */
function withFailingDisk(dir: string, use: (mnt: string, remountSync: () => void) => Promise<void>): Promise<void> {
  const backing = path.join(dir, 'disk');
  const mnt = path.join(dir, 'failing');
  fs.mkdirSync(mnt);
  execFileSync('truncate', ['-s', '120M', backing]);
  execFileSync('mkfs.ext4', ['-q', '-b', '4096', '-O', '^has_journal', '-N', '64', '-F', backing]);
  const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
  let mounted = false;
  const cleanup = () => {
    // The full size back first: nothing must wait on blocks it cannot reach.
    execFileSync('truncate', ['-s', '120M', backing]);
    execFileSync('losetup', ['-c', dev]);
    if (mounted) execFileSync('umount', [mnt]);
    execFileSync('losetup', ['-d', dev]);
  };
  try {
    execFileSync('mount', ['-t', 'ext4', dev, mnt]);
    mounted = true;
    execFileSync('truncate', ['-s', '16M', backing]);
    execFileSync('losetup', ['-c', dev]);
  } catch (e) {
    cleanup();
    throw e;
  }
  return use(mnt, () => execFileSync('mount', ['-o', 'remount,sync', mnt])).finally(cleanup);
}

test('an I/O error of the disk (EIO, at fsync and at write): one-line error, no partial image, target unharmed', async () => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-eio');
  const target = await startTarget(prog, dir);
  await withFailingDisk(dir, async (mnt, remountSync) => {
    for (const how of ['buffered (EIO at fsync)', 'mounted -o sync (EIO at write)']) {
      if (how.startsWith('mounted')) remountSync();
      const img = path.join(mnt, 'image');
      const r = await command(['checkpoint', String(target.pid), '-o', img]).done;
      assert.equal(r.code, 1, `${how}: ${r.stderr}`);
      const lines = oneLine(r.stderr);
      assert.equal(lines.length, 1, `${how}: ${r.stderr}`);
      assert.match(lines[0], /^stasis: writing the image.*: EIO \(the device reported an I\/O error/, how);
      assert.deepEqual(fs.readdirSync(mnt).filter((f) => f !== 'lost+found'), [], `${how}: the partial image is removed`);
      await assertUnharmed(target, `after a checkpoint whose disk failed, ${how}`);
    }
  });
  procs.end(target.pid);
});

// A restart is never left half done: `stasis restart` (the command) is
// killed with SIGKILL at random moments across the whole restart of a tree
// (a 64 MiB program with five threads and two children that check their
// own memory and registers), in the foreground and with -d, in stasis's
// pid namespace and in a new one (--pid-ns), with and without --verify.
// After every kill either nothing of the image is left (no process runs
// the program or holds one of its pids, no pid namespace of it, no hold
// cgroup, no half-made task) or the restart had completed: the whole tree
// is there, let go, in its own cgroups, and every check of its own passes.
//
// The kill moments are seeded (STASIS_SAFETY_SEED) and of two kinds, as in
// safety.test.ts: wall-clock delays over a calibrated restart, and the Nth
// ptrace request (STASIS_TEST_DIE_AT_PTRACE) stratified over all requests
// of a restart, which reaches the short phases (letting the tree go).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { build, Procs, tmpdir, waitFor, waitGone, CLI, seededRandom, adoptOrphans, ourChildren, reapOrphans } from './harness';
import { checkpointSync, loadImage } from '../src';
import { readStatus } from '../src/proc';

const procs = new Procs();
after(() => procs.cleanup());

const SEED = Number(process.env.STASIS_SAFETY_SEED ?? 20261129);

// Whatever a killed restart leaves comes to us, to be found and reaped.
before(adoptOrphans);

const PHASES: Array<[RegExp, string]> = [
  [/\] image of pid \d+ .* verified$/, 'blank'],
  [/\] (the tree is held in|no cgroup v2|new user namespace)/, 'blank'],
  [/\] pid \d+ created$/, 'tree'],
  [/\] pid \d+: thread \d+ created$/, 'process state'],
  [/\] pid \d+: address space cleared/, 'memory'],
  [/\] pid \d+: \d+ VMAs mapped/, 'tree'],
  [/\] tree of \d+ processes created/, 'process state'],
  [/\] pid \d+: \d+ thread\(s\) ready/, 'finishing'],
  [/\] verif/, 'verify'],
  [/\] letting the tree go/, 'release'],
  [/\] restored as pid/, 'running'],
];

function phaseOf(log: string): string {
  const last = log.split('\n').filter((l) => l.startsWith('[')).at(-1);
  if (!last) return 'start-up';
  return PHASES.find(([re]) => re.test(last))?.[1] ?? `after "${last}"`;
}

interface Mode { detach: boolean; pidNs: boolean; verify: boolean }
const describeMode = (m: Mode) => [m.detach ? '-d' : 'foreground', m.pidNs ? '--pid-ns' : '', m.verify ? '--verify' : ''].filter(Boolean).join(' ');

interface Kill { killAfterMs?: number; dieAtPtrace?: number }

interface Run { log: string; phase: string; killed: boolean; stasisPid: number; wallMs: number; ptraceRequests?: number }

/** `stasis restart` of `img` in `mode`, SIGKILLed as `how` says (in the foreground, at the latest once the tree runs). */
function restartCommand(img: string, dir: string, mode: Mode, how: Kill): Promise<Run> {
  const logFile = path.join(dir, 'restart.log');
  const fd = fs.openSync(logFile, 'w');
  const env = { ...process.env };
  if (how.dieAtPtrace !== undefined) env.STASIS_TEST_DIE_AT_PTRACE = String(how.dieAtPtrace);
  const args = [CLI, 'restart', img, '-v', ...(mode.detach ? ['-d'] : []), ...(mode.pidNs ? ['--pid-ns'] : []), ...(mode.verify ? ['--verify'] : [])];
  const t0 = performance.now();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', fd], env });
  fs.closeSync(fd);
  const timer = how.killAfterMs !== undefined ? setTimeout(() => child.kill('SIGKILL'), how.killAfterMs) : undefined;
  // In the foreground stasis waits for the tree, which runs forever.
  const poll = mode.detach ? undefined : setInterval(() => {
    if (/\] restored as pid/.test(fs.readFileSync(logFile, 'utf8'))) child.kill('SIGKILL');
  }, 5);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearInterval(poll);
      const log = fs.readFileSync(logFile, 'utf8');
      if (signal === null && code !== 0) reject(new Error(`stasis restart failed by itself (exit ${code}):\n${log}`));
      const count = /^ptrace requests: (\d+)$/m.exec(log)?.[1];
      resolve({ log, phase: phaseOf(log), killed: signal === 'SIGKILL', stasisPid: child.pid!, wallMs: performance.now() - t0, ptraceRequests: count ? Number(count) : undefined });
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function read(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** A task that still has its memory and is not being killed. */
function running(pid: number): boolean {
  try {
    fs.readlinkSync(`/proc/${pid}/exe`); // gone once it is past exit_mm
  } catch {
    return false;
  }
  const status = read(`/proc/${pid}/status`);
  if (!status || /^State:\s+[ZX]/m.test(status)) return false;
  const pending = (name: string) => BigInt('0x' + (new RegExp(`^${name}:\\s+([0-9a-f]+)$`, 'm').exec(status)?.[1] ?? '0'));
  return ((pending('SigPnd') | pending('ShdPnd')) & (1n << 8n)) === 0n; // no SIGKILL on its way
}

interface Live { pid: number; vpid: number; ppid: number; exe: string }

/**
 * Everything of the image still running: any process running the
 * program (pids seen from here, in whatever namespace), and any child of
 * ours (a namespace's init, a blank, an orphan of the tree).
 */
function leftovers(prog: string): Live[] {
  const out: Live[] = [];
  const kids = new Set(ourChildren());
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pid = Number(d);
    let exe: string;
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`);
    } catch {
      continue;
    }
    if (exe !== prog && !kids.has(pid)) continue;
    if (!running(pid)) continue;
    try {
      const st = readStatus(pid);
      out.push({ pid, vpid: st.nsPid[st.nsPid.length - 1], ppid: st.ppid, exe });
    } catch { /* ended meanwhile */ }
  }
  return out;
}

/** Hold cgroups (src/ptrace/hold.ts) a stasis made under ours and did not remove. */
function holdsOf(stasisPid: number): string[] {
  const mine = /^0::(.*)$/m.exec(fs.readFileSync('/proc/self/cgroup', 'utf8'))![1];
  const mount = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => / - cgroup2 /.test(l))!.split(' ')[4];
  const dir = path.join(mount, mine);
  return fs.readdirSync(dir).filter((d) => d.startsWith(`stasis-restart-${stasisPid}-`));
}

interface Expected { prog: string; pids: number[]; tids: Map<number, number[]>; ppid: Map<number, number>; progress: string; out: string; v2: string }

/**
 * Whole: exactly the image's processes (and a namespace's init), each with
 * all its threads and its parent, none stopped or traced, none in a hold,
 * and then each of its own checks done again and passed.
 */
function whole(live: Live[], e: Expected, pidNs: boolean): string | null {
  const tree = live.filter((l) => l.exe === e.prog);
  const init = live.filter((l) => l.exe !== e.prog);
  if (pidNs && (init.length !== 1 || init[0].vpid !== 1)) return `no namespace init: ${JSON.stringify(init)}`;
  if (!pidNs && init.length) return `other children of ours: ${JSON.stringify(init)}`;
  const byV = new Map(tree.map((l) => [l.vpid, l]));
  if (tree.length !== e.pids.length || !e.pids.every((p) => byV.has(p))) return `processes ${tree.map((l) => l.vpid).sort()} of ${e.pids}`;
  for (const p of e.pids) {
    const l = byV.get(p)!;
    const parent = e.ppid.get(p)!;
    if (e.pids.includes(parent) && l.ppid !== byV.get(parent)!.pid) return `pid ${p}: parent ${l.ppid}, not ${byV.get(parent)!.pid}`;
    const tids = fs.readdirSync(`/proc/${l.pid}/task`).map(Number);
    if (tids.length !== e.tids.get(p)!.length) return `pid ${p}: ${tids.length} threads of ${e.tids.get(p)!.length}`;
    for (const t of tids) {
      const st = read(`/proc/${l.pid}/task/${t}/status`) ?? '';
      if (/^State:\s+[tT]/m.test(st)) return `pid ${p}: thread ${t} stopped`;
      if (!/^TracerPid:\s+0$/m.test(st)) return `pid ${p}: thread ${t} traced`;
    }
    const v2 = /^0::(.*)$/m.exec(read(`/proc/${l.pid}/cgroup`) ?? '')?.[1];
    if (v2 !== e.v2) return `pid ${p}: in v2 cgroup ${v2}, not ${e.v2}`;
  }
  return null;
}

const counters = (file: string) => (read(file) ?? '').trim().split(/\s+/).map(Number);

/**
 * After stasis is gone: wait until what it left settles into one of the
 * two allowed outcomes (a readiness condition: killed tasks take a moment
 * to go, and the watchdog to act), then end the tree if it is whole.
 */
async function outcome(e: Expected, run: Run, mode: Mode, trial: string): Promise<'gone' | 'whole'> {
  const deadline = Date.now() + 15000;
  for (;;) {
    reapOrphans();
    const holds = holdsOf(run.stasisPid);
    const live = leftovers(e.prog);
    // Gone for good: in stasis's own pid namespace the pids are free again for the next restart.
    const held = mode.pidNs ? [] : e.pids.filter((p) => fs.existsSync(`/proc/${p}`));
    if (!live.length && !holds.length && !held.length) return 'gone';
    const why = holds.length ? `hold cgroup ${holds} left` : !live.length ? `pids ${held} not free` : whole(live, e, mode.pidNs);
    if (why === null) {
      // Whole: then it must run and check itself.
      const before = counters(e.progress);
      for (;;) {
        const now = counters(e.progress);
        if (now.length === before.length && now.every((c, i) => c > before[i])) break;
        if (Date.now() > deadline) throw new Error(`${trial}: the whole tree does not run: counters ${before} -> ${now}`);
        await sleep(5);
      }
      const out = read(e.out) ?? '';
      assert.doesNotMatch(out, /FAIL/, `${trial}: the restored tree's own checks failed:\n${out}`);
      // Still whole (not a tree being killed that ran a last moment).
      if (whole(leftovers(e.prog), e, mode.pidNs) === null) {
        await endTree(live, e, mode);
        return 'whole';
      }
    }
    if (Date.now() > deadline) {
      for (const l of live) procs.add(l.pid); // ended by the cleanup, whatever the assertion says
      throw new Error(`${trial}: left half done: ${why}; running: ${JSON.stringify(live)}\n${run.log}`);
    }
    await sleep(5);
  }
}

async function endTree(live: Live[], e: Expected, mode: Mode): Promise<void> {
  // A namespace ends with its init; otherwise each process by pid.
  const victims = mode.pidNs ? live.filter((l) => l.vpid === 1 && l.exe !== e.prog) : live;
  for (const l of victims) process.kill(l.pid, 'SIGKILL');
  for (const l of live) await waitGone(l.pid, procs);
}

const keyOf = (m: Mode) => `${m.pidNs ? 'ns' : 'host'}${m.verify ? ' verify' : ''}`;

/** An undisturbed restart of one kind: its length, and where each logged step began in ptrace requests. */
interface Calibration { wallMs: number; startupMs: number; requests: number; steps: number[]; created: number[]; release: number }

function calibration(run: Run): Calibration {
  const lines = [...run.log.matchAll(/^\[([\d.]+) ms\] \[ptrace (\d+)\] (.*)$/gm)];
  const restored = lines.find((l) => l[3].startsWith('restored as pid'))!;
  return {
    wallMs: run.wallMs,
    // Before its first log line the command only starts Node and loads the image.
    startupMs: Math.max(0, run.wallMs - Number(restored[1])),
    requests: run.ptraceRequests!,
    steps: [...new Set(lines.map((l) => Number(l[2])))],
    // processes (a thread dies with its process anyway)
    created: lines.filter((l) => /^pid \d+ created$/.test(l[3])).map((l) => Number(l[2])),
    release: Number(lines.find((l) => l[3] === 'letting the tree go')![2]),
  };
}

/**
 * Seeded trials, the modes in turn, per mode: wall-clock kills (one in
 * five anywhere, the others after the command's start-up), ptrace
 * requests stratified over all of them, the first requests of each
 * logged step (where one kind of work hands over to the next: a process
 * or thread created, memory done, verify begun), the first request after
 * each process is created (the moment a task untraced by us would be left
 * behind), and the requests of letting the tree go or just past them (the
 * restart completes). Shuffled.
 */
function plan(rand: () => number, cal: Map<string, Calibration>, modes: Mode[], perMode: number): Array<{ mode: Mode; how: Kill }> {
  const out: Array<{ mode: Mode; how: Kill }> = [];
  const kinds = ['wall', 'stratified', 'step', 'release', 'created', 'stratified', 'release', 'wall'];
  for (const mode of modes) {
    const c = cal.get(keyOf(mode))!;
    // The first request: the blank exists and is not traced yet.
    out.push({ mode, how: { dieAtPtrace: 1 } });
    let stratum = 0, created = 0;
    const strata = Math.ceil((perMode * 2) / kinds.length);
    for (let i = 0; i < perMode; i++) {
      const kind = kinds[i % kinds.length];
      if (kind === 'wall') {
        const [lo, hi] = i % 5 === 0 ? [0, c.wallMs] : [c.startupMs, c.wallMs + 20];
        out.push({ mode, how: { killAfterMs: lo + rand() * (hi - lo) } });
      } else if (kind === 'stratified') {
        out.push({ mode, how: { dieAtPtrace: 1 + Math.floor(((stratum++ + rand()) * c.requests) / strata) } });
      } else if (kind === 'created') {
        out.push({ mode, how: { dieAtPtrace: c.created[created++ % c.created.length] + 1 } });
      } else if (kind === 'step') {
        const at = c.steps[Math.floor(rand() * c.steps.length)];
        out.push({ mode, how: { dieAtPtrace: Math.min(c.requests + 1, at + 1 + Math.floor(rand() * 12)) } });
      } else {
        out.push({ mode, how: { dieAtPtrace: c.release + 1 + Math.floor(rand() * (c.requests + 1 - c.release)) } });
      }
    }
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

test('SIGKILL of `stasis restart` at any moment leaves nothing of the image, or the whole tree running', async (t) => {
  const prog = build('selfcheck');
  const dir = tmpdir('safety-restart');
  const progress = path.join(dir, 'progress');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [progress, '2'], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const image = (() => {
    checkpointSync(pid, img, { kill: true });
    return loadImage(img);
  })();
  const e: Expected = {
    prog,
    pids: image.processes.map((p) => p.pid),
    tids: new Map(image.processes.map((p) => [p.pid, p.threads.map((x) => x.tid)])),
    ppid: new Map(image.processes.map((p) => [p.pid, p.ppid])),
    progress,
    out,
    v2: image.processes[0].cgroups.find((c) => c.controllers === '')!.path,
  };
  image.release();
  assert.equal(e.pids.length, 3);
  for (const p of e.pids) await waitGone(p, procs);

  const modes: Mode[] = [
    { detach: false, pidNs: false, verify: false },
    { detach: true, pidNs: false, verify: true },
    { detach: false, pidNs: true, verify: true },
    { detach: true, pidNs: true, verify: false },
  ];
  // Calibration: undisturbed restarts (-d) of each kind, the second one counted.
  const cal = new Map<string, Calibration>();
  for (const m of modes) {
    for (let i = 0; i < 2; i++) {
      const mode = { ...m, detach: true };
      const run = await restartCommand(img, dir, mode, { dieAtPtrace: 1e9 });
      assert.equal(await outcome(e, run, mode, `calibration ${keyOf(m)}`), 'whole');
      cal.set(keyOf(m), calibration(run));
    }
  }
  t.diagnostic(`calibration: ${[...cal].map(([k, c]) => `${k}: ${c.requests} ptrace requests (letting go from ${c.release}), ${c.wallMs.toFixed(0)} ms (${c.startupMs.toFixed(0)} ms start-up)`).join('; ')}`);

  const rand = seededRandom(SEED + 2);
  const landed = new Map<string, number>();
  const ends = new Map<string, number>();
  const count = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const [i, { mode, how }] of plan(rand, cal, modes, 24).entries()) {
    const run = await restartCommand(img, dir, mode, how);
    const where = run.killed ? `killed in ${run.phase}` : 'finished';
    const trial = `trial ${i} (${describeMode(mode)}, ${how.dieAtPtrace ? `ptrace request ${how.dieAtPtrace}` : `${how.killAfterMs!.toFixed(1)} ms`}, ${where})`;
    const end = await outcome(e, run, mode, trial);
    if (process.env.STASIS_TEST_TRIALS) t.diagnostic(`${trial}: ${end}`);
    count(landed, run.killed ? `${run.phase}` : 'after it finished');
    count(ends, `${mode.pidNs ? 'ns' : 'host'} ${end}`);
    // A tree left whole must be one whose restart had let it go.
    if (end === 'whole') assert.match(run.log, /\] letting the tree go/, `${trial}: whole, but the restart had not reached letting it go`);
  }
  t.diagnostic(`seed ${SEED}; kills landed in: ${[...landed].map(([p, n]) => `${p} ${n}`).join(', ')}`);
  t.diagnostic(`outcomes: ${[...ends].map(([p, n]) => `${p} ${n}`).join(', ')}`);
  for (const phase of ['blank', 'memory', 'process state', 'verify', 'release']) assert.ok(landed.get(phase), `no kill landed in ${phase}: ${[...landed]}`);
  for (const k of ['host gone', 'host whole', 'ns gone', 'ns whole']) assert.ok(ends.get(k), `no trial ended ${k}`);
});

// One task alone is restarted without a hold cgroup: it dies with stasis
// (PTRACE_O_EXITKILL) until the one PTRACE_DETACH that lets it go whole.
test('one single-threaded process restarted outside a pid namespace (no hold): a stasis killed at any ptrace request leaves nothing, or the process running', async (t) => {
  const prog = build('blockers');
  const dir = tmpdir('safety-restart-one');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['pause'], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const mode: Mode = { detach: true, pidNs: false, verify: false };
  const settle = async (run: Run, trial: string): Promise<'gone' | 'whole'> => {
    const deadline = Date.now() + 15000;
    for (;;) {
      reapOrphans();
      const live = leftovers(prog);
      if (!live.length && !fs.existsSync(`/proc/${pid}`) && !holdsOf(run.stasisPid).length) return 'gone';
      if (live.length === 1 && live[0].pid === pid) {
        const st = read(`/proc/${pid}/status`) ?? '';
        assert.match(st, /^TracerPid:\s+0$/m, `${trial}: left traced`);
        assert.match(st, /^State:\s+S/m, `${trial}: not back in pause()`);
        // Whole: it wakes on a signal as the program does.
        process.kill(pid, 'SIGUSR1');
        await waitFor(out, /woke\n$/);
        await waitGone(pid, procs);
        return 'whole';
      }
      if (Date.now() > deadline) throw new Error(`${trial}: neither gone nor whole: ${JSON.stringify(live)}`);
      await sleep(5);
    }
  };
  const cal = await restartCommand(img, dir, mode, { dieAtPtrace: 1e9 });
  assert.doesNotMatch(cal.log, /held in cgroup|no cgroup v2/, 'no hold for one task');
  assert.equal(await settle(cal, 'calibration'), 'whole');
  const n = cal.ptraceRequests!;
  const outcomes = new Map<string, number>();
  // Every tenth request, and each of the last ten (the detach among them).
  const at = [...new Set([...Array.from({ length: 10 }, (_, i) => 1 + Math.floor((i * n) / 10)), ...Array.from({ length: 10 }, (_, i) => n - i)])];
  for (const k of at) {
    const run = await restartCommand(img, dir, mode, { dieAtPtrace: k });
    const end = await settle(run, `ptrace request ${k} of ${n} (${run.killed ? `killed in ${run.phase}` : 'finished'})`);
    outcomes.set(end, (outcomes.get(end) ?? 0) + 1);
  }
  t.diagnostic(`${n} ptrace requests; outcomes: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  assert.ok(outcomes.get('gone'), 'some kills came before the detach');
});

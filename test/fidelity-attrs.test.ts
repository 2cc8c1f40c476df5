// Fidelity of per-process and per-thread attributes: capabilities and
// securebits, scheduling, affinity and I/O priority, prctl state,
// oom_score_adj and loginuid, membarrier registrations. Each fid_* program
// sets its group of state (per-thread state differently in two threads);
// the state read from outside before checkpoint and after restart must be
// identical field by field, a checkpoint of the restored process must save
// the same attributes as the first, and the program's own check must pass.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, assertLeftRunning } from './harness';
import { checkpointSync, restartSync, loadImage } from '../src';
import { readStat, readStatus, listThreads } from '../src/proc';
import { syscall } from '../src/sys/libc';
import type { ImageProcess } from '../src/image/schema';
import { CapsState } from '../src/kinds/caps';
import { SchedState } from '../src/kinds/sched';
import { MempolicyState } from '../src/kinds/mempolicy';
import { ProcessPrctlState, ThreadPrctlState } from '../src/kinds/prctl';

const procs = new Procs();
after(() => procs.cleanup());

const SYS_sched_getattr = 315, SYS_sched_getaffinity = 204, SYS_ioprio_get = 252;

/** What the kernel shows of one thread's attributes, read from outside. */
function observeThread(tid: number): Record<string, unknown> {
  const st = readStatus(tid);
  const stat = readStat(tid);
  const a = Buffer.alloc(56);
  syscall(SYS_sched_getattr, 'sched_getattr', tid, a, 56, 0);
  const cpus = Buffer.alloc(128);
  const n = syscall(SYS_sched_getaffinity, 'sched_getaffinity', tid, 128, cpus);
  const read = (f: string) => fs.readFileSync(`/proc/${tid}/${f}`, 'utf8').trim();
  return {
    uid: st.uid, gid: st.gid, groups: st.groups,
    capInh: st.capInh, capPrm: st.capPrm, capEff: st.capEff, capBnd: st.capBnd, capAmb: st.capAmb,
    noNewPrivs: st.noNewPrivs, seccomp: st.seccomp,
    speculation: [st.raw['Speculation_Store_Bypass'], st.raw['SpeculationIndirectBranch']],
    policy: stat.policy, rtPriority: stat.rtPriority, nice: stat.nice,
    schedAttr: { policy: a.readUInt32LE(4), flags: a.readBigUInt64LE(8), nice: a.readInt32LE(16), prio: a.readUInt32LE(20), runtime: a.readBigUInt64LE(24) },
    affinity: cpus.subarray(0, n).toString('hex'), cpusAllowed: st.raw['Cpus_allowed_list'],
    ioprio: syscall(SYS_ioprio_get, 'ioprio_get', 1, tid),
    timerslack: read('timerslack_ns'), loginuid: read('loginuid'), personality: read('personality'),
    // the task's memory policy, shown for mappings without one of their own
    mempolicy: read('numa_maps').split('\n')[0].split(' ')[1],
  };
}

function observe(pid: number): Record<string, unknown> {
  const read = (f: string) => fs.readFileSync(`/proc/${pid}/${f}`, 'utf8').trim();
  const st = readStatus(pid);
  return {
    oomScoreAdj: read('oom_score_adj'), coredumpFilter: read('coredump_filter'),
    // the autogroup's number is new after restart (a new session makes a new one); its nice is state
    autogroupNice: / nice (-?\d+)/.exec(read('autogroup'))?.[1],
    thpEnabled: st.raw['THP_enabled'], ksmMergeAny: /ksm_merge_any: (\w+)/.exec(read('ksm_stat'))?.[1],
    threads: listThreads(pid).sort((x, y) => x - y).map((tid) => ({ tid, ...observeThread(tid) })),
  };
}

/** The attributes this work saves, from an image: they must be saved alike from the restored process. */
function savedAttrs(p: ImageProcess): unknown {
  return { prctl: p.prctl, threads: p.threads.map((t) => ({ tid: t.tid, sched: t.sched, mempolicy: t.mempolicy, prctl: t.prctl, caps: t.caps })) };
}

/**
 * Start NAME (its output file owned by `owner` if given), wait for "ready", observe, checkpoint with --kill, restart,
 * observe again and compare; checkpoint the restored process (it keeps
 * running) and compare what is saved; then SIGUSR1 makes it check itself.
 * Returns the first image's root process for test-specific assertions.
 */
async function fidelity(name: string, owner?: number): Promise<ImageProcess> {
  const dir = tmpdir(name);
  const out = path.join(dir, 'out');
  // A restart opens files only as the saved process could have: its stdout is its own.
  if (owner !== undefined) {
    fs.writeFileSync(out, '');
    fs.chownSync(out, owner, owner);
  }
  const pid = procs.start(build(name), [], out);
  await waitFor(out, /^ready$/m);
  const before = observe(pid);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const r = restartSync(img);
  procs.add(r.pid);
  assert.equal(r.pid, pid, 'restored under its own pid');
  assert.deepEqual(observe(r.pid), before, 'attributes read from outside are identical after restart');
  const again = path.join(dir, 'again');
  checkpointSync(r.pid, again);
  const saved = loadImage(img).process;
  // What was saved fits the declared schemas (images are checked against them).
  ProcessPrctlState.parse(saved.prctl);
  for (const t of saved.threads) {
    CapsState.parse(t.caps);
    SchedState.parse(t.sched);
    MempolicyState.parse(t.mempolicy);
    ThreadPrctlState.parse(t.prctl);
  }
  assert.deepEqual(savedAttrs(loadImage(again).process), savedAttrs(saved), 'the restored process saves the same attributes');
  process.kill(r.pid, 'SIGUSR1');
  const exit = await r.wait();
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
  assert.deepEqual(exit, { code: 0, signal: null });
  return saved;
}

test('scheduling per thread: FIFO with reset-on-fork and nice; BATCH with a custom slice and timer slack', async () => {
  const p = await fidelity('fid_sched');
  const [main, second] = p.threads;
  assert.deepEqual([main.sched.policy, main.sched.rtPriority, main.sched.resetOnFork, main.sched.nice], [1, 10, true, 5]);
  assert.deepEqual([second.sched.policy, second.sched.nice, second.sched.slice, second.sched.timerSlack], [3, 7, 5000000, 123456]);
});

test('CPU affinity and I/O priority per thread: CPU 1 and the idle class; CPU 0 and real-time level 5', async () => {
  const p = await fidelity('fid_affinity_ioprio');
  const [main, second] = p.threads;
  assert.deepEqual([main.sched.affinity, main.sched.ioprio], ['0x2', 3 << 13]);
  assert.deepEqual([second.sched.affinity, second.sched.ioprio], ['0x1', (1 << 13) | 5]);
});

test('oom_score_adj, coredump_filter, autogroup nice and a loginuid per thread come back', async () => {
  const p = await fidelity('fid_oom_loginuid');
  assert.deepEqual([p.prctl.oomScoreAdj, p.prctl.coredumpFilter, p.prctl.autogroupNice], [321, 0x7f, 4]);
  assert.deepEqual(p.threads.map((t) => t.prctl.loginuid), [4242, 4343]);
});

test('membarrier registrations are made again: global, private, sync-core and rseq expedited', async () => {
  const p = await fidelity('fid_membarrier');
  assert.equal(p.prctl.membarrier, (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8));
});

test('prctl state: subreaper, THP, MDWE, KSM, futex hash, dumpable; per thread pdeathsig, no_new_privs, TSC, cpuid, MCE, personality', async () => {
  const p = await fidelity('fid_prctl');
  assert.deepEqual(p.prctl, { ...p.prctl, childSubreaper: true, thpDisable: 3, mdwe: 1, futexSlots: 32, dumpable: 0 });
  assert.equal(p.ksmMergeAny, true, 'KSM merge-any (kinds/mmpolicy)');
  const [main, second] = p.threads;
  assert.deepEqual([main.prctl.pdeathsig, main.prctl.mceKill, main.prctl.noNewPrivs, main.prctl.personality], [28, 1, false, 0x0040000]);
  assert.deepEqual([second.prctl.pdeathsig, second.prctl.noNewPrivs, second.prctl.tsc, second.prctl.cpuid, second.prctl.mceKill, second.prctl.personality],
    [23, true, 2, 0, 0, 0x0020000]);
});

test('capabilities per thread as another uid: sets, bounding, ambient, securebits and keepcaps; dumpable cleared by the uid change', async () => {
  const p = await fidelity('fid_caps', 1000);
  const [main, second] = p.threads;
  assert.deepEqual(main.caps, { inh: '0x2400', prm: '0x2520', eff: '0x420', bnd: '0x1fff6bfffff', amb: '0x400', securebits: 0x50 });
  assert.deepEqual(second.caps, { inh: '0x1', prm: '0x0', eff: '0x0', bnd: '0x1fffefeffff', amb: '0x0', securebits: 0 });
  assert.deepEqual([p.creds.uid, p.creds.groups, p.prctl.dumpable], [[1000, 1000, 1000, 1000], [100, 200], 0]);
});

test('NUMA memory policy per thread: interleave with relative nodes; bind with static nodes', async () => {
  const p = await fidelity('fid_mempolicy');
  assert.deepEqual(p.threads.map((t) => t.mempolicy), [{ mode: 3 | (1 << 14), nodes: '0x1' }, { mode: 2 | (1 << 15), nodes: '0x1' }]);
});

for (const [mode, refusal] of [
  ['seccomp', /pid \d+: seccomp filter is not supported/],
  ['sud', /pid \d+: syscall user dispatch \(PR_SET_SYSCALL_USER_DISPATCH\) is on; not supported/],
  ['deadline', /pid \d+ thread \d+: SCHED_DEADLINE is not supported/],
  ['ids', /pid \d+ thread \d+: its credentials \(uids 1000,1000,1000,1000 gids 0,0,0,0 groups \S+\) differ from its process's \(uids 0,0,0,0 /],
] as const) {
  test(`${mode}: refused by name at checkpoint, the target goes on untraced and unfrozen`, async () => {
    const dir = tmpdir(`refused-${mode}`);
    const out = path.join(dir, 'out');
    const pid = procs.start(build('attrs_refused'), [mode], out);
    await waitFor(out, /^ready$/m);
    const img = path.join(dir, 'image');
    assert.throws(() => checkpointSync(pid, img), refusal);
    assert.equal(fs.existsSync(img), false, 'no image left behind');
    assertLeftRunning(pid);
    const seen = (fs.readFileSync(out, 'utf8').match(/^alive \d+$/gm) ?? []).length;
    await waitFor(out, new RegExp(`^alive ${seen + 1}$`, 'm'));
  });
}

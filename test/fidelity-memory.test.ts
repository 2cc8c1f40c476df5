// Fidelity of memory: VMA flags, copy-on-write layouts across a tree,
// mappings that cannot be read, and the special mappings a program moved.
// Each program sets its state, prints "ready", and checks itself after the
// restart; the test also reads the state from outside before and after.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, restartVerified, assertLeftRunning } from './harness';
import { checkpointSync, restartSync, loadImage } from '../src';
import { readVmas, readPagemap, readStatus, parseSmaps } from '../src/proc';
import { classifyVmas } from '../src/kinds/memory';
import { scanTree } from '../src/ptrace/freeze';

const procs = new Procs();
after(() => procs.cleanup());

/** Start NAME with ARGS in a fresh directory and wait for "ready". */
async function startReady(name: string, args: string[] = []): Promise<{ pid: number; dir: string; out: string }> {
  const dir = tmpdir(name);
  const out = path.join(dir, 'out');
  const pid = procs.start(build(name), args, out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  return { pid, dir, out };
}

/** Checkpoint with --kill, wait until it is gone, restart under the same pid. */
async function killRestart(pid: number, dir: string): Promise<{ pid: number; wait: () => Promise<unknown> }> {
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  for (const p of [pid]) await waitGone(p, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.equal(r.pid, pid, 'restored under its own pid');
  return r;
}

/** Frames at the same address in two processes (pagemap PFNs, as root). */
function sharedFrames(a: number, b: number): number {
  const bMaps = readVmas(b);
  let n = 0;
  for (const v of readVmas(a)) {
    if (v.path.startsWith('[v')) continue;
    for (const w of bMaps) {
      const lo = Math.max(v.start, w.start), hi = Math.min(v.end, w.end);
      if (lo >= hi) continue;
      const pa = readPagemap(a, lo, hi), pb = readPagemap(b, lo, hi);
      for (let i = 0; i < pa.length; i++) {
        const present = (x: bigint) => (x >> 63n) & 1n;
        const pfn = (x: bigint) => x & ((1n << 55n) - 1n);
        if (present(pa[i]) && present(pb[i]) && pfn(pa[i]) === pfn(pb[i])) n++;
      }
    }
  }
  return n;
}

test('copy-on-write layouts of a parent, child and grandchild keep every byte', async () => {
  const { pid, dir, out } = await startReady('fid_cow_layouts');
  const tree = scanTree(pid).map((p) => p.pid);
  assert.equal(tree.length, 3);
  const shared = [sharedFrames(tree[0], tree[1]), sharedFrames(tree[1], tree[2])];
  assert.ok(shared[0] > 100 && shared[1] > 100, 'parent, child and grandchild share frames');
  // Reading the pages must not unshare them in the live tree.
  checkpointSync(pid, path.join(dir, 'live'));
  assert.deepEqual([sharedFrames(tree[0], tree[1]), sharedFrames(tree[1], tree[2])], shared, 'a checkpoint keeps the sharing');
  const img = path.join(dir, 'image');
  const res = checkpointSync(pid, img, { kill: true });
  const image = loadImage(img);
  assert.ok(image.processes.slice(1).some((p) => p.vmas.some((v) => v.inherited?.length)), 'shared pages saved once');
  assert.ok(res.pageBytes > 0);
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  // Forked from their rebuilt parents, they share again what the layouts
  // left shared as forked (not the ranges split, moved or remapped).
  const now = scanTree(r.pid).map((p) => p.pid);
  const again = [sharedFrames(now[0], now[1]), sharedFrames(now[1], now[2])];
  assert.ok(again[0] > shared[0] / 2 && again[1] > shared[1] / 2, `shared frames after restart ${again} (before ${shared})`);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\ngrandchild ok\nchild ok\nparent ok\n');
});

/**
 * What smaps says of every mapping, minus the counters that legitimately
 * move (Rss, Pss, Referenced ...): range, protection, name, VmFlags, locked
 * size, and whether huge pages back it.
 */
function smapsState(pid: number): string[] {
  const out: string[] = [];
  let cur = '';
  let fields: Record<string, string> = {};
  const flush = () => {
    if (cur) out.push(`${cur} | ${fields.VmFlags} | locked ${fields.Locked} | thp ${fields.AnonHugePages !== '0 kB'}`);
  };
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+-[0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      flush();
      cur = `${head[1]} ${head[2]} ${head[3]}`;
      fields = {};
    } else {
      const kv = /^(\w+):\s+(.*)$/.exec(line);
      if (kv) fields[kv[1]] = kv[2].trim();
    }
  }
  flush();
  return out;
}

async function vmflagsRoundTrip(args: string[]): Promise<void> {
  const { pid, dir, out } = await startReady('fid_vmflags', args);
  const before = smapsState(pid);
  const locked = readStatus(pid).raw.VmLck;
  const ksm = (p: number) => /^ksm_merge_any: (\w+)$/m.exec(fs.readFileSync(`/proc/${p}/ksm_stat`, 'utf8'))![1];
  const merging = ksm(pid);
  assert.equal(merging, args.includes('ksm') ? 'yes' : 'no');
  for (const f of ['wf', 'dc', 'dd', 'hg', 'nh', 'mg', 'lo', 'lf', 'sr', 'rr', 'nr', 'gu', 'sl', 'dp']) {
    assert.ok(before.some((l) => l.split(' | ')[1].split(' ').includes(f)), `the program set ${f}`);
  }
  const r = await killRestart(pid, dir);
  assert.deepEqual(smapsState(r.pid), before);
  assert.equal(readStatus(r.pid).raw.VmLck, locked);
  assert.equal(ksm(r.pid), merging);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
}

// Large memory goes in by UFFDIO_COPY, which drops each copied page from a
// mapped image file (read again, it comes back from the file), never from
// an image read into memory (dropped there, it would read back as zeros).
test('one loaded image restarts twice, mapped from its file and read from an fd: every page right each time', async () => {
  const { pid, dir, out } = await startReady('memhog', ['8']);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  let verified = 0;
  for (const how of ['mapped', 'read'] as const) {
    const fd = how === 'read' ? fs.openSync(img, 'r') : undefined;
    const loaded = loadImage(fd ?? img);
    try {
      for (let round = 0; round < 2; round++) {
        const r = restartSync(loaded);
        procs.add(r.pid);
        process.kill(r.pid, 'SIGUSR1');
        assert.deepEqual(await r.wait(), { code: 0, signal: null }, `${how}, restart ${round + 1}`);
        verified++;
        assert.equal(fs.readFileSync(out, 'utf8').split('\n').filter((l) => l === 'verified').length, verified);
      }
    } finally {
      loaded.release();
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
});

test('VMA flags from madvise, mlock, mmap flags, guard pages and mseal come back identical', async () => {
  await vmflagsRoundTrip([]);
});

test('mlockall(MCL_FUTURE | MCL_ONFAULT) still locks new mappings after restart', async () => {
  await vmflagsRoundTrip(['future']);
});

test('KSM merging of all memory (PR_SET_MEMORY_MERGE), with one range unmerged, comes back', async () => {
  await vmflagsRoundTrip(['ksm']);
});

/** The special mappings of a process, as "name start-end". */
function specials(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => /\[(vdso|vvar|vvar_vclock)\]$/.test(l))
    .map((l) => `${l.split(/\s+/).pop()} ${l.split(' ')[0]}`);
}

const VDSO_CASES: Record<string, string> = {
  moved: 'a [vdso] the program moved is moved again after restart',
  unmapped: 'a [vdso] the program unmapped is unmapped again after restart',
  'unmapped-spin': 'a process without [vdso], stopped outside any system call, checkpoints and restarts',
};
for (const [mode, title] of Object.entries(VDSO_CASES)) {
  test(title, async () => {
    const { pid, dir, out } = await startReady('fid_vdso_moved', [mode]);
    const before = specials(pid);
    if (mode !== 'moved') assert.deepEqual(before, []);
    const r = await killRestart(pid, dir);
    assert.deepEqual(specials(r.pid), before);
    process.kill(r.pid, 'SIGUSR1');
    assert.deepEqual(await r.wait(), { code: 0, signal: null });
    assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
  });
}

/** A refused checkpoint: the named error, no image, the tree running untraced and unfrozen. */
async function refused(name: string, args: string[], why: RegExp): Promise<void> {
  const { pid, dir, out } = await startReady(name, args);
  const tree = scanTree(pid).map((p) => p.pid);
  const img = path.join(dir, 'image');
  assert.throws(() => checkpointSync(pid, img), why);
  assert.equal(fs.existsSync(img), false, 'no image left');
  assertLeftRunning(tree);
  const ticks = (t: string) => (t.match(/^tick /gm) ?? []).length;
  const seen = ticks(fs.readFileSync(out, 'utf8'));
  await waitFor(out, (t) => ticks(t) >= seen + 2);
}

test('a userfaultfd-registered range is refused by name; the target keeps running', async () => {
  await refused('fid_refuse_mem', ['uffd'], /pid \d+: vma [0-9a-f]+-[0-9a-f]+: a userfaultfd-registered range is not supported/);
});

test('a NUMA policy set with mbind on a range is refused by name, among a few VMAs or 200; the target keeps running', async () => {
  // A few: each VMA asked; 200, little memory: /proc/PID/numa_maps read first.
  for (const mode of ['mbind', 'mbind-many']) {
    await refused('fid_refuse_mem', [mode], /pid \d+: vma [0-9a-f]+-[0-9a-f]+ has NUMA memory policy "bind" \(set_mempolicy or mbind\): not supported/);
  }
});

test('two processes sharing one mm (clone CLONE_VM) are refused by name; both keep running', async () => {
  await refused('fid_refuse_mem', ['clonevm'], /pids \d+ and \d+: share one address space as separate processes \(CLONE_VM without CLONE_THREAD, vfork\)/);
});

test('mappings that cannot be read (past the end of a file, truncated memfd, PROT_NONE, guard pages) checkpoint and come back', async () => {
  const { pid, dir, out } = await startReady('fid_unreadable', ['data']);
  const before = smapsState(pid);
  const r = await killRestart(pid, dir);
  assert.deepEqual(smapsState(r.pid), before);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
});

test('16 MiB mappings mixing every kind of page (their pagemaps read ahead on a thread), and a 6 MiB one: only data pages saved, every page right, alone and shared copy-on-write with a child', async () => {
  const PAGES = 4096, LEN = PAGES * 4096;
  for (const mode of [[], ['fork']]) {
    const { pid, dir, out } = await startReady('fid_large_mix', ['data', ...mode]);
    const r = await killRestart(pid, dir);
    if (!mode.length) {
      // Written pages only: not the untouched, zero-page or file pages, nor the guards.
      const p = loadImage(path.join(dir, 'image')).process;
      const anon = p.vmas.find((v) => v.kind === 'anon' && v.end - v.start === LEN)!;
      const file = p.vmas.find((v) => v.kind === 'file' && v.end - v.start === LEN)!;
      assert.equal(anon.savedPages, 500 + 544 + 683, 'anon pages saved');
      assert.deepEqual(anon.guards, [{ addr: anon.start + 1500 * 4096, len: 4 * 4096 }]);
      assert.equal(file.savedPages, PAGES / 4, 'private copies of file pages saved');
      const small = p.vmas.find((v) => v.kind === 'anon' && v.end - v.start === 1536 * 4096)!;
      assert.equal(small.savedPages, 256 + 103, 'pages saved of the 6 MiB mapping');
    }
    process.kill(r.pid, 'SIGUSR1');
    assert.deepEqual(await r.wait(), { code: 0, signal: null });
    assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n', `fid_large_mix ${mode.join(' ')}`);
  }
});

test('/proc files of tree members, held open, name the same processes after restart', async () => {
  const { pid, dir, out } = await startReady('fid_procfiles');
  const live = path.join(dir, 'live');
  checkpointSync(pid, live);
  // Under other pids the paths would lead to other processes.
  assert.throws(() => restartSync(live, { pidNs: true }), /fd \d+ is \/proc\/\d+\/\w+, which would name another process inside a new pid namespace/);
  const r = await killRestart(pid, dir);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nchild ok\nparent ok\n');
});

test('a /proc file of a process outside the tree is refused by name; the tree keeps running', async () => {
  await refused('fid_procfiles', ['outside'], /fd \d+ of pid \d+: \/proc\/1\/status belongs to pid 1, which is outside the tree/);
});

test('FIFOs opened read-write, read-only and write-only in one process keep their flags, bytes and ends', async () => {
  const { pid, dir, out } = await startReady('fid_fifo');
  const r = await killRestart(pid, dir);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
});

for (const mode of ['inside', 'outside']) {
  test(`a chrooted process with its cwd ${mode} the new root keeps both`, async () => {
    const { pid, dir, out } = await startReady('fid_chroot', [mode]);
    const links = (p: number) => ['root', 'cwd'].map((l) => fs.readlinkSync(`/proc/${p}/${l}`));
    const before = links(pid);
    assert.equal(before[0], path.join(fs.realpathSync(dir), 'jail'));
    const r = await killRestart(pid, dir);
    assert.deepEqual(links(r.pid), before);
    process.kill(r.pid, 'SIGUSR1');
    assert.deepEqual(await r.wait(), { code: 0, signal: null });
    assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
  });
}

test('unit: every VmFlag is known; unknown ones, device kinds and protection keys are refused by name', () => {
  const vma = (vmFlags: string[], protectionKey = 0) => ({
    start: 0x10000, end: 0x20000, prot: { read: true, write: true, exec: false }, shared: false, offset: 0,
    dev: '00:00', inode: 0, path: '', deleted: false, vmFlags, protectionKey,
  });
  const all = ['rd', 'wr', 'ex', 'mr', 'mw', 'me', 'gd', 'ac', 'nr', 'dp', 'dd', 'dc', 'wf', 'hg', 'nh', 'mg', 'sr', 'rr', 'lo', 'lf', 'gu', 'sl', 'sd'];
  assert.equal(classifyVmas([vma(all)], 42).length, 1);
  assert.throws(() => classifyVmas([vma(['rd', 'zz'])], 42), /pid 42: vma 10000-20000: a range with VmFlag "zz" \(unknown to stasis\) is not supported/);
  assert.throws(() => classifyVmas([vma(['rd', 'ht'])], 42), /a hugetlbfs mapping is not supported/);
  assert.throws(() => classifyVmas([vma(['rd', 'ss'])], 42), /a shadow stack is not supported/);
  assert.throws(() => classifyVmas([vma(['rd'], 3)], 42), /memory protection key 3 is not supported; pkey_mprotect it back to key 0/);
  assert.throws(() => classifyVmas([{ ...vma(['rd']), path: '[anon:cache]' }], 42), /named anonymous memory is not supported/);
});

test('unit: smaps ProtectionKey is parsed', () => {
  const text = '7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \nRss:                   4 kB\nProtectionKey:         5\nVmFlags: rd wr mr mw me ac \n';
  assert.equal(parseSmaps(text)[0].protectionKey, 5);
});

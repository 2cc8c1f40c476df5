// Fidelity of memory: VMA flags, copy-on-write layouts across a tree,
// mappings that cannot be read, and the special mappings a program moved.
// Each program sets its state, prints "ready", and checks itself after the
// restart; the test also reads the state from outside before and after.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir } from './harness';
import { checkpointSync, restartSync, loadImage } from '../src';
import { readVmas, readPagemap, readStatus, readStat } from '../src/proc';
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
  const r = restartSync(img);
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
  const r = restartSync(img);
  procs.addTree(r.pid);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\ngrandchild ok\nchild ok\nparent ok\n');
});

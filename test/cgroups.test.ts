// Control group membership: a process in its own cgroup comes back in it;
// a saved cgroup missing at restart is refused before any process exists.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir } from './harness';
import { checkpointSync, restartSync } from '../src';

const procs = new Procs();
const made: string[] = [];
after(() => {
  procs.cleanup();
  for (const d of made) try { fs.rmdirSync(d); } catch { /* still busy: left for inspection */ }
});

function pidsCgroupOf(pid: number): string {
  return /^\d+:pids:(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8'))![1];
}

function makeCgroup(tag: string): { dir: string; name: string } {
  const name = `/stasis-test-${tag}-${process.pid}`;
  const dir = path.join('/sys/fs/cgroup/pids', name);
  fs.mkdirSync(dir);
  made.push(dir);
  return { dir, name };
}

test('a process in its own cgroup is restarted in that cgroup', async () => {
  const prog = build('counter');
  const dir = tmpdir('cgroup');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const cg = makeCgroup('in');
  const pid = procs.start(prog, [], out);
  fs.writeFileSync(path.join(cg.dir, 'cgroup.procs'), String(pid));
  await waitFor(out, /^counter: 1$/m);
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const r = restartSync(img);
  procs.add(r.pid);
  assert.equal(pidsCgroupOf(r.pid), cg.name);
  assert.notEqual(pidsCgroupOf(process.pid), cg.name);
  const seen = (fs.readFileSync(out, 'utf8').match(/^counter:/gm) ?? []).length;
  await waitFor(out, new RegExp(`^counter: ${seen + 1}$`, 'm'));
});

test('a saved cgroup that does not exist at restart is refused by name, nothing created', async () => {
  const prog = build('counter');
  const dir = tmpdir('cgroup-gone');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const cg = makeCgroup('gone');
  const pid = procs.start(prog, [], out);
  fs.writeFileSync(path.join(cg.dir, 'cgroup.procs'), String(pid));
  await waitFor(out, /^counter: 1$/m);
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  fs.rmdirSync(cg.dir);
  assert.throws(() => restartSync(img), new RegExp(`pid ${pid}: pids cgroup ${cg.name} does not exist here; create it \\(mkdir ${cg.dir}\\) and retry`));
  assert.equal(fs.existsSync(`/proc/${pid}`), false, 'no process at the saved pid');
});

// `npm run demo`: start a counter, checkpoint it, kill it, restart it from
// the image and watch it carry on from where it stopped.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkpointSync, restartSync, StasisError } from '../src';
import { posixSpawn, waitpidSync, __WALL } from '../src/sys/libc';

const ROOT = path.resolve(__dirname, '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Print new lines of the counter's log as they appear, until one matches. */
async function follow(log: string, from: number, tag: string, until: RegExp): Promise<number> {
  let seen = from;
  for (;;) {
    const text = fs.readFileSync(log, 'utf8');
    const lines = text.split('\n').slice(0, -1);
    for (; seen < lines.length; seen++) {
      console.log(`  ${tag} ${lines[seen]}`);
      if (until.test(lines[seen])) return seen + 1;
    }
    await sleep(20);
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stasis-demo-'));
  const prog = path.join(dir, 'counter');
  execFileSync('gcc', ['-O1', '-o', prog, path.join(ROOT, 'test', 'programs', 'counter.c')]);
  const log = path.join(dir, 'counter.log');
  const image = path.join(dir, 'counter.img');
  const out = fs.openSync(log, 'a');
  const nul = fs.openSync('/dev/null', 'r');
  const pid = posixSpawn(prog, [prog], { fds: { 0: nul, 1: out, 2: out }, setsid: true, closeFrom: 3 });
  fs.closeSync(out);
  fs.closeSync(nul);
  let restored = 0;
  try {
    console.log(`started a counter, pid ${pid}, printing to ${log}`);
    let seen = await follow(log, 0, '[original]', /counter: 5$/);
    const r = checkpointSync(pid, image, { kill: true });
    try {
      waitpidSync(pid, __WALL);
    } catch { /* stasis, its tracer, already collected it */ }
    console.log(`checkpointed pid ${pid} into ${image}: ${(r.imageBytes / 1024).toFixed(0)} KiB, ${r.vmas} VMAs, ${r.fds} fds, frozen for ${r.frozenMs.toFixed(1)} ms`);
    console.log(`killed pid ${pid}; the counter is gone`);
    await sleep(1000);
    console.log('one second later, restarting it from the image...');
    // verify: read it back before it runs and compare with the image (restart --verify).
    const back = restartSync(image, { verify: true });
    restored = back.pid;
    console.log(`restored as pid ${back.pid}, checked field by field against the image; it carries on where it stopped:`);
    seen = await follow(log, seen, '[restored]', /counter: 10$/);
    process.kill(back.pid, 'SIGTERM');
    await back.wait();
    restored = 0;
    console.log('done: the restored counter went on from 6 without losing a step.');
    console.log(`(try it by hand: ./bin/stasis checkpoint PID -o img; ./bin/stasis restart --verify img)`);
  } finally {
    for (const p of [pid, restored]) {
      if (!p) continue;
      try { process.kill(p, 'SIGKILL'); } catch { /* ended */ }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`demo failed: ${e instanceof StasisError ? e.message : (e as Error).stack}`);
  process.exit(1);
});

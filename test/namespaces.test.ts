// Namespaces are not saved: a process in any namespace other than stasis's
// own is refused by name, and left running as it was.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, tmpdir, assertLeftRunning } from './harness';
import { checkpointSync } from '../src';

const procs = new Procs();
after(() => procs.cleanup());

for (const [flag, kind] of [['--uts', 'uts'], ['--ipc', 'ipc'], ['--mount', 'mnt']] as const) {
  test(`a process in its own ${kind} namespace is refused by name and keeps running untraced`, async () => {
    const prog = build('counter');
    const dir = tmpdir(`ns-${kind}`);
    const out = path.join(dir, 'out'), img = path.join(dir, 'image');
    const pid = procs.start('/usr/bin/unshare', [flag, prog], out);
    await waitFor(out, /^counter: 1$/m);
    assert.equal(fs.readlinkSync(`/proc/${pid}/exe`), prog, 'unshare has exec-ed the counter');
    assert.throws(() => checkpointSync(pid, img), new RegExp(`^UnsupportedError: pid ${pid}: it is in another ${kind} namespace \\(${kind}:\\[\\d+\\]; stasis runs in ${kind}:\\[\\d+\\]\\)`));
    assert.equal(fs.existsSync(img), false);
    assertLeftRunning(pid);
    const seen = (fs.readFileSync(out, 'utf8').match(/^counter:/gm) ?? []).length;
    await waitFor(out, new RegExp(`^counter: ${seen + 1}$`, 'm'));
  });
}

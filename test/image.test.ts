// Unit tests of the image stream codec (the end-to-end tests cover real images).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { tmpdir, seededRandom } from './harness';
import { ImageWriter, readImage, readImageBuffer, RecordType, encodePagesHeader, decodePages, HEADER_SIZE, RECORD_HEADER_SIZE, FORMAT_VERSION } from '../src/image/stream';
import { crc32c, crc32cPortable, crc32cMany } from '../src/image/crc32c';
import { ImageError } from '../src/sys/errno';
import { writeU64 } from '../src/sys/x86';

function writeImage(file: string, fill: (w: ImageWriter) => void): Buffer {
  const fd = fs.openSync(file, 'w');
  const w = new ImageWriter(fd);
  fill(w);
  w.end();
  fs.closeSync(fd);
  return fs.readFileSync(file);
}

function read(file: string, bytes: Buffer) {
  fs.writeFileSync(file, bytes);
  const fd = fs.openSync(file, 'r');
  try {
    return readImage(fd, 'test image');
  } finally {
    fs.closeSync(fd);
  }
}

test('crc32c matches the standard check value', () => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  assert.equal(crc32c(Buffer.from('56789'), crc32c(Buffer.from('1234'))), 0xe3069283);
});

test('the generated crc32c code agrees with the portable one on every length and alignment', () => {
  const data = Buffer.alloc(4096 + 64);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
  for (let off = 0; off < 9; off++) {
    for (const len of [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096]) {
      const part = data.subarray(off, off + len);
      assert.equal(crc32c(part, 0x1234), crc32cPortable(part, 0x1234), `offset ${off}, length ${len}`);
    }
  }
});

test('crc32c of large buffers (three interleaved chains, joined) agrees with the portable one', () => {
  const data = Buffer.alloc((1 << 20) + 64);
  let x = 0x9e3779b9;
  for (let i = 0; i < data.length; i++) {
    x = (x ^ (x << 13)) >>> 0; x = (x ^ (x >>> 17)) >>> 0; x = (x ^ (x << 5)) >>> 0;
    data[i] = x & 0xff;
  }
  // Around the size where the chains start, thirds that are and are not whole words, and a tail.
  for (const len of [3 * 4096 - 1, 3 * 4096, 3 * 4096 + 1, 3 * 4096 + 23, 3 * 4096 + 24, 65536 + 5, 1 << 20]) {
    for (const off of [0, 1, 5]) {
      const part = data.subarray(off, off + len);
      assert.equal(crc32c(part, 0xdeadbeef), crc32cPortable(part, 0xdeadbeef), `offset ${off}, length ${len}`);
      assert.equal(crc32c(part), crc32cPortable(part), `offset ${off}, length ${len}, from 0`);
    }
  }
  // Continuing a CRC across two large parts is the CRC of the whole.
  const a = data.subarray(0, 300000), b = data.subarray(300000, 700001);
  assert.equal(crc32c(b, crc32c(a)), crc32cPortable(data.subarray(0, 700001)));
});

test('crc32cMany (large buffers shared with a second thread) agrees with crc32c for each buffer', () => {
  const bufs = [1 << 20, 3, 5 << 20, 12 * 1024, (7 << 20) + 13, 4096, 6 << 20, 100].map((n, k) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i += 61) b[i] = (i * 7 + k) & 0xff;
    return b;
  });
  assert.deepEqual(crc32cMany(bufs), bufs.map((b) => crc32c(b)));
});

test('a flipped byte in any of many large records is found (their checksums are taken on two threads)', () => {
  const file = path.join(tmpdir('image-many'), 'image');
  const sizes = [4 << 20, 4 << 20, 3 << 20, 4 << 20, (2 << 20) + 8, 4 << 20];
  const good = writeImage(file, (w) => sizes.forEach((n, k) => w.record(RecordType.Pages, [Buffer.alloc(n, k + 1)])));
  assert.equal(readImageBuffer(good, 'test image').length, sizes.length);
  let at = 16;
  sizes.forEach((n) => {
    const bad = Buffer.from(good);
    bad[at + RECORD_HEADER_SIZE + Math.floor(n / 2)] ^= 0x40;
    assert.throws(() => readImageBuffer(bad, 'test image'), (e: Error) => e instanceof ImageError && e.message === `test image is corrupted: Pages record at byte ${at} (${n} bytes) fails its checksum`);
    at += RECORD_HEADER_SIZE + n;
  });
});

test('records round-trip in order with their payloads', () => {
  const dir = tmpdir('codec');
  const data = Buffer.alloc(3 * 4096, 7);
  const bytes = writeImage(path.join(dir, 'a'), (w) => {
    w.json(RecordType.Process, { hello: 'world' });
    w.record(RecordType.Pages, [encodePagesHeader([{ addr: 0x1000, len: 4096 }, { addr: 0x5000, len: 8192 }], 42), data]);
  });
  const recs = read(path.join(dir, 'b'), bytes);
  assert.equal(recs.length, 2);
  assert.deepEqual(JSON.parse(recs[0].payload.toString()), { hello: 'world' });
  const pages = decodePages(recs[1].payload, 'test');
  assert.deepEqual(pages.runs, [{ addr: 0x1000, len: 4096 }, { addr: 0x5000, len: 8192 }]);
  assert.ok(pages.data.equals(data));
  assert.equal(pages.pid, 42);
  assert.equal(bytes.readUInt32LE(8), FORMAT_VERSION);
});

test('every truncation point and every flipped byte is detected', () => {
  const dir = tmpdir('codec');
  const bytes = writeImage(path.join(dir, 'a'), (w) => {
    w.json(RecordType.Process, { n: 1 });
    w.record(RecordType.Pages, [encodePagesHeader([{ addr: 0x1000, len: 64 }], 42), Buffer.alloc(64, 3)]);
  });
  for (let cut = 0; cut < bytes.length; cut++) {
    assert.throws(() => read(path.join(dir, 'b'), bytes.subarray(0, cut)), ImageError, `cut at ${cut}`);
  }
  for (let i = 0; i < bytes.length; i++) {
    const bad = Buffer.from(bytes);
    bad[i] ^= 0x01;
    assert.throws(() => read(path.join(dir, 'b'), bad), ImageError, `flip at ${i}`);
  }
});

test('a newer or older format version is refused with what to do', () => {
  const dir = tmpdir('codec');
  const bytes = writeImage(path.join(dir, 'a'), () => {});
  const bumped = Buffer.from(bytes);
  bumped.writeUInt32LE(FORMAT_VERSION + 1, 8);
  bumped.writeUInt32LE(crc32c(bumped.subarray(0, 12)), 12);
  assert.throws(() => read(path.join(dir, 'b'), bumped), new RegExp(`format version ${FORMAT_VERSION + 1}.*upgrade stasis`));
  const first = Buffer.from(bytes);
  first.writeUInt32LE(1, 8);
  first.writeUInt32LE(crc32c(first.subarray(0, 12)), 12);
  assert.throws(() => read(path.join(dir, 'c'), first), /format version 1; this stasis reads version 2 \(it lacks state this stasis saves and restores, which no converter can supply: checkpoint the program again\)/);
  assert.equal(HEADER_SIZE + RECORD_HEADER_SIZE < bytes.length, true);
});

test('a record claiming an absurd length is refused without allocating it', () => {
  const dir = tmpdir('codec');
  const bytes = writeImage(path.join(dir, 'a'), (w) => w.json(RecordType.Process, {}));
  const bad = Buffer.from(bytes);
  bad.writeBigUInt64LE(1n << 40n, HEADER_SIZE + 8);
  bad.writeUInt32LE(crc32c(bad.subarray(HEADER_SIZE, HEADER_SIZE + 20)), HEADER_SIZE + 20);
  assert.throws(() => read(path.join(dir, 'b'), bad), /claims/);
});

test('writeU64 (batch code, gadget slots, registers) writes what writeBigUInt64LE writes', () => {
  const values: Array<number | bigint> = [0, 1, 0xff, 0x100, 0xffffffff, 0x100000000, 0x7fff_ffff_ffff, Number.MAX_SAFE_INTEGER, -1, -4096, 2n ** 64n - 1n, 2n ** 63n, 0x1234_5678_9abc_def0n];
  const rand = seededRandom(64);
  for (let i = 0; i < 200; i++) values.push(Math.floor(rand() * Number.MAX_SAFE_INTEGER));
  for (const v of values) {
    const got = Buffer.alloc(12, 0xaa), want = Buffer.alloc(12, 0xaa);
    writeU64(got, 2, v);
    want.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), 2);
    assert.deepEqual(got, want, `value ${v}`);
  }
});

test('the validators generated from the schema are used, and agree with zod on what they accept and return', () => {
  // Built by npm run build (build/gen-validators.js); without them every record would go through zod.
  const gen = require('../src/image/validators') as { INVALID: symbol } & Record<string, (v: unknown) => unknown>;
  const { EndRecord, PagesHeader } = require('../src/image/schema') as typeof import('../src/image/schema');
  const rng = seededRandom(7);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng() * xs.length)];
  const numbers = [0, 1, -1, 4096, 4095, 8192, 2 ** 47, 2 ** 47 + 4096, 1.5, 2 ** 53, 1 << 30, (1 << 30) + 1, 4194304, 4194305];
  let accepted = 0;
  for (let i = 0; i < 2000; i++) {
    const end: Record<string, unknown> = { records: pick(numbers), pageBytes: pick([...numbers, undefined, '1', null]) };
    if (rng() < 0.3) end.extra = 1;
    if (rng() < 0.2) delete end.records;
    const pages = { pid: pick(numbers), runs: Array.from({ length: Math.floor(rng() * 3) }, () => ({ addr: pick(numbers), len: pick(numbers), ...(rng() < 0.2 ? { x: 1 } : {}) })) };
    for (const [name, schema, value] of [['EndRecord', EndRecord, end], ['PagesHeader', PagesHeader, pages]] as const) {
      const fast = gen[name](value);
      const slow = schema.safeParse(value);
      assert.equal(fast !== gen.INVALID, slow.success, `${name} ${JSON.stringify(value)}`);
      if (slow.success) {
        assert.deepEqual(fast, slow.data, 'the same value, unknown keys left out');
        accepted++;
      }
    }
  }
  assert.ok(accepted > 100 && accepted < 3900, `both answers occur (${accepted} accepted)`);
});

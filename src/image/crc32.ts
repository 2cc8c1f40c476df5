// CRC-32 (the zlib/IEEE polynomial). zlib's implementation runs at several
// GB/s, far beyond a table-driven loop in JS; Node 20 has no zlib.crc32.
import koffi from 'koffi';

const zlib = koffi.load('libz.so.1');
const zcrc32 = zlib.func('unsigned long crc32(unsigned long crc, void *buf, unsigned int len)');

const CHUNK = 1 << 30;

export function crc32(buf: Buffer, crc = 0): number {
  for (let off = 0; off < buf.length; off += CHUNK) {
    const part = buf.subarray(off, Math.min(buf.length, off + CHUNK));
    crc = Number(zcrc32(crc, part, part.length));
  }
  return crc >>> 0;
}

/** The same, on a libuv worker thread (for overlapping with other work). */
export function crc32Async(buf: Buffer, crc = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    if (buf.length > CHUNK) return resolve(crc32(buf, crc));
    zcrc32.async(crc, buf, buf.length, (err: unknown, r: number | bigint) => (err ? reject(err) : resolve(Number(r) >>> 0)));
  });
}

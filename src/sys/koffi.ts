// koffi, the FFI stasis binds libc with. On linux-x64 its native module is
// required straight from its platform package: koffi's own index finds it
// by reading node's ELF header to tell glibc from musl, ~3 ms of every
// command. stasis needs glibc anyway (libc.so.6), and koffi pins that
// package to its own version; anywhere else, or if the package is laid out
// otherwise, koffi's index decides.
import type Koffi from 'koffi';

function load(): typeof Koffi {
  if (process.platform === 'linux' && process.arch === 'x64') {
    try {
      return require('@koromix/koffi-linux-x64/linux_x64/koffi.node') as typeof Koffi;
    } catch { /* koffi's index below */ }
  }
  return require('koffi') as typeof Koffi;
}

const koffi = load();
export default koffi;

// The stasis library API.
export { checkpoint, checkpointSync } from './checkpoint';
export type { CheckpointOptions, CheckpointResult } from './checkpoint';
export { restart, restartSync, loadImage } from './restart';
export type { RestartOptions, Restarted, ExitInfo, LoadedImage } from './restart';
export type { ImageProcess } from './image/schema';
export { StasisError, SyscallError, UnsupportedError, ImageError } from './sys/errno';

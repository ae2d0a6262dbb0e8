/**
 * Where the daemon's log lines go: stderr, without ever letting it stop the agent. A full disk,
 * /dev/full, a reader that went away (EPIPE) or one that stopped reading must not end the process
 * or hold up a probe, so lines are written in order from a bounded queue, off the event loop;
 * a line that cannot be written is dropped and counted, and the next line that can be written
 * says how many were lost and why.
 */
import { write as fsWrite, writeSync } from "node:fs";

export interface LogSink {
  /** Queues one complete line; drops it when the queue is full. Never throws. */
  write(line: string): void;
  /** Writes what is still queued, synchronously, as far as it can: for the moment before exit. */
  flushSync(): void;
}

export interface LogSinkOptions {
  readonly fd: number;
  /** The line that reports `count` lost lines, the last for the error `code`. */
  readonly dropNote: (count: number, code: string) => string;
  /** Bytes queued at most; a reader that stalls costs no more memory than this. */
  readonly maxQueuedBytes?: number;
  /** How long to wait before trying again when the descriptor would block. */
  readonly retryMs?: number;
  readonly write?: typeof fsWrite;
  readonly writeSync?: typeof writeSync;
}

/** About a thousand log lines. */
export const MAX_QUEUED_LOG_BYTES = 256 * 1024;
const RETRY_MS = 50;

export function createLogSink({
  fd,
  dropNote,
  maxQueuedBytes = MAX_QUEUED_LOG_BYTES,
  retryMs = RETRY_MS,
  write = fsWrite,
  writeSync: writeNow = writeSync,
}: LogSinkOptions): LogSink {
  const queue: Buffer[] = [];
  let queuedBytes = 0;
  // The line being written, and how much of it has gone out.
  let current: Buffer | undefined;
  let offset = 0;
  // A write of `current` is in the kernel's or the thread pool's hands now.
  let inFlight = false;
  let dropped = 0;
  let lastCode = "";

  const next = (): void => {
    if (current !== undefined) return;
    const line = queue.shift();
    if (line === undefined) return;
    queuedBytes -= line.length;
    if (dropped > 0) {
      current = Buffer.concat([Buffer.from(dropNote(dropped, lastCode)), line]);
      dropped = 0;
    } else {
      current = line;
    }
    offset = 0;
    writeCurrent();
  };

  const writeCurrent = (): void => {
    const line = current;
    if (line === undefined) return;
    inFlight = true;
    write(fd, line, offset, line.length - offset, null, (err, written) => {
      inFlight = false;
      if (err) {
        if (err.code === "EAGAIN") {
          setTimeout(writeCurrent, retryMs).unref();
          return;
        }
        // This line is lost; whatever of it went out is followed by the next one's start.
        dropped++;
        lastCode = err.code ?? "EIO";
        current = undefined;
        next();
        return;
      }
      offset += written;
      if (offset < line.length) return writeCurrent();
      current = undefined;
      next();
    });
  };

  return {
    write(line) {
      const bytes = Buffer.from(line);
      if (queuedBytes + bytes.length > maxQueuedBytes) {
        dropped++;
        lastCode = "the log reader is not keeping up";
        return;
      }
      queue.push(bytes);
      queuedBytes += bytes.length;
      next();
    },
    flushSync() {
      // A line already being written lands by itself; one waiting to be retried goes now.
      const waiting = current !== undefined && !inFlight ? [current.subarray(offset)] : [];
      const rest = [...waiting, ...queue.splice(0)];
      queuedBytes = 0;
      try {
        for (const line of rest) {
          for (let done = 0; done < line.length; ) done += writeNow(fd, line, done);
        }
      } catch {
        // Nothing more can be said: the process is about to exit.
      }
    },
  };
}

/**
 * Where the daemon's log lines go: stderr, without ever letting it stop the agent. A full disk,
 * /dev/full, a reader that went away (EPIPE) or one that stopped reading must not end the process,
 * hold up a probe or keep it from exiting, so lines are written in order from a bounded queue,
 * off the event loop; a line that cannot be written is dropped and counted, and the next line
 * that can be written says how many were lost and why.
 *
 * A pipe or a socket (the journal's stream) stalls when its reader does: lines go to it through a
 * non-blocking stream, so no thread is ever left blocked in write(). Node's exit waits for every
 * thread of its pool, so one write stuck there would keep a stopping agent alive for ever.
 */
import { write as fsWrite } from "node:fs";

export interface LogSink {
  /** Queues one complete line; drops it when the queue is full. Never throws. */
  write(line: string): void;
  /**
   * Resolves once every queued line is written (and a last count of lost lines, if any), or after
   * `timeoutMs`, whichever comes first: for the moment before exit, which a stalled reader must
   * not hold up.
   */
  drain(timeoutMs: number): Promise<void>;
}

/** A non-blocking stream on the descriptor (Node's own for a pipe or a socket). */
export interface LogStream {
  write(chunk: Uint8Array, callback: (err?: Error | null) => void): boolean;
}

export interface LogSinkOptions {
  readonly fd: number;
  /** Writes through this stream instead of fs.write() on `fd`: for a pipe or a socket. */
  readonly stream?: LogStream;
  /** The line that reports `count` lost lines, the last for the error `code`. */
  readonly dropNote: (count: number, code: string) => string;
  /** Bytes queued at most; a reader that stalls costs no more memory than this. */
  readonly maxQueuedBytes?: number;
  /** How long to wait before trying again when the descriptor would block. */
  readonly retryMs?: number;
  readonly write?: typeof fsWrite;
}

/** About a thousand log lines. */
export const MAX_QUEUED_LOG_BYTES = 256 * 1024;
const RETRY_MS = 50;

/**
 * A closure over the queue and the line being written; its functions (next, carry, writeCurrent,
 * write, flushSync) each read in a screen.
 */
export function createLogSink({
  fd,
  dropNote,
  maxQueuedBytes = MAX_QUEUED_LOG_BYTES,
  retryMs = RETRY_MS,
  write = fsWrite,
  stream,
}: LogSinkOptions): LogSink {
  const put = stream === undefined ? fdWriter(fd, write) : streamWriter(stream);
  // Each line with the number of lines lost just before it, which it reports first.
  const queue: { line: Buffer; lostBefore: number }[] = [];
  let queuedBytes = 0;
  // Lines lost since the last one queued: the next line queued reports them.
  let lost = 0;
  let lastCode = "";
  // The bytes being written (a line, after its report of lost lines), and how far they got.
  let current: { bytes: Buffer; lines: number } | undefined;
  let offset = 0;
  // Told when the queue is empty and nothing is being written.
  const idle: (() => void)[] = [];

  const next = (): void => {
    if (current !== undefined) return;
    const entry = queue.shift();
    if (entry === undefined) {
      for (const resolve of idle.splice(0)) resolve();
      return;
    }
    queuedBytes -= entry.line.length;
    const note = entry.lostBefore > 0 ? [Buffer.from(dropNote(entry.lostBefore, lastCode))] : [];
    current = { bytes: Buffer.concat([...note, entry.line]), lines: entry.lostBefore + 1 };
    offset = 0;
    writeCurrent();
  };

  /** `count` more lines lost before whatever is written next. */
  const carry = (count: number): void => {
    const first = queue[0];
    if (first === undefined) lost += count;
    else first.lostBefore += count;
  };

  const writeCurrent = (): void => {
    const { bytes, lines } = current ?? { bytes: undefined, lines: 0 };
    if (bytes === undefined) return;
    put(bytes.subarray(offset), (err, written) => {
      if (err) {
        if (err.code === "EAGAIN") {
          setTimeout(writeCurrent, retryMs).unref();
          return;
        }
        // The line, and the report before it, are lost; whatever of it went out stays torn.
        lastCode = err.code ?? "EIO";
        current = undefined;
        carry(lines);
        next();
        return;
      }
      offset += written;
      if (offset < bytes.length) return writeCurrent();
      current = undefined;
      next();
    });
  };

  return {
    write(line) {
      const bytes = Buffer.from(line);
      if (queuedBytes + bytes.length > maxQueuedBytes) {
        lost++;
        lastCode = "the log reader is not keeping up";
        return;
      }
      queue.push({ line: bytes, lostBefore: lost });
      lost = 0;
      queuedBytes += bytes.length;
      next();
    },
    drain(timeoutMs) {
      // Lines lost with nothing written after them are counted now, or never.
      if (lost > 0) {
        queue.push({ line: Buffer.alloc(0), lostBefore: lost });
        lost = 0;
        next();
      }
      if (current === undefined && queue.length === 0) return Promise.resolve();
      return new Promise((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        idle.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

type Done = (err: NodeJS.ErrnoException | null, written: number) => void;

/** fs.write() on a thread of Node's pool: for a file, which never waits for a reader. */
function fdWriter(fd: number, write: typeof fsWrite) {
  return (bytes: Buffer, done: Done): void => {
    write(fd, bytes, 0, bytes.length, null, done);
  };
}

/** Written on the event loop, as the descriptor is ready; a stalled reader holds no thread. */
function streamWriter(stream: LogStream) {
  return (bytes: Buffer, done: Done): void => {
    try {
      stream.write(bytes, (err) => done(err ?? null, err ? 0 : bytes.length));
    } catch (err) {
      done(err as NodeJS.ErrnoException, 0);
    }
  };
}

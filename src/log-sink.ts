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

/** The queue and the line being written, kept by the functions below. */
export function createLogSink({
  fd,
  dropNote,
  maxQueuedBytes = MAX_QUEUED_LOG_BYTES,
  retryMs = RETRY_MS,
  write = fsWrite,
  stream,
}: LogSinkOptions): LogSink {
  const sink: Sink = {
    put: stream === undefined ? fdWriter(fd, write) : streamWriter(stream),
    dropNote,
    maxQueuedBytes,
    retryMs,
    queue: [],
    queuedBytes: 0,
    lost: 0,
    lastCode: "",
    current: undefined,
    offset: 0,
    idle: [],
  };
  return {
    write: (line) => queueLine(sink, line),
    drain: (timeoutMs) => drain(sink, timeoutMs),
  };
}

interface Sink {
  readonly put: (bytes: Buffer, done: Done) => void;
  readonly dropNote: LogSinkOptions["dropNote"];
  readonly maxQueuedBytes: number;
  readonly retryMs: number;
  // Each line with the number of lines lost just before it, which it reports first.
  readonly queue: { line: Buffer; lostBefore: number }[];
  queuedBytes: number;
  // Lines lost since the last one queued: the next line queued reports them.
  lost: number;
  lastCode: string;
  // The bytes being written (a line, after its report of lost lines), and how far they got.
  current: { bytes: Buffer; lines: number } | undefined;
  offset: number;
  // Told when the queue is empty and nothing is being written.
  readonly idle: (() => void)[];
}

function queueLine(sink: Sink, line: string): void {
  const bytes = Buffer.from(line);
  if (sink.queuedBytes + bytes.length > sink.maxQueuedBytes) {
    sink.lost++;
    sink.lastCode = "the log reader is not keeping up";
    return;
  }
  sink.queue.push({ line: bytes, lostBefore: sink.lost });
  sink.lost = 0;
  sink.queuedBytes += bytes.length;
  next(sink);
}

function drain(sink: Sink, timeoutMs: number): Promise<void> {
  // Lines lost with nothing written after them are counted now, or never.
  if (sink.lost > 0) {
    sink.queue.push({ line: Buffer.alloc(0), lostBefore: sink.lost });
    sink.lost = 0;
    next(sink);
  }
  if (sink.current === undefined && sink.queue.length === 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    sink.idle.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function next(sink: Sink): void {
  if (sink.current !== undefined) return;
  const entry = sink.queue.shift();
  if (entry === undefined) {
    for (const resolve of sink.idle.splice(0)) resolve();
    return;
  }
  sink.queuedBytes -= entry.line.length;
  const note =
    entry.lostBefore > 0 ? [Buffer.from(sink.dropNote(entry.lostBefore, sink.lastCode))] : [];
  sink.current = { bytes: Buffer.concat([...note, entry.line]), lines: entry.lostBefore + 1 };
  sink.offset = 0;
  writeCurrent(sink);
}

/** `count` more lines lost before whatever is written next. */
function carry(sink: Sink, count: number): void {
  const first = sink.queue[0];
  if (first === undefined) sink.lost += count;
  else first.lostBefore += count;
}

function writeCurrent(sink: Sink): void {
  const { bytes, lines } = sink.current ?? { bytes: undefined, lines: 0 };
  if (bytes === undefined) return;
  sink.put(bytes.subarray(sink.offset), (err, written) => {
    if (err) {
      if (err.code === "EAGAIN") {
        setTimeout(writeCurrent, sink.retryMs, sink).unref();
        return;
      }
      // The line, and the report before it, are lost; whatever of it went out stays torn.
      sink.lastCode = err.code ?? "EIO";
      sink.current = undefined;
      carry(sink, lines);
      next(sink);
      return;
    }
    sink.offset += written;
    if (sink.offset < bytes.length) return writeCurrent(sink);
    sink.current = undefined;
    next(sink);
  });
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

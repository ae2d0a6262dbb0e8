/**
 * A client's input held until it makes whole lines. Chunks are kept as they came and each byte is
 * looked at once for the line end and copied once into its line: a line sent a byte at a time
 * costs what it costs sent at once, not its length squared.
 */
const NEWLINE = 0x0a;

export class LineBuffer {
  /** The chunks held; those before `head` are taken (dropped from the array now and then). */
  private chunks: Buffer[] = [];
  private head = 0;
  private held = 0;
  /** Where the first line end is in what is held; -1 when none is. */
  private lineEnd = -1;
  /** The chunk, and the byte in it, from which no line end has been looked for yet. */
  private scanChunk = 0;
  private scanFrom = 0;
  private scanBase = 0;

  /** How many bytes are held. */
  get length(): number {
    return this.held;
  }

  /** Where the first line end is, counted from the first byte held; -1 when none is held. */
  get firstLineEnd(): number {
    return this.lineEnd;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.held += chunk.length;
    if (this.lineEnd < 0) this.scan();
  }

  /** The first line, without its line end, and takes it; undefined when none is whole. */
  takeLine(): Buffer | undefined {
    const end = this.lineEnd;
    if (end < 0) return undefined;
    const parts: Buffer[] = [];
    let left = end;
    for (let chunk = this.chunks[this.head]; chunk !== undefined; chunk = this.chunks[this.head]) {
      if (left < chunk.length) {
        parts.push(chunk.subarray(0, left));
        if (left + 1 < chunk.length) this.chunks[this.head] = chunk.subarray(left + 1);
        else this.head++;
        break;
      }
      parts.push(chunk);
      left -= chunk.length;
      this.head++;
    }
    this.held -= end + 1;
    this.compact();
    this.resetScan();
    this.scan();
    return parts.length === 1 && parts[0] !== undefined ? parts[0] : Buffer.concat(parts, end);
  }

  /** Everything held (a last line without its line end), and empties the buffer. */
  takeAll(): Buffer {
    const all = Buffer.concat(this.chunks.slice(this.head), this.held);
    this.clear();
    return all;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.held = 0;
    this.resetScan();
  }

  /** Looks for the line end in the bytes not looked at yet, and stops at the first. */
  private scan(): void {
    for (let chunk = this.chunks[this.scanChunk]; chunk !== undefined; ) {
      const at = chunk.indexOf(NEWLINE, this.scanFrom);
      if (at >= 0) {
        this.lineEnd = this.scanBase + at;
        this.scanFrom = at + 1;
        return;
      }
      this.scanBase += chunk.length;
      this.scanFrom = 0;
      chunk = this.chunks[++this.scanChunk];
    }
  }

  /** After a line is taken, nothing held has been looked at past it: look again from the head. */
  private resetScan(): void {
    this.lineEnd = -1;
    this.scanChunk = this.head;
    this.scanFrom = 0;
    this.scanBase = 0;
  }

  /** Drops taken chunks from the array once they are half of it, so it stays as long as held. */
  private compact(): void {
    if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}

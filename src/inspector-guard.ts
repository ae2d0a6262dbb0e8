/**
 * Closes a Node debugger that an early SIGUSR1 opened.
 *
 * Until the agent's SIGUSR1 handler exists, Node answers SIGUSR1 by opening its inspector on
 * 127.0.0.1:9229, through which any local user could run code as the agent. Node opens it a
 * moment after the signal, from its event loop, so one look at start-up is not enough: the guard
 * looks again and again through the first second.
 */

export interface InspectorGuardOptions {
  /** `inspector.url()`: the debugger's address while it is open. */
  readonly url: () => string | undefined;
  /** `inspector.close()`. */
  readonly close: () => void;
  /** Told after the guard closed a debugger; the signal that opened it was meant for the agent. */
  readonly onClosed: (url: string) => void;
  readonly windowMs?: number;
  readonly intervalMs?: number;
}

/** How long after start-up a signal sent before the handlers existed can still open the debugger. */
export const GUARD_WINDOW_MS = 1000;
const GUARD_INTERVAL_MS = 5;

/** True when the operator asked for the debugger with a flag, which the guard must respect. */
export function inspectorRequested(execArgv: readonly string[], nodeOptions = ""): boolean {
  const flag = /^--inspect(-brk|-wait)?(=.*)?$/;
  return [...execArgv, ...nodeOptions.split(/\s+/)].some((arg) => flag.test(arg));
}

/** Starts watching; returns a function that stops early. */
export function guardInspector({
  url,
  close,
  onClosed,
  windowMs = GUARD_WINDOW_MS,
  intervalMs = GUARD_INTERVAL_MS,
}: InspectorGuardOptions): () => void {
  const check = (): void => {
    const open = url();
    if (open === undefined) return;
    close();
    onClosed(open);
  };
  check();
  const started = Date.now();
  const timer = setInterval(() => {
    check();
    if (Date.now() - started >= windowMs) clearInterval(timer);
  }, intervalMs);
  // The guard must never be what keeps the process alive.
  timer.unref();
  return () => clearInterval(timer);
}

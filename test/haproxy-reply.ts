/**
 * A reader of agent replies that follows HAProxy 2.6's `tcpcheck_agent_expect_reply`: one line up
 * to the first \n or \r; words split on spaces, tabs and commas, matched case-insensitively; the
 * last word of each kind wins; `#` starts the description. Tests use it to check what HAProxy
 * will make of a reply, independently of how the reply was built.
 */
import type { State, Status } from "../src/core/state.js";

export interface AgentCommands {
  health?: "up" | "down" | "fail" | "stopped";
  admin?: "ready" | "drain" | "maint";
  weightPercent?: number;
  maxconn?: number;
  description?: string;
  unknown: string[];
}

export function readAgentReply(received: string): AgentCommands | "incomplete" {
  const end = received.search(/[\r\n]/);
  if (end < 0) return "incomplete";
  const line = received.slice(0, end);
  const hash = line.indexOf("#");
  const words = (hash < 0 ? line : line.slice(0, hash)).split(/[ \t,]+/).filter(Boolean);
  const result: AgentCommands = { unknown: [] };
  if (hash >= 0) result.description = line.slice(hash + 1).trim();
  for (const word of words) {
    const lower = word.toLowerCase();
    if (lower === "up" || lower === "down" || lower === "fail" || lower === "stopped") {
      result.health = lower;
    } else if (lower === "ready" || lower === "drain" || lower === "maint") {
      result.admin = lower;
    } else if (lower.startsWith("maxconn:")) {
      result.maxconn = Number.parseInt(lower.slice("maxconn:".length), 10);
    } else if (/^[0-9]/.test(lower) && lower.includes("%")) {
      result.weightPercent = Number.parseInt(lower, 10);
    } else {
      result.unknown.push(word);
    }
  }
  return result;
}

/** What HAProxy must be told, per status, to show it whatever it showed before. */
export const INTENDED: Readonly<
  Record<Status, { health?: AgentCommands["health"]; admin: NonNullable<AgentCommands["admin"]> }>
> = {
  UP: { health: "up", admin: "ready" },
  READY: { health: "up", admin: "ready" },
  DRAIN: { health: "up", admin: "drain" },
  MAINT: { admin: "maint" },
  DOWN: { health: "down", admin: "ready" },
  FAIL: { health: "fail", admin: "ready" },
  STOPPED: { health: "stopped", admin: "ready" },
};

/**
 * The commands HAProxy must read for a state: its status's words, its weight (100% without one,
 * restoring the configured weight), its maxconn when it has one, its description, nothing else.
 */
export function intendedCommands(state: State): AgentCommands {
  const { health, admin } = INTENDED[state.status];
  return {
    ...(health === undefined ? {} : { health }),
    admin,
    weightPercent: state.weight ?? 100,
    ...(state.maxconn === undefined ? {} : { maxconn: state.maxconn }),
    ...(state.description === undefined ? {} : { description: state.description }),
    unknown: [],
  };
}

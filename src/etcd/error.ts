/** Why an etcd request failed, and which of etcd's answers a client acts on. */

/** Why a request failed: etcd's own error (with its gRPC code), or the connection's. */
export class EtcdError extends Error {
  /** etcd's gRPC status code (11: compacted, 16: unauthenticated …); undefined: no answer. */
  readonly code: number | undefined;
  /** The endpoint that failed, as text. */
  readonly endpoint: string;
  /** The reply was larger than the request allowed: the endpoint answered, too much. */
  readonly tooLarge: boolean;
  constructor(message: string, code: number | undefined, endpoint: string, tooLarge = false) {
    super(message);
    this.code = code;
    this.endpoint = endpoint;
    this.tooLarge = tooLarge;
  }
  /** etcd answered: another endpoint would most likely say the same. */
  get answered(): boolean {
    return this.code !== undefined;
  }
}

/** gRPC status codes etcd answers with, as far as a client acts on them. */
export const GRPC = Object.freeze({ OUT_OF_RANGE: 11, UNAVAILABLE: 14, UNAUTHENTICATED: 16 });

export function isTokenText(text: string): boolean {
  return /auth token|token is invalid|invalid token/i.test(text);
}

export function isTokenError(err: EtcdError): boolean {
  return err.code === GRPC.UNAUTHENTICATED || isTokenText(err.message);
}

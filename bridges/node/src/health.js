'use strict';
/**
 * The grpc.health.v1.Health service: NOT_SERVING until the bridge can take
 * calls, SERVING after, NOT_SERVING again while it shuts down. The pool sends
 * no work to a bridge before it reports SERVING.
 */

const grpc = require('@grpc/grpc-js');

const SERVING = 'SERVING';
const NOT_SERVING = 'NOT_SERVING';

class HealthService {
  /** @param {string[]} services the service names reported; "" is the whole server. */
  constructor(services) {
    this.statuses = new Map(['', ...services].map((name) => [name, NOT_SERVING]));
    this.watchers = new Set();
  }

  /** Set every service's status and tell the watchers. */
  setAll(status) {
    for (const name of this.statuses.keys()) this.statuses.set(name, status);
    for (const watcher of this.watchers) watcher();
  }

  implementation() {
    return {
      Check: (call, callback) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${JSON.stringify(call.request.service)}` });
          return;
        }
        callback(null, { status });
      },
      Watch: (call) => {
        let last = null;
        const send = () => {
          const status = this.statuses.get(call.request.service) ?? 'SERVICE_UNKNOWN';
          if (status !== last) {
            last = status;
            call.write({ status });
          }
        };
        this.watchers.add(send);
        const stop = () => this.watchers.delete(send);
        call.on('cancelled', stop);
        call.on('close', stop);
        send();
      },
    };
  }
}

module.exports = { HealthService, NOT_SERVING, SERVING };

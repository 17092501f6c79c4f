'use strict';
/**
 * Errors on the wire: a non-OK gRPC status plus an ErrorDetail in the trailing
 * metadata key "snakepit-error-bin", so the caller can raise the right class
 * with the remote type, message and stack trace.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const { InvalidArguments } = require('./handler');
const { WireError } = require('./wire');

const ERROR_KEY = 'snakepit-error-bin';

/** ErrorDetail.Kind numbers, as in bridge.proto. */
const Kind = Object.freeze({
  COMMAND_ERROR: 1,
  UNKNOWN_COMMAND: 2,
  INVALID_ARGUMENTS: 3,
  TIMEOUT: 4,
  CANCELLED: 5,
  SESSION_ERROR: 6,
});

/** The gRPC status each kind travels with. */
const STATUS = Object.freeze({
  [Kind.COMMAND_ERROR]: grpc.status.UNKNOWN,
  [Kind.UNKNOWN_COMMAND]: grpc.status.NOT_FOUND,
  [Kind.INVALID_ARGUMENTS]: grpc.status.INVALID_ARGUMENT,
  [Kind.TIMEOUT]: grpc.status.DEADLINE_EXCEEDED,
  [Kind.CANCELLED]: grpc.status.CANCELLED,
  [Kind.SESSION_ERROR]: grpc.status.FAILED_PRECONDITION,
});

let errorDetailType = null;

/** The ErrorDetail message type, loaded once from the repository's bridge.proto. */
function errorDetail(protoRoot) {
  if (errorDetailType === null) {
    const root = protobuf.loadSync(path.join(protoRoot, 'snakepit', 'bridge', 'v1', 'bridge.proto'));
    errorDetailType = root.lookupType('snakepit.bridge.v1.ErrorDetail');
  }
  return errorDetailType;
}

/** Failures that are the bridge's limits, not the command's doing: their own status. */
const TYPE_STATUS = Object.freeze({ PayloadTooLarge: grpc.status.RESOURCE_EXHAUSTED, WireError: grpc.status.INTERNAL });

/** An error the bridge itself decided on (unknown command, bad args, ...). */
class BridgeError extends Error {
  constructor(kind, type, message, traceback = '') {
    super(message);
    this.name = 'BridgeError';
    this.kind = kind;
    this.type = type;
    this.traceback = traceback;
  }
}

/** The remote type name of anything a command threw. */
function remoteType(err) {
  if (err instanceof Error) return err.name && err.name !== 'Error' ? err.name : err.constructor.name || 'Error';
  if (err === null) return 'null';
  return typeof err;
}

/** Turn whatever a command threw into a BridgeError with kind, type, message and trace. */
function classify(err, command = null) {
  if (err instanceof BridgeError) return err;
  if (err instanceof InvalidArguments) {
    const message = command === null ? err.message : `command '${command}': ${err.message}`;
    return new BridgeError(Kind.INVALID_ARGUMENTS, 'InvalidArguments', message, err.stack || '');
  }
  if (err instanceof Error) {
    return new BridgeError(Kind.COMMAND_ERROR, remoteType(err), err.message, err.stack || '');
  }
  return new BridgeError(Kind.COMMAND_ERROR, remoteType(err), String(err), '');
}

/** A wire decoding failure of the arguments (`what` names them). */
function invalidArguments(err, what) {
  const message = err instanceof WireError ? err.message : String(err);
  return new BridgeError(Kind.INVALID_ARGUMENTS, 'InvalidArguments', `${what}: ${message}`);
}

/**
 * The status object grpc-js sends: code, details and the ErrorDetail trailer.
 * @param {BridgeError} err
 * @param {string} protoRoot the repository's protos/ directory.
 */
function toStatus(err, protoRoot) {
  const type = errorDetail(protoRoot);
  const bytes = type
    .encode(type.create({ kind: err.kind, type: err.type, message: err.message, traceback: err.traceback }))
    .finish();
  const metadata = new grpc.Metadata();
  metadata.set(ERROR_KEY, Buffer.from(bytes));
  const code = TYPE_STATUS[err.type] ?? STATUS[err.kind] ?? grpc.status.UNKNOWN;
  const details = err.kind === Kind.COMMAND_ERROR ? `${err.type}: ${err.message}` : err.message;
  return { code, details, metadata };
}

module.exports = { BridgeError, ERROR_KEY, Kind, classify, invalidArguments, remoteType, toStatus };

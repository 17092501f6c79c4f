# frozen_string_literal: true

require 'grpc'
require 'snakepit/bridge/v1/bridge_pb'

module SnakepitBridge
  # Errors on the wire: a non-OK gRPC status plus an ErrorDetail in the trailing
  # metadata "snakepit-error-bin", so the caller raises the right class with
  # the remote type, message and backtrace.
  module Errors
    ERROR_KEY = 'snakepit-error-bin'
    Codes = GRPC::Core::StatusCodes

    # The gRPC status each ErrorDetail kind travels with.
    STATUS = {
      COMMAND_ERROR: Codes::UNKNOWN,
      UNKNOWN_COMMAND: Codes::NOT_FOUND,
      INVALID_ARGUMENTS: Codes::INVALID_ARGUMENT,
      TIMEOUT: Codes::DEADLINE_EXCEEDED,
      CANCELLED: Codes::CANCELLED,
      SESSION_ERROR: Codes::FAILED_PRECONDITION
    }.freeze
    # Failures that are the bridge's limits, not the command's doing.
    TYPE_STATUS = { 'PayloadTooLarge' => Codes::RESOURCE_EXHAUSTED, 'WireError' => Codes::INTERNAL }.freeze

    # A call that ends in an error status.
    class Failure < StandardError
      attr_reader :kind, :type, :traceback

      def initialize(kind, type, message, traceback = '')
        super(message)
        @kind = kind
        @type = type
        @traceback = traceback
      end

      # The ErrorDetail message of this failure.
      def to_detail
        Snakepit::Bridge::V1::ErrorDetail.new(kind: kind, type: type, message: message, traceback: traceback)
      end

      # The GRPC::BadStatus the server raises to send this failure.
      def to_status
        detail = to_detail
        code = TYPE_STATUS[type] || STATUS.fetch(kind)
        details = kind == :COMMAND_ERROR ? "#{type}: #{message}" : message
        GRPC::BadStatus.new_status_exception(code, details, { ERROR_KEY => Snakepit::Bridge::V1::ErrorDetail.encode(detail) })
      end
    end

    module_function

    # The backtrace of an exception as text, like Ruby prints it.
    def traceback(error)
      lines = ["#{error.class}: #{error.message}"]
      lines.concat((error.backtrace || []).map { |line| "\tfrom #{line}" })
      lines.join("\n")
    end

    # Classify what a command raised.
    def failure_from(error, command = nil)
      return error if error.is_a?(Failure)

      if error.is_a?(InvalidArguments)
        message = command ? "command '#{command}': #{error.message}" : error.message
        return Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments', message, traceback(error))
      end
      Failure.new(:COMMAND_ERROR, error.class.name || error.class.to_s, error.message, traceback(error))
    end
  end
end

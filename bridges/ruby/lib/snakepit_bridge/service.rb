# frozen_string_literal: true

require 'etc'
require 'grpc'
require 'snakepit/bridge/v1/bridge_services_pb'
require 'snakepit_bridge/batch'
require 'snakepit_bridge/errors'
require 'snakepit_bridge/handler'
require 'snakepit_bridge/streams'
require 'snakepit_bridge/wire'

module SnakepitBridge
  PROTOCOL_VERSION = '1'

  # Counters the server keeps for the handler to report.
  Stats = Struct.new(:started_at, :requests, :errors, :streams_started, :streams_closed,
                     :sessions_started, :sessions_ended, keyword_init: true) do
    def self.fresh
      new(started_at: SnakepitBridge.monotonic, requests: 0, errors: 0, streams_started: 0, streams_closed: 0,
          sessions_started: 0, sessions_ended: 0)
    end
  end

  # The Bridge gRPC service: decode, bind, call the handler, encode, answer.
  # Every failure becomes a non-OK status with an ErrorDetail; bad input is
  # answered, never raised out of the service, so the bridge keeps serving.
  #
  # Describe reports active_calls: the Execute/ExecuteStream calls whose
  # handler code still runs. A stream counts until its producer thread has
  # ended, which after a cancel may be long after the gRPC call (a command in a
  # long step between yields), so the pool can wait for it or kill the bridge.
  class BridgeService < Snakepit::Bridge::V1::Bridge::Service
    include Batch

    V1 = Snakepit::Bridge::V1
    Failure = Errors::Failure
    # Largest stream message (many chunks); a bigger lone chunk goes alone.
    BATCH_BYTES = 1024 * 1024
    BATCH_ITEMS = 1024

    def initialize(handler, handler_name:, max_message_bytes:, log:)
      super()
      @handler = handler
      @handler_name = handler_name
      @max_message_bytes = max_message_bytes
      @log = log
      @stats = Stats.fresh
      handler.stats = @stats
      @commands = handler.commands
      @sessions = {}
      @global_state = {}
      @session_lock = Mutex.new
      @streams = {}
      # Guards @streams and @calling (calls in their gRPC thread, not yet handed to a producer).
      @streams_lock = Mutex.new
      @calling = 0
      CloseWatch.install
    end

    def describe(_request, _call)
      V1::DescribeResponse.new(
        language: 'ruby', runtime_version: RUBY_VERSION, pid: Process.pid, handler: @handler_name,
        commands: @commands.keys.sort.map do |name|
          spec = @commands[name]
          V1::CommandInfo.new(name: name, stream: spec.stream, doc: spec.doc)
        end,
        protocol_version: PROTOCOL_VERSION,
        active_calls: active_calls
      )
    end

    def execute(request, call)
      @stats.requests += 1
      enter_call
      begin
        spec = unary_command(request.command)
        V1::ExecuteResponse.new(result: invoke(spec, arguments(spec, request.args), context(request, call)))
      ensure
        leave_call
      end
    rescue Failure => e
      fail_with(e)
    end

    def execute_stream(request, call)
      @stats.requests += 1
      enter_call
      handed = false
      begin
        spec, args, ctx = prepare(request, call)
        # A unary command streamed: its result is the one chunk.
        return [V1::ExecuteStreamResponse.new(chunks: [invoke(spec, args, ctx)])] unless spec.stream

        handed = true
        run_stream(spec, args, ctx, call)
      ensure
        leave_call unless handed
      end
    rescue Failure => e
      fail_with(e)
    end

    def init_session(request, _call)
      raise Failure.new(:SESSION_ERROR, 'InvalidSessionId', 'InitSession needs a session_id') if request.session_id.empty?

      data = begin
        request.data ? Wire.decode(request.data.json, request.data.blobs) : nil
      rescue Wire::WireError => e
        raise Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments', "session data: #{e.message}")
      end
      start_session(request.session_id, data)
      V1::InitSessionResponse.new
    rescue Failure => e
      fail_with(e)
    end

    def end_session(request, _call)
      V1::EndSessionResponse.new(existed: finish_session(request.session_id))
    rescue Failure => e
      fail_with(e)
    end

    # The bridge is stopping: cancel the streams, end every session (hook errors are logged).
    def shutdown
      @streams_lock.synchronize { @streams.keys }.each(&:cancel!)
      @session_lock.synchronize { @sessions.keys }.each do |session_id|
        finish_session(session_id)
      rescue Failure => e
        @log.call(e.message)
      end
    end

    private

    def fail_with(failure)
      @stats.errors += 1
      raise failure.to_status
    end

    def start_session(session_id, data)
      # NOTE: held while on_session_start runs, so its hook has run before any call sees the state.
      @session_lock.synchronize do
        return @sessions[session_id] if @sessions.key?(session_id)

        state = {}
        begin
          @handler.on_session_start(session_id, state, data)
        rescue StandardError => e
          cause = Errors.failure_from(e)
          raise Failure.new(:SESSION_ERROR, cause.type, "on_session_start failed for session '#{session_id}': #{cause.message}", cause.traceback)
        end
        @stats.sessions_started += 1
        @sessions[session_id] = state
      end
    end

    def finish_session(session_id)
      state = @session_lock.synchronize { @sessions.delete(session_id) }
      return false if state.nil?

      @stats.sessions_ended += 1
      begin
        @handler.on_session_end(session_id, state)
      rescue StandardError => e
        cause = Errors.failure_from(e)
        raise Failure.new(:SESSION_ERROR, cause.type, "on_session_end failed for session '#{session_id}': #{cause.message}", cause.traceback)
      end
      true
    end

    def enter_call
      @streams_lock.synchronize { @calling += 1 }
    end

    def leave_call
      @streams_lock.synchronize { @calling -= 1 }
    end

    # Calls running handler code: those in their gRPC thread and the streams whose producer runs.
    def active_calls
      @streams_lock.synchronize { @calling + @streams.size }
    end

    def session_count
      @session_lock.synchronize { @sessions.size }
    end

    # Look the command up, decode and check its args, find its session: [spec, args, ctx].
    def prepare(request, call)
      spec = command(request.command)
      [spec, arguments(spec, request.args), context(request, call)]
    end

    def command(name)
      spec = @commands[name]
      return spec unless spec.nil?

      raise Failure.new(:UNKNOWN_COMMAND, 'UnknownCommand',
                        "unknown command '#{name}'; the commands there are: #{@commands.keys.sort.join(', ')}")
    end

    # The command for a unary call (Execute, ExecuteBatch): a stream command is refused.
    def unary_command(name)
      spec = command(name)
      raise Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments', "command '#{spec.name}' is a stream command; call it with ExecuteStream") if spec.stream

      spec
    end

    def arguments(spec, payload)
      json = payload ? payload.json : ''
      blobs = payload ? payload.blobs.to_a : []
      size = json.bytesize + blobs.sum(&:bytesize)
      if size > @max_message_bytes
        raise Failure.new(:INVALID_ARGUMENTS, 'PayloadTooLarge',
                          "arguments of command '#{spec.name}' are #{size} bytes, over the limit of #{@max_message_bytes} bytes")
      end
      args = begin
        Wire.decode(json, blobs)
      rescue Wire::WireError => e
        raise Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments', "command '#{spec.name}': #{e.message}")
      end
      args = {} if args.nil?
      unless args.is_a?(Hash)
        raise Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments',
                          "arguments of command '#{spec.name}' must be a JSON object, not #{json_type(args)}")
      end
      begin
        SnakepitBridge.bind_arguments(spec, args)
      rescue InvalidArguments => e
        raise Failure.new(:INVALID_ARGUMENTS, 'InvalidArguments', e.message)
      end
      args
    end

    def json_type(value)
      case value
      when Array then 'an array'
      when String then value.encoding == Encoding::BINARY ? 'bytes' : 'a string'
      when true, false then 'a boolean'
      when Numeric then 'a number'
      else value.class.to_s
      end
    end

    def context(request, call)
      sid = request.session_id.empty? ? nil : request.session_id
      state = sid ? start_session(sid, nil) : @global_state
      deadline = if request.timeout.positive?
                   SnakepitBridge.monotonic + request.timeout
                 else
                   call_deadline(call)
                 end
      traceparent, tracestate = trace_context(request, call)
      CallContext.new(session_id: sid, session: state, request_id: request.request_id.empty? ? nil : request.request_id,
                      deadline: deadline, handler: @handler, traceparent: traceparent, tracestate: tracestate)
    end

    # The caller's W3C trace context from the call's metadata (logged for each call
    # that has one), or nils.
    def trace_context(request, call)
      metadata = call.respond_to?(:metadata) ? call.metadata : nil
      traceparent = metadata && metadata['traceparent']
      return [nil, nil] unless traceparent.is_a?(String) && !traceparent.empty?

      # A batch's items share their call's: logged once.
      @log.call("#{request.command}: traceparent #{traceparent}") unless @logged_traceparent == traceparent
      @logged_traceparent = traceparent
      [traceparent, metadata['tracestate']]
    end

    # The gRPC deadline of the call on the monotonic clock, or nil. gRPC shows
    # "no deadline" as a time in the distant past or future.
    def call_deadline(call)
      return nil unless call.respond_to?(:deadline) && call.deadline.is_a?(Time)

      left = call.deadline - Time.now
      left.between?(-3600, 1e8) ? SnakepitBridge.monotonic + left : nil
    end

    # Run a unary command; return its encoded result.
    def invoke(spec, args, ctx)
      value = begin
        @handler.public_send(spec.method_name, args, ctx)
      rescue StandardError => e
        raise Errors.failure_from(e, spec.name)
      end
      if ctx.deadline && SnakepitBridge.monotonic > ctx.deadline
        raise Failure.new(:TIMEOUT, 'TimeoutError', "command '#{spec.name}' ran past its deadline")
      end

      payload(value, "the result of command '#{spec.name}'")[0]
    end

    def payload(value, what)
      json, blobs = begin
        Wire.encode(value)
      rescue Wire::WireError => e
        raise Failure.new(:COMMAND_ERROR, 'WireError', "#{what} cannot be sent: #{e.message}")
      end
      size = json.bytesize + blobs.sum(&:bytesize)
      if size > @max_message_bytes
        raise Failure.new(:COMMAND_ERROR, 'PayloadTooLarge', "#{what} is #{size} bytes, over the limit of #{@max_message_bytes} bytes")
      end

      [V1::Payload.new(json: json, blobs: blobs), size]
    end

    def run_stream(spec, args, ctx, call)
      queue = ChunkQueue.new
      run = StreamRun.new(ctx, queue)
      # NOTE: one step, so the call is never counted twice nor not at all.
      @streams_lock.synchronize do
        @streams[run] = true
        @calling -= 1
      end
      @stats.streams_started += 1
      CloseWatch.watch(call) { run.cancel! unless run.finished }
      run.producer = Thread.new { produce(spec, args, ctx, queue, run) }
      batch_bytes = [BATCH_BYTES, @max_message_bytes].min
      Enumerator.new do |out|
        while (batch = queue.take(BATCH_ITEMS, batch_bytes))
          out << V1::ExecuteStreamResponse.new(chunks: batch)
        end
        raise Failure.new(:CANCELLED, 'CancelledError', "command '#{spec.name}' was cancelled").to_status if queue.closed?
      rescue Failure => e
        fail_with(e)
      ensure
        # Normal end, error, or the client gone mid-write: the producer must not outlive the call.
        run.cancel! unless run.finished
      end
    end

    def produce(spec, args, ctx, queue, run)
      Thread.current.report_on_exception = false
      @handler.public_send(spec.method_name, args, ctx) do |chunk|
        raise StreamClosed, 'the stream was cancelled' if queue.closed?

        queue.put(*payload(chunk, "a chunk of command '#{spec.name}'"))
      end
      run.finished = true
      queue.finish
    rescue StreamClosed
      queue.finish
    rescue StandardError => e
      run.finished = true
      queue.finish(Errors.failure_from(e, spec.name))
    ensure
      @streams_lock.synchronize { @streams.delete(run) }
      @stats.streams_closed += 1
    end

    # One running stream: its context and queue, cancelled together.
    class StreamRun
      attr_accessor :producer, :finished

      def initialize(ctx, queue)
        @ctx = ctx
        @queue = queue
        @finished = false
      end

      def cancel!
        @ctx.cancel!
        @queue.close
      end
    end
  end
end

# frozen_string_literal: true

module SnakepitBridge
  # Raise from a command to refuse its input (sent as INVALID_ARGUMENTS, not a crash).
  class InvalidArguments < ArgumentError; end

  # Raised at a stream command's `yield` once the caller went away. It is no
  # StandardError, so a command's `rescue => e` does not swallow it; its
  # `ensure` blocks run.
  class StreamClosed < Exception; end # rubocop:disable Lint/InheritException

  # The running call, as a command sees it.
  class CallContext
    # The caller's session id; nil for a stateless call.
    attr_reader :session_id
    # Per-session state Hash; stateless calls share one bridge-global Hash.
    attr_reader :session
    # The caller's id for this call (a Celery task id), or nil.
    attr_reader :request_id
    # Process.clock_gettime(Process::CLOCK_MONOTONIC) of the soft deadline, or nil.
    attr_reader :deadline
    # The handler serving the call.
    attr_reader :handler
    # The caller's W3C trace context (the worker's bridge-call span), or nil when
    # the call is not traced: "00-<trace id>-<span id>-<flags>". No OpenTelemetry
    # gem is packaged for Debian, so the Ruby bridge opens no span of its own; a
    # handler with the opentelemetry-sdk gem extracts this as its parent.
    attr_reader :traceparent
    # The W3C tracestate that came with it, or nil.
    attr_reader :tracestate

    def initialize(session_id:, session:, request_id: nil, deadline: nil, handler: nil, traceparent: nil,
                   tracestate: nil)
      @session_id = session_id
      @session = session
      @request_id = request_id
      @deadline = deadline
      @handler = handler
      @traceparent = traceparent
      @tracestate = tracestate
      @cancelled = false
      @lock = Mutex.new
      @wake = ConditionVariable.new
    end

    # True once the caller cancelled (or went away).
    def cancelled?
      @cancelled
    end

    # Mark the call cancelled and wake every #sleep (the server does this).
    def cancel!
      @lock.synchronize do
        @cancelled = true
        @wake.broadcast
      end
    end

    # Seconds left before the soft deadline (never negative), or nil.
    def remaining
      @deadline && [0.0, @deadline - SnakepitBridge.monotonic].max
    end

    # Wait `seconds`, waking early when the call is cancelled.
    # @return [Boolean] true when the full time passed, false when cancelled.
    def sleep(seconds)
      return !@cancelled unless seconds.positive?

      until_time = SnakepitBridge.monotonic + seconds
      @lock.synchronize do
        until @cancelled
          left = until_time - SnakepitBridge.monotonic
          break if left <= 0

          @wake.wait(@lock, left)
        end
      end
      !@cancelled
    end
  end

  # What `command` / `stream` record about a method.
  CommandSpec = Struct.new(:name, :method_name, :stream, :doc, :params, :required, keyword_init: true)

  # Base of every handler: the commands a bridge serves.
  #
  #   class Greeter < SnakepitBridge::Handler
  #     command :hello, doc: 'Say hello.'
  #     def hello(args, ctx)
  #       ctx.session['greeted'] = args['name']
  #       { greeting: "hello #{args['name']}" }
  #     end
  #
  #     stream :count_up, doc: 'Count from 0, one chunk per number.'
  #     def count_up(args, _ctx)
  #       args.fetch('to', 3).times { |n| yield({ n: n }) }
  #     end
  #   end
  #
  # A command gets (args, ctx): args is the JSON argument object (a Hash with
  # String keys), ctx the CallContext. A stream command yields each chunk.
  # One instance serves every call, from many threads: keep shared state
  # thread-safe or in ctx.session.
  class Handler
    class << self
      # Subclasses in definition order (to find the one a handler file defines).
      def subclasses_defined
        @subclasses_defined ||= []
      end

      def inherited(subclass)
        super
        Handler.subclasses_defined << subclass
      end

      # Register a unary command: the method `name` (or the block, defined as that method).
      # params: the argument names it takes (others are refused before the call);
      # required: the names it cannot do without.
      def command(name, doc: '', params: nil, required: [], method: nil, &block)
        register(name, false, doc, params, required, method, block)
      end

      # Register a stream command: the method gets a block and yields each chunk.
      def stream(name, doc: '', params: nil, required: [], method: nil, &block)
        register(name, true, doc, params, required, method, block)
      end

      # The commands of this class and its ancestors, by wire name.
      def commands
        inherited_commands = superclass.respond_to?(:commands) ? superclass.commands : {}
        inherited_commands.merge(own_commands)
      end

      private

      def own_commands
        @own_commands ||= {}
      end

      def register(name, stream, doc, params, required, method_name, block)
        name = name.to_s
        raise ArgumentError, "#{self}: two methods are registered as command '#{name}'" if own_commands.key?(name)

        method_name = (method_name || name.tr('.', '_')).to_sym
        define_method(method_name, &block) if block
        own_commands[name] = CommandSpec.new(
          name: name, method_name: method_name, stream: stream, doc: doc,
          params: params&.map(&:to_s), required: required.map(&:to_s)
        ).freeze
      end
    end

    # Counters the server keeps, for a command like `info` to report.
    attr_accessor :stats

    def commands
      @commands ||= self.class.commands.each_value do |spec|
        unless respond_to?(spec.method_name)
          raise ArgumentError, "#{self.class}: command '#{spec.name}' has no method #{spec.method_name}"
        end
      end
    end

    # Called once per session on this bridge, before its first call.
    # state is the session's (empty) Hash, to fill; data the stored session data or nil.
    def on_session_start(session_id, state, data); end

    # Called once when the session ends on this bridge (or the bridge stops).
    def on_session_end(session_id, state); end
  end

  # Check a call's arguments against what its command declared.
  # @raise [InvalidArguments] naming the missing or unexpected ones.
  def self.bind_arguments(spec, args)
    quoted = ->(names) { names.sort.map { |n| "'#{n}'" }.join(', ') }
    missing = spec.required - args.keys
    raise InvalidArguments, "command '#{spec.name}' is missing required argument(s) #{quoted.call(missing)}" unless missing.empty?
    return if spec.params.nil?

    unexpected = args.keys - spec.params
    return if unexpected.empty?

    takes = spec.params.empty? ? 'no arguments' : quoted.call(spec.params)
    raise InvalidArguments, "command '#{spec.name}' got unexpected argument(s) #{quoted.call(unexpected)}; it takes #{takes}"
  end

  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end

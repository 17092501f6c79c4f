# frozen_string_literal: true

require 'grpc'

module SnakepitBridge
  # Stream commands: a producer thread runs the command, a bounded queue feeds the reply.
  #
  # The producer encodes each yielded chunk and puts it on a ChunkQueue; the
  # gRPC thread takes everything that is ready at once, so a fast command
  # fills each message with many chunks while a lone chunk goes out at once.
  # The queue is bounded: a slow reader blocks the producer, so memory stays
  # flat. Cancel (noticed by CloseWatch) closes the queue: the producer's next
  # `yield` raises StreamClosed, so the command's `ensure` runs, and
  # ctx.sleep wakes at once.
  class ChunkQueue
    MAX_ITEMS = 256
    MAX_BYTES = 8 * 1024 * 1024

    def initialize(max_items: MAX_ITEMS, max_bytes: MAX_BYTES)
      @items = []
      @bytes = 0
      @max_items = max_items
      @max_bytes = max_bytes
      @lock = Mutex.new
      @changed = ConditionVariable.new
      @closed = false
      @done = false
      @failure = nil
    end

    def closed?
      @closed
    end

    # Add a chunk, waiting while the queue is full.
    # @raise [StreamClosed] the consumer is gone.
    def put(payload, size)
      @lock.synchronize do
        @changed.wait(@lock) while full? && !@closed
        raise StreamClosed, 'the stream was cancelled' if @closed

        @items << [payload, size]
        @bytes += size
        @changed.broadcast
      end
    end

    # The producer is done (with a failure when the command raised).
    def finish(failure = nil)
      @lock.synchronize do
        return if @done

        @done = true
        @failure = failure
        @changed.broadcast
      end
    end

    # The consumer is gone: wake and refuse the producer.
    def close
      @lock.synchronize do
        @closed = true
        @changed.broadcast
      end
    end

    # Wait for chunks and take all that are ready (up to the caps); nil at the end.
    # @raise [Errors::Failure] the command raised (after every earlier chunk was taken).
    def take(max_items, max_bytes)
      @lock.synchronize do
        @changed.wait(@lock) while @items.empty? && !@done && !@closed
        if @items.empty?
          raise @failure if @failure && !@closed

          return nil
        end
        batch = []
        size = 0
        while !@items.empty? && batch.size < max_items
          break if !batch.empty? && size + @items.first[1] > max_bytes

          payload, item_size = @items.shift
          batch << payload
          size += item_size
        end
        @bytes -= size
        @changed.broadcast
        batch
      end
    end

    private

    def full?
      @items.size >= @max_items || (@bytes >= @max_bytes && !@items.empty?)
    end
  end

  # Notices a server call's cancel at once (not only at its next write).
  #
  # A thread waits on the call's RECV_CLOSE_ON_SERVER, which gRPC completes
  # when the call closes: at once when the client cancels or goes away.
  # gRPC core allows one such operation per call, and ActiveCall#send_status
  # asks for another when it sends OK; CloseWatch.install makes it skip that
  # on the calls being watched.
  module CloseWatch
    # Prepended to GRPC::ActiveCall.
    module SkipSecondClose
      attr_accessor :snakepit_close_watched

      def send_status(code = GRPC::Core::StatusCodes::OK, details = '', assert_finished = false, metadata: {})
        super(code, details, assert_finished && !snakepit_close_watched, metadata: metadata)
      end
    end

    module_function

    def install
      GRPC::ActiveCall.prepend(SkipSecondClose) unless GRPC::ActiveCall <= SkipSecondClose
    end

    # Call `on_close` (from a thread) when the call behind `view` closes, which
    # is at the client's cancel if the call is still running then.
    # Returns the watcher thread, or nil when this gRPC build hides the call.
    def watch(view, &on_close)
      active = view.instance_variable_get(:@wrapped)
      core = active&.instance_variable_get(:@call)
      return nil unless active.is_a?(GRPC::ActiveCall) && core.respond_to?(:run_batch)

      active.snakepit_close_watched = true
      Thread.new do
        core.run_batch(GRPC::Core::CallOps::RECV_CLOSE_ON_SERVER => nil)
        # NOTE: this build reports no `cancelled` flag, so the callback gets every
        # close and must ignore the close of a call that ended normally.
        on_close.call
      rescue StandardError
        nil # the call is gone already: nothing left to cancel
      end
    end
  end
end

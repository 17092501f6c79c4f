# frozen_string_literal: true

module SnakepitBridge
  # ExecuteBatch: many calls of one command in one gRPC message.
  #
  # A batch map's cost per item is the gRPC round trip, not the command. A
  # batch pays it once for many items: each item runs through the very path of
  # Execute (arguments, context with the session and deadline, invoke), one
  # after another, each counted as a request, and their outcomes go back in
  # one response.
  #
  # The response must fit the message limit: no further item is started once
  # the results reach half of it (the caller sends the rest again), and a
  # result too large for the room left is that item's PayloadTooLarge error,
  # as an oversized Execute result is.
  module Batch
    # Share of the message limit after which no further item is started.
    BUDGET_SHARE = 0.5
    # Bytes of protobuf framing counted per item result.
    ITEM_OVERHEAD = 16

    def execute_batch(request, call)
      spec = unary_command(request.command)
      enter_call # the whole batch is one running call
      begin
        Snakepit::Bridge::V1::ExecuteBatchResponse.new(results: run_items(spec, request, call))
      ensure
        leave_call
      end
    rescue Errors::Failure => e
      fail_with(e)
    end

    private

    def run_items(spec, request, call)
      limit = @max_message_bytes
      budget = (limit * BUDGET_SHARE).to_i
      results = []
      used = 0
      request.items.each do |item|
        break if used >= budget || (call.respond_to?(:cancelled?) && call.cancelled?)

        outcome, size = run_item(spec, request, item, call, limit - used)
        used += size + ITEM_OVERHEAD
        results << outcome
        break if request.stop_on_error && !outcome.ok
      end
      results
    end

    # One item as Execute would run it: [ItemResult, its size in bytes].
    def run_item(spec, request, item, call, room)
      @stats.requests += 1
      result = invoke(spec, arguments(spec, item), context(request, call))
      size = result.json.bytesize + result.blobs.sum(&:bytesize)
      if size + ITEM_OVERHEAD > room
        raise Errors::Failure.new(:COMMAND_ERROR, 'PayloadTooLarge',
                                  "the result of command '#{spec.name}' is #{size} bytes; with the results before it " \
                                  "in this batch it is over the limit of #{@max_message_bytes} bytes")
      end

      [Snakepit::Bridge::V1::ItemResult.new(ok: true, result: result), size]
    rescue Errors::Failure => e
      @stats.errors += 1
      detail = e.to_detail
      [Snakepit::Bridge::V1::ItemResult.new(ok: false, error: detail), Snakepit::Bridge::V1::ErrorDetail.encode(detail).bytesize]
    end
  end
end

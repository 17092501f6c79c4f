# frozen_string_literal: true

require 'digest'
require 'securerandom'
require 'snakepit_bridge/handler'

module SnakepitBridge
  # The showcase handler: the seed's demo commands, served by default.
  #
  # Same names and fields as the Python bridge's showcase, so the one contract
  # suite and the demos run against any bridge. Stream commands are fast by
  # default and take their pace from the arguments; each counts its cleanup,
  # so a test can see through `info` that a cancelled command was closed.
  class ShowcaseHandler < Handler
    OPERATIONS = %w[add subtract multiply divide power sqrt].freeze
    LOG_LEVELS = %w[INFO INFO DEBUG WARNING INFO ERROR].freeze
    LABELS = %w[cat dog bird car tree].freeze

    def initialize
      super
      @lock = Mutex.new
      @streams_closed = 0
      @streams_cancelled = 0
    end

    command :ping, doc: 'Answer {"status": "ok"} with the bridge\'s pid and time.'
    def ping(_args, ctx)
      { status: 'ok', message: 'pong', pid: Process.pid, timestamp: Time.now.to_f, session_id: ctx.session_id }
    end

    command :echo, doc: 'Answer the arguments as they arrived, under "echoed".'
    def echo(args, _ctx)
      { echoed: args }
    end

    command :compute, params: %w[operation a b], required: %w[operation a],
                      doc: 'Arithmetic on a and b: add, subtract, multiply, divide, power, sqrt.'
    def compute(args, _ctx)
      operation = args['operation']
      raise InvalidArguments, "unknown operation #{operation.inspect}; use one of #{OPERATIONS.join(', ')}" unless OPERATIONS.include?(operation)

      x = number('a', args['a'])
      return { result: square_root(x), operation: operation } if operation == 'sqrt'
      raise InvalidArguments, "operation '#{operation}' needs b" if args['b'].nil?

      { result: arithmetic(operation, x, number('b', args['b'])), operation: operation }
    end

    command :info, params: [], doc: "The bridge's pid, runtime, uptime and counters."
    def info(_args, ctx)
      {
        pid: Process.pid, language: 'ruby', runtime_version: RUBY_VERSION, handler: self.class.name.split('::').last,
        uptime: SnakepitBridge.monotonic - stats.started_at, requests_handled: stats.requests, errors: stats.errors,
        streams_started: stats.streams_started, streams_closed: @streams_closed, streams_cancelled: @streams_cancelled,
        sessions_active: stats.sessions_started - stats.sessions_ended, sessions_started: stats.sessions_started,
        sessions_ended: stats.sessions_ended, session_id: ctx.session_id
      }
    end

    command :random, params: %w[type min max mean std],
                     doc: 'A random number: uniform (min, max), integer (min, max) or normal (mean, std).'
    def random(args, _ctx)
      type = args.fetch('type', 'uniform')
      value = case type
              when 'uniform'
                low = number('min', args.fetch('min', 0)).to_f
                low + (Random.rand * (number('max', args.fetch('max', 1)) - low))
              when 'integer'
                low = number('min', args.fetch('min', 0))
                high = number('max', args.fetch('max', 1))
                unless low.is_a?(Integer) && high.is_a?(Integer) && low <= high
                  raise InvalidArguments, "integer needs whole numbers min <= max, not #{low.inspect}, #{high.inspect}"
                end

                Random.rand(low..high)
              when 'normal'
                z = Math.sqrt(-2 * Math.log(1.0 - Random.rand)) * Math.cos(2 * Math::PI * Random.rand)
                number('mean', args.fetch('mean', 0)) + (number('std', args.fetch('std', 1)) * z)
              else
                raise InvalidArguments, "unknown random type #{type.inspect}; use uniform, integer or normal"
              end
      { value: value, type: type }
    end

    command :sleep, params: %w[seconds], doc: 'Sleep (stops early when the call is cancelled); for timeouts and demos.'
    def sleep(args, ctx)
      started = SnakepitBridge.monotonic
      full = ctx.sleep(number('seconds', args.fetch('seconds', 0.1)))
      { slept: SnakepitBridge.monotonic - started, cancelled: !full }
    end

    def on_session_start(_session_id, state, data)
      state['counter'] = data.is_a?(Hash) ? data.fetch('counter', 0) : 0
      state['init_data'] = data
    end

    command :session_info, params: [], doc: "The session's id, the data it was initialised with and its state keys."
    def session_info(_args, ctx)
      { session_id: ctx.session_id, init_data: ctx.session['init_data'], keys: ctx.session.keys.sort }
    end

    command :set_counter, params: %w[value], required: %w[value], doc: "Set the session's counter."
    def set_counter(args, ctx)
      ctx.session['counter'] = number('value', args['value'])
      { value: ctx.session['counter'] }
    end

    command :get_counter, params: [], doc: "The session's counter (0 when never set)."
    def get_counter(_args, ctx)
      { value: ctx.session.fetch('counter', 0) }
    end

    command :increment_counter, params: %w[by], doc: "Add `by` to the session's counter."
    def increment_counter(args, ctx)
      ctx.session['counter'] = ctx.session.fetch('counter', 0) + number('by', args.fetch('by', 1))
      { value: ctx.session['counter'] }
    end

    stream :ping_stream, params: %w[count interval], doc: '`count` pings, `interval` seconds apart (count <= 0: until cancelled).'
    def ping_stream(args, ctx)
      count = args.fetch('count', 5)
      interval = args.fetch('interval', 0.01)
      tracked(ctx) do
        seq = 0
        while count <= 0 || seq < count
          last = count.positive? && seq == count - 1
          yield({ seq: seq, message: "ping #{seq}", timestamp: Time.now.to_f, is_final: last })
          seq += 1
          break if !last && !ctx.sleep(interval)
        end
      end
    end

    stream :batch_inference, params: %w[batch_items items model model_path delay],
                             doc: 'One prediction chunk per item of batch_items (or items), then a final summary.'
    def batch_inference(args, ctx)
      batch = args['batch_items'] || args['items'] || []
      raise InvalidArguments, "batch_items must be a list, not #{batch.class}" unless batch.is_a?(Array)

      model = args['model_path'] || args.fetch('model', 'resnet50')
      delay = args.fetch('delay', 0.0)
      tracked(ctx) do
        batch.each_with_index do |item, index|
          return unless ctx.sleep(delay)

          yield({ item: item, index: index, prediction: LABELS[Digest::SHA1.digest(item.to_s).getbyte(0) % LABELS.size],
                  confidence: (0.7 + (Random.rand * 0.29)).round(4), model: model, is_final: false })
        end
        yield({ is_final: true, total_processed: batch.size, model: model })
      end
    end

    stream :process_large_dataset, params: %w[total_rows chunk_size delay file_path],
                                   doc: 'Progress chunks over total_rows in steps of chunk_size; the last has final_stats.'
    def process_large_dataset(args, ctx)
      total_rows = args.fetch('total_rows', 1000)
      chunk_size = args.fetch('chunk_size', 100)
      raise InvalidArguments, 'chunk_size must be > 0 and total_rows >= 0' unless chunk_size.positive? && total_rows >= 0

      started = SnakepitBridge.monotonic
      chunks = [1, (total_rows.to_f / chunk_size).ceil].max
      tracked(ctx) do
        chunks.times do |index|
          return if index.positive? && !ctx.sleep(args.fetch('delay', 0.0))

          processed = [total_rows, (index + 1) * chunk_size].min
          chunk = { chunk_index: index, processed_rows: processed, total_rows: total_rows,
                    progress_percent: total_rows.zero? ? 100.0 : (100.0 * processed / total_rows).round(2),
                    file_path: args['file_path'], is_final: index == chunks - 1 }
          if chunk[:is_final]
            chunk[:total_processed] = processed
            chunk[:final_stats] = { rows: processed, chunks: chunks, duration: SnakepitBridge.monotonic - started }
          end
          yield chunk
        end
      end
    end

    stream :tail_and_analyze, params: %w[lines count interval pattern],
                              doc: 'Analyse log lines (given, or `count` simulated ones) as they come; then a summary.'
    def tail_and_analyze(args, ctx)
      source = args['lines'] || Array.new(args.fetch('count', 20)) do |n|
        format('2024-01-01T00:00:%<s>02d %<level>s worker-%<w>d event %<n>d', s: n % 60, level: LOG_LEVELS[n % LOG_LEVELS.size], w: n % 4, n: n)
      end
      pattern = args.fetch('pattern', 'ERROR')
      levels = Hash.new(0)
      matches = 0
      tracked(ctx) do
        source.each_with_index do |line, index|
          return if index.positive? && !ctx.sleep(args.fetch('interval', 0.0))

          level = %w[ERROR WARNING DEBUG INFO].find { |lvl| line.include?(lvl) } || 'OTHER'
          levels[level] += 1
          matched = line.include?(pattern)
          matches += 1 if matched
          yield({ line_number: index + 1, line: line, level: level, matches: matched, is_final: false })
        end
        yield({ is_final: true, lines: source.size, matches: matches, levels: levels, pattern: pattern })
      end
    end

    stream :distributed_training, params: %w[epochs interval learning_rate model_config dataset_path],
                                  doc: 'Simulated training: one chunk per epoch (train_loss, val_acc), then final_model_path.'
    def distributed_training(args, ctx)
      epochs = args.fetch('epochs', 5)
      loss = 2.5
      acc = 0.1
      tracked(ctx) do
        (1..epochs).each do |epoch|
          return if epoch > 1 && !ctx.sleep(args.fetch('interval', 0.0))

          loss *= 0.7 + (0.1 * Random.rand)
          acc += (0.99 - acc) * (0.3 + (0.05 * Random.rand))
          yield({ epoch: epoch, total_epochs: epochs, train_loss: loss.round(5), val_loss: (loss * 1.1).round(5),
                  val_acc: acc.round(5), learning_rate: args.fetch('learning_rate', 0.01), is_final: false })
        end
        yield({ is_final: true, epochs: epochs, final_val_acc: acc.round(5),
                final_model_path: "/tmp/snakepit_models/model_#{SecureRandom.hex(6)}.pt", dataset_path: args['dataset_path'] })
      end
    end

    private

    # Count a stream's cleanup: closed always, cancelled unless it ran to the end.
    def tracked(ctx)
      completed = false
      yield
      completed = true
    ensure
      @lock.synchronize do
        @streams_closed += 1
        @streams_cancelled += 1 if !completed || ctx.cancelled?
      end
    end

    def number(name, value)
      raise InvalidArguments, "#{name} must be a number, not #{value.class} #{value.inspect}" unless value.is_a?(Integer) || value.is_a?(Float)

      value
    end

    def square_root(x)
      raise Math::DomainError, "cannot take the square root of negative number #{x}" if x.negative?

      if x.is_a?(Integer)
        root = Integer.sqrt(x)
        return root if root * root == x
      end
      Math.sqrt(x)
    end

    def arithmetic(operation, x, y)
      case operation
      when 'add' then x + y
      when 'subtract' then x - y
      when 'multiply' then x * y
      when 'divide'
        raise ZeroDivisionError, 'division by zero' if y.zero?

        x.is_a?(Integer) && y.is_a?(Integer) && (x % y).zero? ? x / y : x.to_f / y
      else power(x, y)
      end
    end

    def power(x, y)
      raise ZeroDivisionError, '0 cannot be raised to a negative power' if x.zero? && y.negative?

      result = x**y
      raise Math::DomainError, "#{x} ** #{y} has no real result" if result.is_a?(Complex)

      result.is_a?(Rational) ? result.to_f : result
    end
  end
end

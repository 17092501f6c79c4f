# frozen_string_literal: true

require 'optparse'
require 'grpc'
require 'snakepit_bridge/handler'
require 'snakepit_bridge/health'
require 'snakepit_bridge/service'

module SnakepitBridge
  class << self
    # The handler class a handler file chose explicitly (optional; see CLI.load_handler).
    attr_accessor :handler
  end

  # The bridge process: parse the CLI every bridge takes, load the handler,
  # serve on the Unix socket, and go away cleanly.
  #
  #   snakepit-bridge-ruby --socket PATH --parent-pid PID --run-id ID
  #                        --max-message-bytes N [--adapter path/to/handler.rb]
  #
  # Exit paths: SIGTERM/SIGINT (stop serving, end sessions, exit 0) and the
  # parent's death (polled every 200 ms), so a bridge never outlives its worker.
  module CLI
    PARENT_POLL = 0.2
    DEFAULT_MAX_MESSAGE_BYTES = (64 * 1024 * 1024) + (64 * 1024)
    EXIT_USAGE = 2

    class UsageError < StandardError; end

    module_function

    def parse(argv)
      options = { socket: nil, parent_pid: nil, run_id: nil, max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, adapter: nil }
      parser = OptionParser.new do |opts|
        opts.banner = 'usage: snakepit-bridge-ruby --socket PATH --parent-pid PID --run-id ID --max-message-bytes N [--adapter FILE]'
        opts.on('--socket PATH', String) { |v| options[:socket] = v }
        opts.on('--parent-pid PID', Integer) { |v| options[:parent_pid] = v }
        opts.on('--run-id ID', String) { |v| options[:run_id] = v }
        opts.on('--max-message-bytes N', Integer) { |v| options[:max_message_bytes] = v }
        opts.on('--adapter FILE', '--handler FILE', String) { |v| options[:adapter] = v }
      end
      rest = parser.parse(argv)
      raise UsageError, "unexpected arguments: #{rest.join(' ')}" unless rest.empty?
      raise UsageError, '--socket is required' unless options[:socket]
      raise UsageError, "--max-message-bytes must be > 0, not #{options[:max_message_bytes]}" unless options[:max_message_bytes].positive?

      options
    rescue OptionParser::ParseError => e
      raise UsageError, e.message
    end

    # Load the handler: the showcase without a file; else the class the file
    # names with `SnakepitBridge.handler = MyHandler`, or the one Handler
    # subclass it defines.
    def load_handler(file)
      if file.nil?
        require 'snakepit_bridge/showcase'
        return [ShowcaseHandler.new, 'ShowcaseHandler']
      end
      path = File.expand_path(file)
      raise UsageError, "--adapter #{file}: no such file" unless File.file?(path)

      before = Handler.subclasses_defined.size
      load path
      klass = SnakepitBridge.handler || begin
        defined = Handler.subclasses_defined[before..]
        raise UsageError, "--adapter #{file}: defines no SnakepitBridge::Handler subclass" if defined.empty?
        if defined.size > 1
          raise UsageError, "--adapter #{file}: defines #{defined.join(', ')}; choose one with SnakepitBridge.handler = ..."
        end

        defined.first
      end
      handler = klass.is_a?(Class) ? klass.new : klass
      handler.commands # checks that every command has its method
      [handler, "#{File.basename(path)}:#{handler.class}"]
    end

    def parent_alive?(pid, direct_child)
      return false if direct_child && Process.ppid != pid

      Process.kill(0, pid)
      true
    rescue Errno::ESRCH
      false
    rescue Errno::EPERM
      true
    end

    def run(argv)
      options = parse(argv)
      handler, name = load_handler(options[:adapter])
      Server.new(handler, name, options).serve
    rescue UsageError, ArgumentError => e
      warn "snakepit-bridge-ruby: error: #{e.message}"
      EXIT_USAGE
    end
  end

  # One serving bridge: the gRPC server, its health, the parent watch and the stop.
  class Server
    # Room for the protobuf framing around a payload of the maximum size.
    FRAMING_BYTES = 64 * 1024
    def initialize(handler, name, options)
      @options = options
      tag = "[snakepit-bridge-ruby #{Process.pid}#{options[:run_id] ? " run #{options[:run_id]}" : ''}]"
      @log = ->(line) { warn "#{tag} #{line}" }
      @service = BridgeService.new(handler, handler_name: name, max_message_bytes: options[:max_message_bytes], log: @log)
      @health = HealthService.new(['snakepit.bridge.v1.Bridge'])
      @name = name
    end

    def serve
      reader, writer = IO.pipe
      %w[TERM INT].each { |sig| Signal.trap(sig) { writer.write_nonblock("#{sig}\n", exception: false) } }
      watch_parent(writer) if @options[:parent_pid]
      server = start_server
      @health.set_all(HealthService::Status::SERVING)
      @log.call("serving #{@name} on unix:#{@options[:socket]}")
      reason = reader.gets&.strip
      @log.call("stopping: #{reason}")
      stop(server)
      0
    end

    private

    def start_server
      # Above the payload limit, so an oversized payload gets our own error detail.
      limit = @options[:max_message_bytes] + FRAMING_BYTES
      server = GRPC::RpcServer.new(
        pool_size: 32, poll_period: 0.2,
        server_args: { 'grpc.max_receive_message_length' => limit, 'grpc.max_send_message_length' => limit }
      )
      server.add_http2_port("unix:#{@options[:socket]}", :this_port_is_insecure)
      server.handle(@service)
      server.handle(@health)
      @server_thread = Thread.new { server.run }
      raise "the gRPC server did not start on unix:#{@options[:socket]}" unless server.wait_till_running(10)

      server
    end

    def watch_parent(writer)
      pid = @options[:parent_pid]
      direct_child = Process.ppid == pid
      unless CLI.parent_alive?(pid, false)
        @log.call("parent #{pid} is not running; not starting")
        exit!(1)
      end
      Thread.new do
        sleep CLI::PARENT_POLL while CLI.parent_alive?(pid, direct_child)
        writer.write("parent #{pid} died\n")
      end
    end

    def stop(server)
      @health.set_all(HealthService::Status::NOT_SERVING)
      @service.shutdown
      stopper = Thread.new { server.stop }
      @log.call('the gRPC server took too long to stop; exiting anyway') unless stopper.join(1)
      File.unlink(@options[:socket]) if File.socket?(@options[:socket])
    rescue StandardError => e
      @log.call("error while stopping: #{e.class}: #{e.message}")
    end
  end
end

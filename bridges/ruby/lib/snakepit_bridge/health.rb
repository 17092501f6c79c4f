# frozen_string_literal: true

require 'grpc'
require 'grpc/health/v1/health_services_pb'

module SnakepitBridge
  # The grpc.health.v1.Health service: NOT_SERVING until the bridge can take
  # calls, SERVING after, NOT_SERVING again while it stops. The pool sends no
  # work to a bridge before it reports SERVING.
  class HealthService < Grpc::Health::V1::Health::Service
    Status = Grpc::Health::V1::HealthCheckResponse::ServingStatus

    def initialize(services)
      super()
      @lock = Mutex.new
      @statuses = ['', *services].to_h { |name| [name, Status::NOT_SERVING] }
    end

    def set_all(status)
      @lock.synchronize { @statuses.each_key { |name| @statuses[name] = status } }
    end

    def check(request, _call)
      status = @lock.synchronize { @statuses[request.service] }
      if status.nil?
        raise GRPC::BadStatus.new_status_exception(GRPC::Core::StatusCodes::NOT_FOUND, "unknown service '#{request.service}'")
      end

      Grpc::Health::V1::HealthCheckResponse.new(status: status)
    end
  end
end

# frozen_string_literal: true

# The Ruby bridge of snakepit-celery: serves a handler's commands over the
# snakepit.bridge.v1.Bridge gRPC service. See bridges/ruby/README.md.
$LOAD_PATH.unshift(File.expand_path('snakepit_bridge/proto', __dir__))

require 'snakepit_bridge/wire'
require 'snakepit_bridge/handler'
require 'snakepit_bridge/errors'
require 'snakepit_bridge/service'

# frozen_string_literal: true

require 'json'

module SnakepitBridge
  # JSON with binary values beside it: the value encoding of the Bridge protocol.
  #
  # The rule every bridge follows (see protos/snakepit/bridge/v1/bridge.proto):
  # a binary String (encoding ASCII-8BIT, i.e. bytes) is lifted into
  # Payload.blobs and replaced by {"__snakepit_bytes__": index}; a Hash that
  # really is {marker => value} travels as {"__snakepit_escape__": [marker, value]}.
  # Text is any String in another encoding; it must be valid UTF-8. Integers
  # stay Integers of any size, Floats stay Floats, nil is null. An array of
  # numbers (numpy's, on the Python side) travels as its raw little-endian
  # buffer in a blob, described by
  # {"__snakepit_array__": {"dtype": "<f4", "shape": [2, 3], "blob": index}};
  # it decodes to an NDArray (dtype, shape, data: a binary String; read the
  # numbers with data.unpack('e*') for "<f4"), and an NDArray travels back so.
  module Wire
    BYTES_KEY = '__snakepit_bytes__'
    ESCAPE_KEY = '__snakepit_escape__'
    ARRAY_KEY = '__snakepit_array__'
    MARKERS = [BYTES_KEY, ESCAPE_KEY, ARRAY_KEY].freeze
    DTYPE_RE = /\A(?:\|[bui]1|<[iu][248]|<f[248]|<c(?:8|16))\z/
    MARKER_TEXT = '"__snakepit_'
    MAX_NESTING = 512

    # A value cannot be encoded as JSON, or a payload is not valid JSON.
    class WireError < ArgumentError; end

    # An n-dimensional array of numbers as the wire carries it: dtype in numpy's
    # notation ("<f4"), shape (sizes) and data (the raw little-endian bytes).
    NDArray = Struct.new(:dtype, :shape, :data) do
      def initialize(dtype, shape, data)
        super
        Wire.check_array(dtype, shape, data)
      end
    end

    def self.check_array(dtype, shape, data)
      unless dtype.is_a?(String) && DTYPE_RE.match?(dtype)
        raise WireError, "array dtype #{dtype.inspect} is not one the wire carries (little-endian b, i, u, f, c)"
      end
      unless shape.is_a?(Array) && shape.all? { |n| n.is_a?(Integer) && n >= 0 }
        raise WireError, "array shape #{shape.inspect} must be an Array of sizes"
      end
      raise WireError, 'array data must be a String of bytes' unless data.is_a?(String)

      expected = shape.reduce(1, :*) * dtype[2..].to_i
      return if expected == data.bytesize

      raise WireError, "array of dtype #{dtype} and shape #{shape.inspect} needs #{expected} bytes, not #{data.bytesize}"
    end

    module_function

    # Encode a value as [json String (binary), blobs].
    # @raise [WireError] the value holds something JSON cannot carry (a Set, NaN, an object).
    def encode(value)
      blobs = []
      lifted = lift(value, blobs)
      json = JSON.generate(lifted, max_nesting: MAX_NESTING, allow_nan: false)
      [json.b, blobs]
    rescue JSON::GeneratorError, JSON::NestingError, EncodingError => e
      raise WireError, "cannot encode as JSON: #{e.message}"
    end

    # Decode (json bytes, blobs) back to the value; empty json means nil.
    # @raise [WireError] the JSON is not valid or a marker is broken.
    def decode(json, blobs = [])
      return nil if json.nil? || json.empty?

      text = json.dup.force_encoding(Encoding::UTF_8)
      raise WireError, 'payload is not valid JSON: it is not UTF-8 text' unless text.valid_encoding?

      value = JSON.parse(text, max_nesting: MAX_NESTING, create_additions: false)
      return value unless text.include?(MARKER_TEXT)

      restore(value, blobs.to_a)
    rescue JSON::ParserError, JSON::NestingError => e
      raise WireError, "payload is not valid JSON: #{e.message.lines.first&.strip}"
    end

    def lift(value, blobs)
      case value
      when String then lift_string(value, blobs)
      when Hash then lift_hash(value, blobs)
      when Array then value.map { |item| lift(item, blobs) }
      when Integer, true, false, nil then value
      when Float
        raise WireError, "cannot encode as JSON: #{value} is not a JSON number" unless value.finite?

        value
      when Symbol then value.to_s
      when NDArray
        blobs << value.data.b
        { ARRAY_KEY => { 'dtype' => value.dtype, 'shape' => value.shape, 'blob' => blobs.size - 1 } }
      else
        raise WireError, "cannot encode as JSON: a value of type #{value.class} is not JSON serializable"
      end
    end

    def lift_string(value, blobs)
      if value.encoding == Encoding::BINARY
        blobs << value
        return { BYTES_KEY => blobs.size - 1 }
      end
      text = value.encoding == Encoding::UTF_8 ? value : value.encode(Encoding::UTF_8)
      raise WireError, 'cannot encode as JSON: a text String is not valid UTF-8 (use .b for bytes)' unless text.valid_encoding?

      text
    end

    def lift_hash(value, blobs)
      if value.size == 1
        key, item = value.first
        return { ESCAPE_KEY => [key.to_s, lift(item, blobs)] } if MARKERS.include?(key.to_s)
      end
      value.each_with_object({}) do |(key, item), out|
        unless key.is_a?(String) || key.is_a?(Symbol) || key.is_a?(Integer)
          raise WireError, "cannot encode as JSON: a Hash key of type #{key.class} is not a string"
        end

        out[key.to_s] = lift(item, blobs)
      end
    end

    # Restore markers bottom-up, like a JSON object hook.
    def restore(value, blobs)
      case value
      when Array then value.map { |item| restore(item, blobs) }
      when Hash
        inner = value.transform_values { |item| restore(item, blobs) }
        inner.size == 1 ? restore_marker(inner, blobs) : inner
      else value
      end
    end

    def restore_marker(obj, blobs)
      if obj.key?(BYTES_KEY)
        index = obj[BYTES_KEY]
        unless index.is_a?(Integer) && index >= 0 && index < blobs.size
          raise WireError, "bytes marker points at blob #{index.inspect}, but there are #{blobs.size}"
        end

        return blobs[index].dup.force_encoding(Encoding::BINARY)
      end
      if obj.key?(ESCAPE_KEY)
        pair = obj[ESCAPE_KEY]
        unless pair.is_a?(Array) && pair.size == 2 && pair[0].is_a?(String)
          raise WireError, "escape marker must hold [key, value], not #{pair.inspect}"
        end

        return { pair[0] => pair[1] }
      end
      return restore_array(obj[ARRAY_KEY], blobs) if obj.key?(ARRAY_KEY)

      obj
    end

    def restore_array(spec, blobs)
      unless spec.is_a?(Hash) && spec.keys.sort == %w[blob dtype shape]
        raise WireError, "array marker must hold dtype, shape and blob, not #{spec.inspect}"
      end

      index = spec['blob']
      unless index.is_a?(Integer) && index >= 0 && index < blobs.size
        raise WireError, "array marker points at blob #{index.inspect}, but there are #{blobs.size}"
      end

      NDArray.new(spec['dtype'], spec['shape'], blobs[index].dup.force_encoding(Encoding::BINARY))
    end
  end
end

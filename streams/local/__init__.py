"""The local stack: embedded broker and Redis, ``driftline dev``, the demo producer."""

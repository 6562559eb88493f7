"""The programs: the worker (Faust app, pipeline, monitors), ``serve``, the local stack, the CLI."""

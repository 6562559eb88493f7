"""The worker program: the Faust app, batch transport, per-batch pipeline, monitors runner,
health, retries and the supervisor of ``--processes``."""

"""Typed, immutable settings: one YAML file, overridable from ``DRIFTLINE_*`` variables.

Built once at start-up by :func:`load_settings`; nothing reads the environment
anywhere else.  Reading the file and wording its errors is
:mod:`driftline.streams.config_file`.  Precedence, highest first: environment variables, then the
file, then the defaults below.  Nested keys use ``__`` in variable names::

    DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS=broker-1:9092,broker-2:9092
    DRIFTLINE_REDIS__URL=rediss://redis.internal:6380/0
    DRIFTLINE_METRICS__PORT=9500

Secrets (``kafka.sasl_password``, ``kafka.ssl_key_password``,
``redis.password``, ``metrics.token``, ``schema_registry.password``) are read
from the environment only; a secret written into the file is refused, so a
config file can be committed and shared safely.  They are ``SecretStr``: they
print as ``**********``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from driftline.drift.quality import QualityConfig
from driftline.errors import redact
from driftline.features.exceptions import LayoutError
from driftline.features.keys import MAX_SHARDS, KeyLayout
from driftline.streams.errors import ConfigError

ENV_PREFIX = "DRIFTLINE_"

#: Shards of the online store on a Redis Cluster unless ``redis.shards`` says otherwise:
#: enough to spread over up to 64 primaries, few enough that a batch's scripts stay large.
DEFAULT_CLUSTER_SHARDS = 64

#: (section, key) pairs that must come from the environment.
SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("kafka", "sasl_password"),
        ("kafka", "ssl_key_password"),
        ("redis", "password"),
        ("metrics", "token"),
        ("schema_registry", "password"),
        ("serve", "token"),
    }
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_s: float = Field(30.0, gt=0)
    heartbeat_interval_s: float = Field(3.0, gt=0)
    rebalance_timeout_s: float = Field(60.0, gt=0)
    commit_interval_s: float = Field(2.0, gt=0)
    fetch_max_wait_s: float = Field(
        0.1, gt=0, le=30, description="how long a fetch waits for data; bounds end-to-end latency"
    )
    create_topics: bool = Field(
        False, description="create missing source and dead-letter topics at start-up (dev)"
    )
    topic_partitions: int = Field(4, ge=1, description="partitions of topics created by driftline")
    startup_timeout_s: float = Field(
        15.0,
        gt=0,
        description="how long worker and produce wait for the broker at start-up before giving up",
    )
    max_request_size: int = Field(
        1_000_000,
        ge=65_536,
        description="largest produce request (bytes); dead letters over it are cut to fit",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, value: str) -> str:
        for host in value.split(","):
            name, sep, port = host.strip().rpartition(":")
            if not sep or not name or not port.isdigit():
                raise ValueError("expected host:port[,host:port...]")  # the value is shown
            if "@" in name:
                raise ValueError(
                    "expected host:port[,host:port...] without credentials; set "
                    f"kafka.sasl_username and {ENV_PREFIX}KAFKA__SASL_PASSWORD instead"
                )
        return value

    @model_validator(mode="after")
    def _auth(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs kafka.sasl_username and "
                f"the environment variable {ENV_PREFIX}KAFKA__SASL_PASSWORD"
            )
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError("heartbeat_interval_s must be smaller than session_timeout_s")
        return self

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL/SASL_SSL, verifying the broker by default."""
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            context.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile) if self.ssl_keyfile else None,
                self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
            )
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection and security arguments for aiokafka clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS)")
    username: str | None = None
    password: SecretStr | None = None
    ssl_cafile: Path | None = None
    key_prefix: str = Field("driftline", min_length=1)
    socket_timeout_s: float = Field(5.0, gt=0)
    startup_timeout_s: float = Field(
        60.0, gt=0, description="how long the worker waits for Redis at start-up before giving up"
    )
    cluster: bool = Field(
        False,
        description="url names a node of a Redis Cluster: the online store is cut into "
        "'shards', each in one hash slot (docs/features.md, On Redis Cluster)",
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=MAX_SHARDS,
        description="shards of the online store, fixed once it holds data (a worker with "
        "another count refuses to start): default 64 with cluster, else 1; the store spreads "
        "over at most this many primaries",
    )

    @property
    def store_shards(self) -> int:
        """The shard count of the online store: :attr:`shards`, or its default."""
        if self.shards is not None:
            return self.shards
        return DEFAULT_CLUSTER_SHARDS if self.cluster else 1

    @model_validator(mode="after")
    def _layout(self) -> RedisSettings:
        try:
            KeyLayout(self.key_prefix, self.store_shards)
        except LayoutError as exc:
            raise ValueError(str(exc)) from None
        if self.cluster and self.url.startswith("unix://"):
            raise ValueError("cluster: a Redis Cluster is reached over TCP, not a unix:// socket")
        return self

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")  # the value is shown
        if redact(value) != value:  # user:password@ or ?password=: printed, logged, leaked
            raise ValueError(
                f"put no credentials in the URL; set {ENV_PREFIX}REDIS__PASSWORD instead"
            )
        return value


class MetricsSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(9464, ge=0, le=65535, description="0 disables the HTTP endpoint")
    token: SecretStr | None = Field(None, description="bearer token required by /metrics")


class OfflineSettings(_Section):
    """The offline event log that ``driftline archive`` writes and training sets read."""

    path: str = Field(
        "driftline-log",
        min_length=1,
        description="root of the log: a directory (relative: to the working directory) or an "
        "s3://, gs:// or az:// URL (credentials from the environment, as deltalake reads them)",
    )
    sources: tuple[str, ...] | None = Field(
        None, description="sources to archive; default: every source a feature group reads"
    )
    flush_interval_s: float = Field(
        5.0, gt=0, description="longest time accepted events wait before they are committed"
    )
    flush_max_events: int = Field(
        100_000, ge=1, description="events that make the archiver commit at once"
    )


class ServeSettings(_Section):
    """``driftline serve``: the feature-serving HTTP API (a process of its own)."""

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (logged)")
    max_batch_entities: int = Field(
        1000, ge=1, le=100_000, description="entities per batch request; more is refused (413)"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body; larger is refused (413)"
    )
    token: SecretStr | None = Field(None, description="bearer token required by the /v1 routes")


class WorkerSettings(_Section):
    batch_max_events: int = Field(
        40_000,
        ge=1,
        description="records fetched per poll (max.poll.records); bounds a batch (a batch "
        "is one partition's share of a poll); under a backlog, larger batches write each "
        "busy entity's state to Redis less often",
    )
    max_entities_per_write: int = Field(
        5_000,
        ge=1,
        description="a batch is applied to Redis in scripts of at most this many distinct "
        "record keys (entities): a script blocks Redis, and serving's reads, while it runs",
    )
    batches_in_flight: int = Field(
        2,
        ge=1,
        le=16,
        description="batches of a source in work at once (of different partitions; effects "
        "are written one batch at a time): the next batch's CPU work overlaps the previous "
        "one's wait on Redis and the broker; 1: one batch at a time",
    )
    data_dir: Path | None = Field(None, description="Faust data dir; default: a temp dir")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    retry_backoff_initial_s: float = Field(0.2, gt=0)
    retry_backoff_max_s: float = Field(10.0, gt=0)
    stall_after_s: float = Field(
        30.0,
        gt=0,
        description="a write pending or no fetch answered for this long turns readiness to 503",
    )


class DriftSettings(_Section):
    alerts_topic: str = Field("driftline.alerts", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    values_topic: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="internal topic routing monitored values to their monitor's owner; "
        "default <app_id>.monitor-values",
    )
    values_partitions: int = Field(
        1, ge=1, description="partitions of the values topic when driftline creates it"
    )
    order_idle_after_s: float = Field(
        5.0,
        ge=0,
        description="a monitor feeds its values in event-time order across the source's "
        "partitions; a partition silent this long (arrival time) stops holding the others back",
    )
    order_max_buffered: int = Field(
        20_000,
        ge=1,
        description="values a monitor keeps waiting for event-time order at most; beyond, "
        "the oldest are fed anyway (counted in driftline_drift_order_forced_total)",
    )


class SchemaRegistrySettings(_Section):
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and redact(value) != value:
            raise ValueError(
                "put no credentials in the URL; set schema_registry.username and "
                f"{ENV_PREFIX}SCHEMA_REGISTRY__PASSWORD instead"
            )
        return value


class SourceSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    schema_file: Path = Field(alias="schema", description="contract file, relative to the config")
    encoding: Literal["json", "confluent-avro"] = "json"
    schema_ids: dict[int, Path] = Field(default_factory=dict, description="Confluent id -> .avsc")
    entity_key: str = Field(min_length=1)
    event_time: str | None = Field(None, description="event-time field; default: record timestamp")
    event_time_unit: Literal["ms", "s", "iso8601"] = "ms"
    dead_letter_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    max_event_bytes: int = Field(1 << 20, ge=1)
    allowed_lateness: str = Field(
        "30s", description="events older than the partition's newest event time minus this are late"
    )
    future_tolerance: str = Field(
        "5m", description="events further ahead of the worker's clock than this are refused"
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig,
        description="data-quality checks: completeness, uniqueness, ranges and domains",
    )

    @field_validator("allowed_lateness", "future_tolerance")
    @classmethod
    def _duration(cls, value: str) -> str:
        from driftline.features.durations import parse_duration

        parse_duration(value)  # raises ValueError with the reason
        return value

    @property
    def allowed_lateness_ms(self) -> int:
        from driftline.features.durations import parse_duration

        return parse_duration(self.allowed_lateness)

    @property
    def future_tolerance_ms(self) -> int:
        from driftline.features.durations import parse_duration

        return parse_duration(self.future_tolerance)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"


class Settings(BaseSettings):
    """Everything the worker needs, validated once."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    app_id: str = Field(
        "driftline",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Faust app id; also the Kafka consumer group id that workers share",
    )
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    metrics: MetricsSettings = MetricsSettings()
    worker: WorkerSettings = WorkerSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    drift: DriftSettings = DriftSettings()
    serve: ServeSettings = ServeSettings()
    offline: OfflineSettings = OfflineSettings()
    sources: tuple[SourceSettings, ...] = Field(min_length=1)
    #: Feature group definitions, validated by
    #: :func:`driftline.streams.sources.build_feature_groups`
    #: (``driftline.features.definitions.FeatureGroup.from_config``).
    feature_groups: tuple[dict[str, Any], ...] = ()
    #: Drift monitor definitions, validated by :func:`driftline.streams.sources.build_monitors`
    #: (``driftline.drift.config.MonitorConfig.from_config``).
    monitors: tuple[dict[str, Any], ...] = ()

    @property
    def values_topic(self) -> str:
        return self.drift.values_topic or f"{self.app_id}.monitor-values"

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        names = [s.name for s in self.sources]
        topics = [s.topic for s in self.sources]
        for label, values in (("name", names), ("topic", topics)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"source {label}s must be unique; repeated: {', '.join(dupes)}")
        for s in self.sources:
            if s.dlq_topic in topics:
                raise ValueError(
                    f"source {s.name}: dead-letter topic {s.dlq_topic} is a source topic"
                )
        if self.offline.sources is not None:
            unknown = sorted(set(self.offline.sources) - set(names))
            if unknown:
                raise ValueError(f"offline.sources names unknown sources: {', '.join(unknown)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs).
        return (env_settings, init_settings)


def load_settings(path: Path | str, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` and the environment into :class:`Settings`, or raise :class:`ConfigError`.

    ``env`` replaces ``os.environ`` (for tests); variables not starting with
    ``DRIFTLINE_`` are ignored.
    """
    # imported here: the file's reader knows these models (did-you-mean, secrets)
    from driftline.streams.config_file import format_validation_error, read_config_file

    path = Path(path)
    data = read_config_file(path)
    try:
        if env is None:
            return Settings(**data)
        saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
        for key in saved:
            del os.environ[key]
        try:
            os.environ.update({k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)})
            return Settings(**data)
        finally:
            for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
                del os.environ[key]
            os.environ.update(saved)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data)) from None
    except SettingsError as exc:  # a DRIFTLINE_<SECTION> variable that is not JSON
        raise ConfigError(
            f"{path}: invalid configuration: {redact(str(exc))} (a {ENV_PREFIX}<SECTION> "
            f"variable must be a JSON object; or set {ENV_PREFIX}<SECTION>__<KEY>)"
        ) from None

"""One settings object, read from ``GARRISON_*`` environment variables and passed down.

Defaults need no server at all: a SQLite file and kombu's filesystem transport, both under
``GARRISON_DATA_DIR`` (``./.garrison``). Production sets ``GARRISON_DATABASE_URL`` to PostgreSQL and
``GARRISON_BROKER_URL`` to Redis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from garrison.errors import ConfigurationError

PREFIX = "GARRISON_"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything garrison needs to know about where it runs.

    Every field maps to ``GARRISON_<FIELD NAME IN CAPITALS>``; lists are comma separated.
    """

    data_dir: Path = Path(".garrison")
    database_url: str = ""
    broker_url: str = ""
    tenant: str = "default"
    automations: tuple[str, ...] = ()
    # A process that only ingests (a web app's worker-less process is not one: this is for `garrison
    # worker`, `beat`, `serve` and `celery -A garrison.tasks`, which refuse to start without automations).
    ingest_only: bool = False
    # The Celery queue garrison's tasks go to. Two deployments sharing one Redis need two names.
    queue: str = "garrison"
    # An automation no worker has registered for this long is taken as retired: messages meant for it no
    # longer wait for it (`garrison automations retire NAME` retires one at once).
    automation_ttl: float = 86400.0
    max_payload_bytes: int = 256 * 1024
    # How deep event data, states and effect payloads may nest (objects and arrays); deeper is refused
    # at ingest, and a handler that returns it records a failure of that message.
    max_nesting: int = 64
    # Keys per published ``process`` task, and events read per transaction by the engine.
    publish_batch: int = 100
    engine_batch: int = 5000
    # Other pending keys of its tenant a ``process`` task takes into its transaction (single events
    # arriving one at a time are applied in batches all the same); 0 turns it off.
    claim_batch: int = 100
    # On PostgreSQL, an engine transaction that wrote only what the event log derives again (states,
    # versions, cursors: no effect, timer, emitted event, run or failure) commits without waiting for the
    # log flush. A database crash in the next fraction of a second loses it, and it is applied again.
    engine_async_commit: bool = True
    # The relay re-publishes work committed but not dispatched once it is this old.
    relay_interval: float = 5.0
    relay_after: float = 5.0
    effect_redispatch_after: float = 300.0
    effect_max_retries: int = 8
    # A running effect (or pulse page) beats this often; one whose beat is older than ``effect_stall_after``
    # died with its worker and is dispatched again.
    effect_heartbeat: float = 10.0
    effect_stall_after: float = 45.0
    # Timers due within this horizon are also published as ETA tasks (well under visibility_timeout).
    timer_horizon: float = 600.0
    broker_visibility_timeout: float = 3600.0
    # Entities per pulse page (one transaction each), and the beat's lease (a second beat takes over
    # within this many seconds of the first one's death).
    pulse_chunk: int = 1000
    beat_lease_ttl: float = 10.0
    sqlite_busy_timeout: float = 60.0
    # HTTP ingest (``garrison serve``): ``tenant:key`` pairs, comma separated. Keep the keys out of the
    # repository (an environment variable or a secrets manager); repr=False keeps them out of logs.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # The console's actions (retry, cancel, pause, resume) need an admin key: ``tenant:key`` pairs like
    # api_keys. Without any, the console is read-only.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Request bodies over this size are refused (413) before they are parsed.
    http_max_body_bytes: int = 1024 * 1024
    # Retention (garrison.core.retention): beat deletes what these windows let go every retention_interval
    # seconds (0: never; `garrison db prune` by hand), in statements of at most retention_batch rows. A
    # window is in days; 0 keeps that table's rows forever.
    retention_interval: float = 300.0
    retention_batch: int = 1000
    retention_versions_days: float = 30.0
    retention_versions_keep: int = 10  # versions of each entity kept from before the window
    retention_events_days: float = 30.0
    retention_effects_days: float = 7.0
    retention_timers_days: float = 7.0
    retention_runs_days: float = 30.0
    retention_failures_days: float = 30.0
    retention_pulse_slots_days: float = 30.0
    # How often a follow reader looks for changes when nothing woke it (SQLite polls; PostgreSQL is woken
    # by NOTIFY and polls only as a fallback).
    follow_poll: float = 0.5
    log_level: str = "INFO"
    # text (a line with [tenant=... key=...] after the message) or json (one object per line).
    log_format: str = "text"
    # "otel": OpenTelemetry spans for ingest, tasks, applies and effects (the otel extra); "" for none.
    tracing: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):  # Settings(data_dir="var/garrison") reads as it should
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'garrison.db'}")
        elif self.database_url.startswith("postgres://"):  # Heroku-style URLs: SQLAlchemy knows postgresql://
            object.__setattr__(self, "database_url", "postgresql://" + self.database_url[len("postgres://"):])
        if not self.broker_url:
            object.__setattr__(self, "broker_url", "filesystem://")
        if not self.tenant:
            raise ConfigurationError("GARRISON_TENANT must not be empty", field="tenant")
        for name in ("publish_batch", "engine_batch", "max_payload_bytes", "effect_max_retries", "pulse_chunk",
                     "http_max_body_bytes", "effect_heartbeat", "effect_stall_after", "automation_ttl",
                     "retention_batch", "retention_versions_keep", "follow_poll", "max_nesting"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive", field=name)
        if self.max_nesting > 128:
            raise ConfigurationError(
                "max_nesting must be at most 128: workers copy states recursively", field="max_nesting"
            )
        for name in [f.name for f in fields(self) if f.name.startswith("retention_") and f.name.endswith(
                ("_days", "_interval"))]:
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be 0 (off) or positive", field=name)
        if self.claim_batch < 0:
            raise ConfigurationError("claim_batch must not be negative", field="claim_batch")
        if self.effect_stall_after <= self.effect_heartbeat * 2:
            raise ConfigurationError(
                "effect_stall_after must be more than twice effect_heartbeat, or live effects look dead",
                field="effect_stall_after",
            )
        if not self.queue or any(ch.isspace() for ch in self.queue):
            raise ConfigurationError(f"GARRISON_QUEUE={self.queue!r} must be a non-empty name without spaces",
                                     field="queue")
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(
                f"GARRISON_LOG_FORMAT={self.log_format!r} is not valid: use text or json", field="log_format"
            )
        if self.tracing not in ("", "otel"):
            raise ConfigurationError(
                f"GARRISON_TRACING={self.tracing!r} is not valid: use otel, or leave it empty", field="tracing"
            )
        if self.timer_horizon >= self.broker_visibility_timeout:
            raise ConfigurationError(
                "timer_horizon must be shorter than broker_visibility_timeout, or Redis re-delivers "
                "ETA tasks while they wait",
                field="timer_horizon",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``GARRISON_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values["extra"] = {
            k[len(PREFIX) :].lower(): v
            for k, v in env.items()
            if k.startswith(PREFIX) and k[len(PREFIX) :].lower() not in {f.name for f in fields(cls)}
        }
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (embedded default only)."""
        return self.data_dir / "broker"

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (worker, beat)."""
        env: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            env[PREFIX + f.name.upper()] = str(value)
        return env


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    if kind in ("bool", "<class 'bool'>"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{PREFIX}{name.upper()}={raw!r} is not valid: use true or false", field=name)
    try:
        if "tuple" in kind:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind in ("int", "<class 'int'>"):
            return int(raw)
        if kind in ("float", "<class 'float'>"):
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{PREFIX}{name.upper()}={raw!r} is not valid: {exc}", field=name) from exc
    return raw

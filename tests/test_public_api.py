"""The public API: every name ``from garrison import ...`` offered before the package was laid out in
layers is still offered, and is the object the layers define."""

from __future__ import annotations

import subprocess
import sys

import garrison
from garrison.client import Garrison
from garrison.core.runtime import Runtime

# The names garrison exported before the restructure (0.1.0). New names may join; none may leave.
PUBLIC = {
    "Actor", "ActorError", "ActorLocked", "Automation", "Command", "CommandContext", "ConfigurationError",
    "DefinitionError", "Delivery", "DeterminismError", "EventFailed", "FrozenClock", "Garrison", "GarrisonError",
    "IngestedEvent", "Journey", "JourneyContext", "LeaseLost", "Machine", "Message", "MigrationError", "Mismatch",
    "Msg", "Node", "NodeContext", "NodeEvent", "NodeSnapshot", "NodeState", "Nodes", "NotFound", "NullPublisher",
    "PayloadTooLarge", "Publisher", "ReplayMismatch", "ReplayReport", "RunInfo", "SaveResult", "SentEvent",
    "Settings", "Statechart", "Step", "SystemClock", "TimerInfo", "Transition", "UnknownAutomation", "UnknownNode",
    "UpdateLoop", "ValidationError", "VersionMismatch", "View", "Views", "configure", "default_client",
    "hold_actor", "journey", "load_actor", "parse_duration",
}


def test_every_name_garrison_exported_is_still_exported_and_importable() -> None:
    assert set(garrison.__all__) >= PUBLIC, sorted(PUBLIC - set(garrison.__all__))
    for name in PUBLIC:
        assert getattr(garrison, name) is not None, name


def test_the_public_client_is_the_core_runtime_with_the_layers_above_it() -> None:
    assert garrison.Garrison is Garrison and issubclass(Garrison, Runtime)
    for method in ("ingest", "ingest_many", "state", "view", "replay", "check", "retry", "failures", "runs", "run",
                   "retry_run", "cancel_run", "run_pending", "add_pulse", "pulses", "pulse", "pause_pulse",
                   "resume_pulse", "remove_pulse"):
        assert callable(getattr(Garrison, method)), method


def test_the_default_client_built_from_the_environment_is_a_garrison() -> None:
    # In a fresh interpreter: nothing configured, the default is built from the (empty) environment.
    code = "import garrison; c = garrison.default_client(); print(type(c).__module__, type(c).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "", "GARRISON_DATA_DIR": "/tmp/garrison-public-api"})
    assert out.stdout.split() == ["garrison.client", "Garrison"]


def test_importing_garrison_imports_no_celery_and_no_web_framework() -> None:
    code = ("import sys, garrison; print(sorted(m for m in ('celery', 'kombu', 'fastapi', 'django', 'flask', 'click')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

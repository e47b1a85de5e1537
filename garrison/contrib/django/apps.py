"""The Django app: reads the settings at startup and follows changes to them (tests)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]


class GarrisonConfig(AppConfig):  # type: ignore[misc]
    name = "garrison.contrib.django"
    label = "garrison"
    verbose_name = "garrison"

    def ready(self) -> None:
        from django.core.signals import setting_changed  # type: ignore[import-untyped]

        from garrison.contrib.django.integration import install

        setting_changed.connect(_settings_changed, dispatch_uid="garrison.contrib.django")
        # At startup, so a bad GARRISON setting fails the process now and not on the first request.
        install()


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting == "GARRISON" or setting.startswith("CELERY_"):
        from garrison.contrib.django.integration import reset

        reset()

"""garrison in a Django project.

``INSTALLED_APPS += ["garrison.contrib.django"]`` and a ``GARRISON`` setting (see
:mod:`garrison.contrib.django.conf`), then in a view::

    from garrison.contrib import django as garrison

    garrison.ingest("app/email.submitted", f"user-{user.pk}", {"email": email})

Inside ``transaction.atomic`` (or with ``ATOMIC_REQUESTS``) the event is written when the transaction
commits, so a rolled-back request ingests nothing. With ``GARRISON["DATABASE"]`` naming the app's
PostgreSQL database, ``ingest(..., in_transaction=True)`` writes the event inside the app's transaction
instead: atomic with the app's rows. ``python manage.py garrison ...`` is the ``garrison`` command with
these settings (``db init``, ``worker``, ``beat``, ``inspect``...).
"""

from garrison.contrib.django.integration import get_client, ingest, ingest_many, reset

__all__ = ["get_client", "ingest", "ingest_many", "reset"]

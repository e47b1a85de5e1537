"""Views that write an app row and ingest an event in the same request.

The project sets ATOMIC_REQUESTS, so each view runs in a transaction. By default garrison writes the event
when that transaction commits; with ``?mode=in_transaction`` it writes it inside the transaction, atomic
with the Submission row (garrison shares the app's PostgreSQL database: GARRISON["DATABASE"]).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from garrison.contrib import django as garrison
from signups.models import Submission


class SubmissionRejected(Exception):
    """Raised after the row and the event were written: the request's transaction rolls both back."""


def _submit(request: HttpRequest, user_id: int) -> tuple[Submission, int | None]:
    user = get_object_or_404(get_user_model(), pk=user_id)
    submission = Submission.objects.create(user=user, email=request.POST.get("email", ""))
    event = garrison.ingest(
        "app/email.submitted",
        f"user-{user.pk}",
        {"email": submission.email, "submission": submission.pk},
        in_transaction=True if request.GET.get("mode") == "in_transaction" else None,
    )
    # None after-commit mode: the event is written when the request's transaction commits.
    return submission, None if event is None else event.id


@csrf_exempt
@require_POST
def submit_email(request: HttpRequest, user_id: int) -> JsonResponse:
    if not request.POST.get("email"):
        return JsonResponse({"error": "email is required"}, status=400)
    submission, event_id = _submit(request, user_id)
    return JsonResponse({"submission": submission.pk, "event": event_id})


@csrf_exempt
@require_POST
def submit_email_then_fail(request: HttpRequest, user_id: int) -> JsonResponse:
    """Writes the row, ingests, then fails (think: the mail provider refused the address)."""
    _submit(request, user_id)
    raise SubmissionRejected("the mail provider refused the address")


@require_GET
def emails(request: HttpRequest, user_id: int) -> JsonResponse:
    """What the worker has applied for this user so far."""
    state = garrison.get_client().state("emails", f"user-{user_id}")
    return JsonResponse(state or {"count": 0, "emails": []})

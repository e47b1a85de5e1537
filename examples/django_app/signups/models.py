from django.conf import settings
from django.db import models


class Submission(models.Model):
    """An email address a user submitted: the app's own row, written in the request's transaction."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="submissions")
    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)

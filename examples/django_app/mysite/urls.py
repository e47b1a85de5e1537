from django.urls import path
from signups import views

urlpatterns = [
    path("users/<int:user_id>/email", views.submit_email),
    path("users/<int:user_id>/email-then-fail", views.submit_email_then_fail),
    path("users/<int:user_id>/emails", views.emails),
]

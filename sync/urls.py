from django.urls import path

from sync import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
]

from django.urls import path

from sync.ingest import api
from sync.observe import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("api/v1/entities", api.ingest_entities, name="api-entities"),
]

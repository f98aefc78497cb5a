from django.apps import AppConfig


class ObserveConfig(AppConfig):
    name = "sync.observe"
    label = "observe"
    verbose_name = "Sync observation"

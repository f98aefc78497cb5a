from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Sync engine"

    def ready(self) -> None:
        # Work stored anywhere (write path, capture, resync, reconciliation) starts a drain soon.
        from sync import queue, tasks

        queue.work_enqueued.connect(tasks.on_work_enqueued, dispatch_uid="sync-kick-drain")

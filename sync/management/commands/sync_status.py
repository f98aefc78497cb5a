"""Print sync health: queue depth by priority, lag, dead letters, records by status, backfills."""

from django.core.management.base import BaseCommand

from sync.observe.readings import snapshot


def seconds(value):
    return "-" if value is None else f"{value:.2f}s"


class Command(BaseCommand):
    help = "Show queue depth by priority, lag, dead letters and sync records by status."

    def handle(self, *args, **options):
        s = snapshot()
        r = s.reading
        out = self.stdout.write
        out(f"queue depth: {r.queue_depth} ({', '.join(f'{p} {r.depth_of(p)}' for p in r.depth)})")
        out(f"oldest unsynced change: {seconds(s.oldest_unsynced)} ago")
        out(f"lag over the last hour: p50 {seconds(s.lag.p50)}, p95 {seconds(s.lag.p95)} "
            f"({s.lag.n} samples)")
        for p in r.backfills:
            eta = "" if p.finished or p.eta is None else f", about {p.eta / 60:.0f} min left"
            out(f"backfill #{p.backfill.pk} {p.title.lower()} of {p.scope_words}: {p.done} of {p.total} done, "
                f"{p.waiting} waiting, {p.failed} dead{eta}{' (stalled)' if p.stalled else ''}"
                f"{' (finished)' if p.finished else ''}")
        out(f"dead letters: {r.dead_letters}")
        records = ", ".join(f"{k} {v}" for k, v in sorted(s.records.items())) or "none"
        out(f"sync records: {records}")
        if s.cursor:
            out(f"change cursor: {s.cursor.updated_at or 'not started'} (polled {s.cursor.polled_at or 'never'})"
                + (f" last error: {s.cursor.last_error}" if s.cursor.last_error else ""))
        if s.sagas:
            out("dual-write sagas: " + ", ".join(f"{k} {v}" for k, v in sorted(s.sagas.items())))

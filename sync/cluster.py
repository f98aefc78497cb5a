"""The django-q2 cluster, made to stop cleanly on SIGTERM (`manage.py workers`; bin/serve runs it).

django-q2 1.11's `qcluster` does not survive a SIGTERM sent to its whole process group, which is
what systemd does: its sentinel and workers reset SIGTERM to the default action and die at once,
in-flight batches and all, and the main process then hangs for ever in `stop_event.set()` on a
lock the dead sentinel held. Here every process of the cluster handles SIGTERM instead
(`sync.shutdown`), so the stop goes the orderly way django-q2 has for it:

- the main process sets the stop event (once, however many signals come) and waits for the
  sentinel;
- the sentinel passes SIGTERM on to its workers (they may not have had one: `kill <main pid>`),
  stops the pusher, gives each worker its STOP pill and waits for them, then stops the monitor,
  which records the last results;
- a worker in one of our long tasks stops it at its next step, or at once inside a batch, which is
  handed back to the queue without an attempt counted (`sync.shutdown`);
- a worker still busy `STOP_GRACE_SECONDS` after the stop began is killed: its events are claimed
  again (at once: `queue.free_leases_of`), the one case that costs them an attempt.

A process of the cluster may also die without warning (the OOM killer, `kill -9`). django-q2 would
start a dead worker, pusher or monitor again and go on, but its processes share queues whose locks
live in shared memory: an idle worker is killed while it holds the task queue's read lock (one of
them always waits inside it), the monitor holding the result queue's, any of them holding a lock
of the sentinel's — and the cluster stops working without a word, its new processes waiting for
good. So here every process watches the one above it, and the cluster heals by starting afresh:

- a process of the sentinel's killed (any exit but a clean one): the sentinel says so (CRITICAL),
  asks its workers to stop (a batch in flight goes back to the queue uncounted), kills what is
  left and exits with RESTART_EXIT_CODE; the main process starts a new sentinel, with new queues;
- the sentinel killed: its processes see it gone and end (a worker hands its batch back first),
  and the main process starts a new one;
- the main process killed: the sentinel sees it gone, says so and stops the cluster as on
  SIGTERM, so nothing outlives it; its supervisor (systemd, bin/serve, compose) starts it again;
- more than RESTART_LIMIT restarts within RESTART_WINDOW_SECONDS: something a restart does not fix;
  the main process stops and exits with code 1, saying so, for its supervisor.

It also runs only the project's tasks (`sync.tasks.TASKS`): see "only the project's tasks run".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from multiprocessing import Event, Value

from django import db
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_q.cluster import Cluster, Sentinel, get_mp_context
from django_q.conf import Conf
from django_q.humanhash import humanize
from django_q.scheduler import scheduler
from django_q.status import Stat
from django_q.utils import get_func_repr
from django_q.worker import worker

from sync import queue, shutdown
from sync.models import AuditEntry
from sync.tasks import TASKS, resume

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 20  # then busy workers are killed; the whole stop stays within 30 s
RESTART_EXIT_CODE = 75  # the sentinel's, after it ended its processes because one of them died (EX_TEMPFAIL)
RESTART_LIMIT = 5  # restarts of the sentinel within RESTART_WINDOW_SECONDS, then the main process gives up
RESTART_WINDOW_SECONDS = 600
WATCH_SECONDS = 0.5  # how often a process of the cluster looks whether the one above it is still there

# What a refused task becomes when it is enqueued: a function that only fails, saying why, so the
# refusal shows among django-q2's failures and every other schedule keeps running.
REFUSED = "sync.cluster.refused"


# --- only the project's tasks run ------------------------------------------------------------
# A django-q2 task names any importable callable, and a result hook another one: whoever could
# write a Schedule or a queued task could run code in the workers. Both are checked against the
# allow-list (sync.tasks.TASKS) where a Schedule is saved, where a task is enqueued (the scheduler
# enqueues too) and where a worker takes it, so a task that reached the broker some other way is
# still never run.

def allowed_tasks() -> frozenset[str]:
    return TASKS | frozenset(settings.EXTRA_TASKS)


def refusal(func, hook=None) -> str | None:
    """Why django-q2 must not run `func` (with result hook `hook`); None when it may."""
    if not isinstance(func, str) or func not in allowed_tasks() | {REFUSED}:
        return f"{str(get_func_repr(func))[:200]!r} is not one of the project's tasks (sync.tasks.TASKS)"
    if hook:
        return f"result hooks are not allowed (this one names {str(get_func_repr(hook))[:200]!r})"
    return None


def _record(task: dict, reason: str, where: str) -> None:
    log.error("django-q2 task refused at %s: %s", where, reason)
    AuditEntry.record("django-q2", "task.refused", str(get_func_repr(task.get("func")))[:200],
                      after={"reason": reason, "where": where, "group": str(task.get("group") or "")[:200]})


def check_schedule(sender, instance, **kwargs) -> None:
    """pre_save of django-q2's Schedule: only the project's tasks, without hooks, may be written.
    (A row that holds another already — written around this check — is let through when the
    scheduler saves its next run: raising there would stop every schedule; its tasks are refused
    at the enqueue.)"""
    reason = refusal(instance.func, instance.hook)
    if reason is None:
        return
    stored = sender.objects.filter(pk=instance.pk).values("func", "hook").first() if instance.pk else None
    if stored != {"func": instance.func, "hook": instance.hook}:
        raise ValidationError({"hook" if instance.func in allowed_tasks() else "func": reason})


def refuse_at_enqueue(sender, task: dict, **kwargs) -> None:
    """pre_enqueue of django-q2 (every `async_task`, the scheduler's included): a task outside the
    allow-list is audited and replaced by `refused`, which fails saying why."""
    reason = refusal(task.get("func"), task.get("hook"))
    if reason is None:
        return
    _record(task, reason, "enqueue")
    task.update(func=REFUSED, args=(reason,), kwargs={}, ack_failure=True)
    task.pop("hook", None)
    task.pop("chain", None)


def refused(reason: str) -> None:
    raise PermissionError(f"refused: {reason}")


class ProjectTasksOnly:
    """A worker's task queue that hands on only the project's tasks: any other is answered at once
    as a failed task (audited, acknowledged so it is not handed out again), never run."""

    def __init__(self, tasks, results):
        self.tasks, self.results = tasks, results

    def get(self, *args, **kwargs):
        while True:
            task = self.tasks.get(*args, **kwargs)
            reason = refusal(task.get("func"), task.get("hook")) if isinstance(task, dict) else None
            if reason is None:
                return task
            _record(task, reason, "worker")
            for key in ("hook", "chain", "timeout"):
                task.pop(key, None)
            task.update(result=f"refused: {reason}", success=False, stopped=timezone.now(), ack_failure=True)
            self.results.put(task)


# --- every process watches the one above it ---------------------------------------------------

def _busy(timer) -> bool:
    """Is the worker inside a task? Read without taking the timer's lock, which a killed process
    may have left held."""
    return timer.get_obj().value > 0


def _child(target, sentinel: int, args) -> None:
    """A process of the cluster (django-q2's worker, pusher or monitor), watching its sentinel."""
    timer = args[2] if target is worker else None
    threading.Thread(target=_watch_sentinel, args=(sentinel, timer), name="sentinel-watch", daemon=True).start()
    target(*args)


def _watch_sentinel(sentinel: int, timer) -> None:
    """End this process once its sentinel is gone (killed: nobody would stop it any more). A worker
    is asked to stop first (a batch in flight goes back to the queue) and given STOP_GRACE_SECONDS."""
    while os.getppid() == sentinel:
        time.sleep(WATCH_SECONDS)
    log.critical("the cluster's sentinel (pid %s) is gone: %s %s ends", sentinel,
                 "worker" if timer is not None else "process", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)  # sync.shutdown: interrupts a batch, stops capture and drains
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while timer is not None and _busy(timer) and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(1)


def _how(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"died (exit code {code})"


class CleanSentinel(Sentinel):
    def start(self) -> None:
        # Runs in the sentinel process before it forks the pusher, monitor and workers: they all
        # inherit the handler, in place of django-q2's SIG_DFL.
        shutdown.install()
        super().start()

    def spawn_process(self, target, *args):
        # django-q2's, with each process watching this sentinel (`_child`).
        process = get_mp_context().Process(target=_child, args=(target, os.getpid(), args),
                                           name=f"Process-{uuid.uuid4().hex}")
        process.daemon = True
        if target is worker:
            process.daemon = Conf.DAEMONIZE_WORKERS
            process.timer = args[2]
            self.pool.append(process)
        process.start()
        return process

    def guard(self) -> None:
        """django-q2's guard loop (start dead workers again, time tasks out, run the scheduler),
        which also ends when a process of the cluster died suddenly (`_restart`), when the main
        process is gone, or on this process's own SIGTERM."""
        name = f"{humanize(self.cluster_id.hex)} [{self.queue_name()}]"
        self.start_event.set()
        Stat(self).save()
        log.info("Q Cluster %s running.", name)
        cycle, counter = Conf.GUARD_CYCLE, 0
        while True:
            dead = self._sudden_death()
            if dead is not None:
                self._restart(dead)
            if os.getppid() != self.parent_pid:
                log.critical("Q Cluster %s: the cluster's main process (pid %s) is gone: stopping its workers "
                             "(its supervisor starts it again)", name, self.parent_pid)
                break
            self._check_workers(cycle)
            if not self.monitor.is_alive():
                self.reincarnate(self.monitor)
            if not self.pusher.is_alive():
                self.reincarnate(self.pusher)
            counter += cycle
            try:
                if counter >= 30 and Conf.SCHEDULER:
                    counter = 0
                    scheduler(broker=self.broker)
                Stat(self).save()
            except Exception:  # noqa: BLE001 — a database that does not answer must not end the cluster
                log.exception("Q Cluster %s: the scheduler or the cluster's status failed; trying again", name)
            if self.stop_event.wait(cycle) or shutdown.requested():
                break
        self.stop()

    def _sudden_death(self) -> str | None:
        """Which process of the cluster died other than cleanly (a worker recycled or timed out by
        django-q2, or a pusher that lost its broker, exits 0 and is simply started again)."""
        for role, processes in (("worker", self.pool), ("monitor", [self.monitor]), ("pusher", [self.pusher])):
            for process in processes:
                if process.exitcode not in (None, 0):
                    return f"the cluster's {role} (pid {process.pid}) {_how(process)}"
        return None

    def _check_workers(self, cycle: float) -> None:
        for process in list(self.pool):
            if not process.is_alive():
                self.reincarnate(process)
                continue
            lock = process.timer.get_lock()
            if not lock.acquire(timeout=cycle):
                continue  # held by a worker killed meanwhile: _sudden_death finds it next round
            try:
                if process.timer.value == 0:  # its task timed out
                    self.reincarnate(process)
                elif process.timer.value > 0:
                    process.timer.value -= cycle
            finally:
                lock.release()

    def _restart(self, dead: str) -> None:
        """End every process of the cluster and exit, for the main process to start them again
        with new queues: the dead one may have left a lock of theirs held for good."""
        log.critical("%s: stopping every process of the cluster, which its main process starts again", dead)
        self.event_out.set()
        workers = [process for process in self.pool if process.is_alive()]
        for process in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # a batch in flight goes back to the queue
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(p.is_alive() and _busy(p.timer) for p in workers):
            time.sleep(0.1)
        everything = [*self.pool, self.monitor, self.pusher]
        for process in everything:
            if process.is_alive():
                process.kill()
        for process in everything:
            process.join(timeout=5)
        self._free_leases([process.pid for process in self.pool if process.exitcode not in (None, 0)])
        raise SystemExit(RESTART_EXIT_CODE)

    @staticmethod
    def _free_leases(pids: list[int]) -> None:
        """The killed workers' batches are claimable at once and their drain slots free: a HIGH
        change in a killed batch must not wait out the visibility timeout."""
        try:
            freed = sum(queue.free_leases_of(queue.worker_name(pid)) for pid in pids)
        except Exception:  # noqa: BLE001 — then their leases run out by themselves
            log.exception("could not free the leases of the killed workers %s", pids)
            return
        if freed:
            log.warning("%d events of the killed workers' batches are claimable again", freed)

    def spawn_worker(self) -> None:
        # django-q2's worker, reading its tasks through the allow-list.
        self.spawn_process(worker, ProjectTasksOnly(self.task_queue, self.result_queue), self.result_queue,
                           Value("f", -1), self.timeout)

    def stop(self) -> None:
        for process in list(self.pool):
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        watchdog = threading.Thread(target=self._kill_stragglers, name="stop-watchdog", daemon=True)
        watchdog.start()
        super().stop()

    def _kill_stragglers(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if not any(process.is_alive() for process in list(self.pool)):
                return
            time.sleep(0.2)
        killed = []
        for process in list(self.pool):
            if process.is_alive():
                log.critical("worker %s still busy %s s after the stop began: killed (its events are claimed "
                             "again at once, the attempt counted)", process.pid, STOP_GRACE_SECONDS)
                process.kill()
                process.join(timeout=5)
                killed.append(process.pid)
        if killed:
            self._free_leases(killed)
            db.connections.close_all()  # this thread's


class CleanCluster(Cluster):
    """django-q2's Cluster with `CleanSentinel`, a signal handler that runs its stop once, and a
    main process that starts a new sentinel when the one it had ended its processes or died."""

    def run(self) -> int:
        """Start the cluster and keep it going until it is stopped; returns the exit status."""
        restarts: list[float] = []
        self.start()
        while True:
            self.sentinel.join(1)
            if self.sentinel.is_alive():
                continue
            code = self.sentinel.exitcode
            if getattr(self, "_stopping", False) or code == 0:
                return 0
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_SECONDS] + [now]
            why = ("its sentinel ended every process after one of them died" if code == RESTART_EXIT_CODE
                   else f"its sentinel (pid {self.sentinel.pid}) {_how(self.sentinel)}")
            if len(restarts) > RESTART_LIMIT:
                log.critical("Q Cluster %s: %s (%d times within %d s): exiting with status 1 for its "
                             "supervisor (systemd, bin/serve, compose) to start the workers again", self.name, why,
                             len(restarts), RESTART_WINDOW_SECONDS)
                return 1
            log.critical("Q Cluster %s: %s: starting it again, with new queues", self.name, why)
            self.start()
            try:
                resumed = resume()  # capture and a drain now, not at the next minute's schedule
            except Exception:  # noqa: BLE001 — the schedules start them within a minute or two
                log.exception("Q Cluster %s: could not ask for capture and a drain after the restart", self.name)
            else:
                log.info("Q Cluster %s: asked for %s after the restart", self.name,
                         " and ".join(what for what, asked in resumed.items() if asked) or "nothing")
            db.connections.close_all()  # not inherited by the next sentinel

    def start(self) -> int:
        # Cluster.start with the sentinel class swapped (django-q2 names it inside the method).
        self.stop_event = Event()
        self.start_event = Event()
        self.sentinel = get_mp_context().Process(
            target=CleanSentinel, name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        log.info("Q Cluster %s starting", self.name)
        while self.start_event and not self.start_event.is_set():
            if not self.sentinel.is_alive():
                if self.sentinel.exitcode == 0:
                    break  # stopped by a signal while starting
                raise RuntimeError(f"Q Cluster {self.name} failed to start: sentinel exited "
                                   f"with code {self.sentinel.exitcode}")
            time.sleep(0.1)
        return self.pid

    def sig_handler(self, signum, frame) -> None:
        # A second SIGTERM (bin/serve passes on the one the group got) must not re-enter stop():
        # setting the stop event again from inside its own lock would deadlock.
        if getattr(self, "_stopping", False):
            return
        self._stopping = True
        log.info("Q Cluster %s got signal %s: stopping", self.name, signal.Signals(signum).name)
        self.stop()

"""Jobs of the processes service: process executions run in the background, their status and
results kept in the twin.

``JobRunner.submit`` takes the work of one execution (a callable of a ``JobControl``, returning
the results as JSON-ready values), runs it on an executor and records every change of its
status (the OGC API – Processes ``statusInfo``: accepted, running, successful, failed,
dismissed, with progress and times) as the document ``jobs/<id>``, with the owner and the
execute request; the results of a successful job go to ``job-results/<id>``. The runner keeps
the status of every job in memory as well, so listing jobs reads no document.

On start the runner reads the twin's jobs back: a job that was accepted or running when the
service stopped is marked failed (its work is lost; run it again), finished ones stay with
their results until ``retention`` has passed.

The executor is a ``concurrent.futures.Executor``: a small thread pool by default (the network
analyses spend their time in NumPy, numba kernels and the store, which release the GIL). A
Dask ``Client.get_executor()`` fits the same interface for simulation ensembles; work sent
there must be picklable and open the twin itself, and its progress reports stay local.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from citytwin.errors import CityTwinError, Forbidden, InvalidInput, NotFound, Unauthorized
from citytwin.store.base import Store

log = logging.getLogger(__name__)

JOB_DOCUMENTS = "jobs/"
RESULT_DOCUMENTS = "job-results/"
STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
FINISHED = ("successful", "failed", "dismissed")
RETENTION = dt.timedelta(days=30)
"""How long finished jobs and their results are kept."""


def utc_now() -> str:
    """Now, as the job documents write times: ISO 8601 UTC with ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JobDismissed(CityTwinError):
    """Raised inside a job's work (by ``JobControl.progress``) once the job was dismissed or the
    service is stopping: the work should end there."""


@dataclass(frozen=True)
class Job:
    """One execution of a process: what ``/jobs/{id}`` shows, plus who asked and what for."""

    id: str
    process: str
    status: str = "accepted"
    message: str = ""
    progress: int = 0
    created: str = ""
    started: str | None = None
    finished: str | None = None
    updated: str = ""
    owner: str | None = None  # the user (None: anonymous)
    department: str | None = None
    request: dict[str, Any] = field(default_factory=dict)  # inputs, outputs, response
    error: dict[str, Any] | None = None  # status, type, title, detail, hint of a failed job

    @property
    def done(self) -> bool:
        """Whether the job has finished (successful, failed or dismissed)."""
        return self.status in FINISHED

    def to_document(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Job:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def status_info(self, base: str) -> dict[str, Any]:
        """The OGC API – Processes ``statusInfo`` of the job, links under ``base`` (the
        service's root URL without a trailing slash)."""
        info: dict[str, Any] = {
            "processID": self.process,
            "type": "process",
            "jobID": self.id,
            "status": self.status,
            "message": self.message,
            "created": self.created,
            "updated": self.updated,
            "progress": self.progress,
        }
        if self.started:
            info["started"] = self.started
        if self.finished:
            info["finished"] = self.finished
        href = f"{base}/jobs/{self.id}"
        links = [
            {"href": href, "rel": "self", "type": "application/json", "title": "job status"},
            {
                "href": f"{base}/processes/{self.process}",
                "rel": "up",
                "type": "application/json",
                "title": "the process",
            },
        ]
        if self.status in ("successful", "failed"):
            links.append(
                {
                    "href": f"{href}/results",
                    "rel": "http://www.opengis.net/def/rel/ogc/1.0/results",
                    "type": "application/json",
                    "title": "results" if self.status == "successful" else "why it failed",
                }
            )
        info["links"] = links
        return info


class JobControl:
    """What a job's work sees of its job: report progress (which ends the work with
    ``JobDismissed`` once the job was dismissed) and ask whether it was."""

    def __init__(self, runner: JobRunner | None = None, job_id: str | None = None) -> None:
        self._runner = runner
        self._job_id = job_id

    @property
    def dismissed(self) -> bool:
        return self._runner is not None and self._runner._dismissed(self._job_id)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0–100) and what the work is doing."""
        if self._runner is None:
            return
        if self.dismissed:
            raise JobDismissed(f"job {self._job_id} was dismissed")
        self._runner._progress(self._job_id, percent, message)


Work = Callable[[JobControl], dict[str, Any]]
"""The work of one execution: results as JSON-ready values, by output id."""


class JobRunner:
    """Runs executions as jobs on an executor and keeps them in the twin (see the module)."""

    def __init__(
        self,
        store: Store,
        executor: Executor | None = None,
        *,
        workers: int = 2,
        retention: dt.timedelta = RETENTION,
    ) -> None:
        self.store = store
        self.executor = executor or ThreadPoolExecutor(workers, thread_name_prefix="job")
        self.closed = False
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._futures: dict[str, Future[Any]] = {}
        self._stop: dict[str, threading.Event] = {}
        self._recover(retention)

    # -- running ----------------------------------------------------------------------------
    def submit(
        self,
        process: str,
        work: Work,
        *,
        owner: str | None,
        department: str | None,
        request: dict[str, Any],
    ) -> Job:
        """Accept a job for ``work`` and queue it; returns the accepted job."""
        now = utc_now()
        job = Job(
            id=str(uuid.uuid4()),
            process=process,
            message="accepted, waiting for a worker",
            created=now,
            updated=now,
            owner=owner,
            department=department,
            request=request,
        )
        with self._lock:
            if self.closed:
                raise InvalidInput("the service is stopping", hint="try again in a moment")
            self._jobs[job.id] = job
            self._stop[job.id] = threading.Event()
            self._save(job)
            future = self.executor.submit(self._execute, job.id, work)
            self._futures[job.id] = future
        future.add_done_callback(partial(self._finish, job.id))
        return job

    def run(self, work: Work) -> Future[dict[str, Any]]:
        """Run ``work`` on the executor without a job (a synchronous execution): the
        executor bounds how many analyses run at once."""
        return self.executor.submit(work, JobControl())

    def _execute(self, job_id: str, work: Work) -> dict[str, Any]:
        control = JobControl(self, job_id)
        with self._lock:
            if self._dismissed(job_id):
                raise JobDismissed(f"job {job_id} was dismissed before it ran")
            now = utc_now()
            self._set(job_id, status="running", started=now, updated=now, message="running")
        return work(control)

    def _finish(self, job_id: str, future: Future[Any]) -> None:
        exc: BaseException | None = None
        if not future.cancelled():
            exc = future.exception()
            if exc is None:
                try:  # outside the lock: results can be large
                    self.store.put_document(RESULT_DOCUMENTS + job_id, future.result())
                except Exception as error:  # results that can't be kept fail the job
                    log.exception("job %s: results not stored", job_id)
                    exc = error
        with self._lock:
            self._futures.pop(job_id, None)
            job = self._jobs.get(job_id)
            if job is None or job.status == "dismissed":
                if exc is None and not future.cancelled():
                    self.store.delete_document(RESULT_DOCUMENTS + job_id)
                return
            error = None
            if future.cancelled():
                status, message = "failed", "the service stopped before the job ran; run it again"
            elif exc is None:
                status, message = "successful", "done"
            elif isinstance(exc, JobDismissed) and self.closed:
                status, message = "failed", "the service stopped while the job ran; run it again"
            else:
                status = "failed"
                message, error = describe_failure(exc)
            now = utc_now()
            progress = 100 if status == "successful" else job.progress
            self._set(
                job_id,
                status=status,
                message=message,
                error=error,
                progress=progress,
                finished=now,
                updated=now,
            )

    def _progress(self, job_id: str | None, percent: float, message: str | None) -> None:
        if job_id is None:
            return
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "running":
                return
            changes: dict[str, Any] = {"progress": int(max(0, min(100, percent)))}
            if message:
                changes["message"] = message
            self._set(job_id, updated=utc_now(), **changes)

    def _dismissed(self, job_id: str | None) -> bool:
        stop = self._stop.get(job_id) if job_id is not None else None
        return stop is not None and stop.is_set()

    # -- reading and dismissing -------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job ``job_id``; ``NotFound`` when there is none."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", hint="GET /jobs lists your jobs")
        return job

    def jobs(
        self,
        *,
        owner: str | None = None,
        everyone: bool = False,
        processes: list[str] | None = None,
        statuses: list[str] | None = None,
    ) -> list[Job]:
        """Jobs of ``owner`` (or of ``everyone``), newest first, of the given processes and
        statuses (None: any)."""
        with self._lock:
            found = list(self._jobs.values())
        return sorted(
            (
                j
                for j in found
                if (everyone or (owner is not None and j.owner == owner))
                and (processes is None or j.process in processes)
                and (statuses is None or j.status in statuses)
            ),
            key=lambda j: (j.created, j.id),
            reverse=True,
        )

    def results(self, job_id: str) -> dict[str, Any]:
        """The results of a successful job (``NotFound`` when they are gone)."""
        doc = self.store.get_document(RESULT_DOCUMENTS + job_id)
        if doc is None:
            raise NotFound(f"job {job_id!r} has no results (any more)")
        return doc

    def dismiss(self, job_id: str) -> Job:
        """Dismiss a job: an accepted or running one is cancelled (its work stops at its next
        progress report, its results are never kept) and stays listed as dismissed; a
        finished one is removed with its results. Returns the job as dismissed."""
        with self._lock:
            job = self.get(job_id)
            now = utc_now()
            if not job.done:
                self._stop[job_id].set()
                future = self._futures.get(job_id)
                if future is not None:
                    future.cancel()
                return self._set(
                    job_id, status="dismissed", finished=now, updated=now, message="dismissed"
                )
            self._jobs.pop(job_id)
            self._stop.pop(job_id, None)
            self.store.delete_document(RESULT_DOCUMENTS + job_id)
            self.store.delete_document(JOB_DOCUMENTS + job_id)
        return replace(job, status="dismissed", updated=now, message="dismissed and removed")

    def close(self) -> None:
        """Stop: queued jobs fail (they never ran), running ones are asked to stop at their
        next progress report and are waited for."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for stop in self._stop.values():
                stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- keeping ----------------------------------------------------------------------------
    def _set(self, job_id: str, **changes: Any) -> Job:
        job = replace(self._jobs[job_id], **changes)
        self._jobs[job_id] = job
        self._save(job)
        return job

    def _save(self, job: Job) -> None:
        self.store.put_document(JOB_DOCUMENTS + job.id, job.to_document())

    def _recover(self, retention: dt.timedelta) -> None:
        oldest = (dt.datetime.now(dt.UTC) - retention).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for key, doc in self.store.get_documents(JOB_DOCUMENTS).items():
            try:
                job = Job.from_document(doc)
            except TypeError:
                log.warning("document %s is not a job; left alone", key)
                continue
            if job.done and (job.finished or job.updated) < oldest:
                self.store.delete_document(RESULT_DOCUMENTS + job.id)
                self.store.delete_document(key)
                continue
            self._jobs[job.id] = job
            self._stop[job.id] = threading.Event()
            if not job.done:
                now = utc_now()
                self._set(
                    job.id,
                    status="failed",
                    finished=now,
                    updated=now,
                    message=f"the service stopped while the job was {job.status}; run it again",
                )


def describe_failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """The message of a failed job and the exception its results answer with: the HTTP
    status that fits the reason (400 for bad input, 404 for something missing, 500 for an
    error of the service)."""
    if isinstance(exc, InvalidInput):
        status, title = 400, "invalid input"
    elif isinstance(exc, NotFound):
        status, title = 404, "not found"
    elif isinstance(exc, Unauthorized | Forbidden):
        status, title = (401 if isinstance(exc, Unauthorized) else 403), "not allowed"
    elif isinstance(exc, CityTwinError):
        status, title = 400, "the job could not be done"
    else:
        log.error("job failed", exc_info=exc)
        status, title = 500, "internal error"
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if status == 500:
        detail = f"{type(exc).__name__}: {detail}"
    error = {"status": status, "title": title, "detail": detail}
    hint = getattr(exc, "hint", None)
    if hint:
        error["hint"] = hint
    return detail, error

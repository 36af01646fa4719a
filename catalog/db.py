"""The SQL index: one writer (the job driver), one transaction per finished video.

SQLite in the output folder is the default (WAL mode, so searches read while a job writes); any
SQLAlchemy URL (PostgreSQL) works through --db. Statements are built by SQLAlchemy with bound
parameters only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, delete, event, inspect, make_url, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from catalog.archive import VideoFile, video_fingerprint
from catalog.outcome import VideoOutcome
from catalog.records import JobSummary
from schemas import migrations
from schemas.errors import InputError, VidxError
from schemas.retry import GaveUp, RetryPolicy, call_with_retries
from schemas.sql import SQL_SCHEMA_VERSION, Job, Meta, PersonTrack, Run, Task, Track, Video, db_clock, utcnow
from schemas.vectors import has_track_vectors, insert_track_vectors

log = logging.getLogger(__name__)


class IndexError_(VidxError):
    """The SQL index cannot be opened or written."""


class NoIndexError(InputError):
    """A command that reads the index was pointed at a place that holds none."""


class DatabaseURLError(InputError):
    """--db is not a URL SQLAlchemy can open (a typo, an unknown dialect, a driver that is not installed)."""


def default_db_url(out_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(out_dir).expanduser().resolve() / 'index.sqlite'}"


DB_RETRY_S = float(os.environ.get("VIDX_DB_RETRY_S", "60"))
"""How long a transaction is retried while the database is locked or unreachable, before a clear error."""
LOCK_WAIT_S = 5.0
"""How long one attempt waits on a lock (SQLite busy timeout, PostgreSQL lock_timeout) before it fails and
the retry loop backs off: a lock that is never released ends in a clear error instead of a hung job."""
NO_INDEX_HINT = "index videos first with `vidx index ARCHIVE --out OUT`, or give the --out / --db of an existing index"
P = ParamSpec("P")
R = TypeVar("R")


def is_transient(exc: DBAPIError) -> bool:
    """A lock, a dropped connection or a server that is (re)starting: worth retrying the transaction."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:  # PostgreSQL: connection, serialization/deadlock, too many connections, shutdown
        return str(sqlstate).startswith(("08", "40", "53300", "55P03", "57P"))  # 55P03: lock_timeout
    message = str(exc.orig).lower()
    if "locked" in message or "busy" in message:  # SQLite
        return True
    return bool(getattr(exc.orig, "__module__", "").startswith("psycopg"))  # no SQLSTATE: cannot connect


def is_lock(exc: DBAPIError) -> bool:
    """A lock held by another transaction (not a connection failure)."""
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    message = str(exc.orig).lower()
    return sqlstate.startswith(("40", "55P03")) or "locked" in message or "busy" in message


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc  # the driver's own error, for a DBAPIError
    text_ = str(orig).strip()
    return text_.splitlines()[0] if text_ else type(orig).__name__


def retrying(method: Callable[Concatenate[Catalog, P], R]) -> Callable[Concatenate[Catalog, P], R]:
    """Run a Catalog method (one or more whole transactions) again while the database is briefly unavailable.

    Every decorated method is safe to re-run: a failed transaction was rolled back, and the writes are
    idempotent (record replaces a video's tracks; finish_job rewrites the same summary).
    """

    @functools.wraps(method)
    def wrapper(self: Catalog, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.retry(method.__name__, lambda: method(self, *args, **kwargs))

    return wrapper


CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take (a host that drops packets would otherwise hang for minutes)."""


def parse_db_url(url: str) -> URL:
    """The URL parsed, or a DatabaseURLError that names it and says what a good one looks like."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError("not a database URL", path=url, hint="e.g. sqlite:////abs/path/index.sqlite or "
                               "postgresql+psycopg://user:pass@host/db") from exc
    return parsed


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory ones."""
    if url.get_backend_name() != "sqlite" or url.query.get("uri") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database or "")


def make_engine(url: str, *, lock_wait_s: float = LOCK_WAIT_S, make_dirs: bool = True) -> Engine:
    parsed = parse_db_url(url)
    where = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(parsed)
        if path is not None and make_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path is not None and not path.parent.is_dir():  # a typo must not leave folders behind
            raise NoIndexError(f"the folder {path.parent} does not exist", path=where,
                               hint="check the path given with --db or --out")
        engine = create_engine(url, connect_args={"timeout": lock_wait_s})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    try:
        dialect = parsed.get_dialect()
        connect_args = ({"connect_timeout": CONNECT_TIMEOUT_S}
                        if dialect.name == "postgresql" and "connect_timeout" not in parsed.query else {})
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError as exc:
        hint = ("PostgreSQL URLs start with postgresql+psycopg://" if parsed.drivername.startswith("postgres")
                else "e.g. sqlite:////abs/path/index.sqlite or postgresql+psycopg://user:pass@host/db")
        raise DatabaseURLError(f"unknown database kind {parsed.drivername!r}", path=where, hint=hint) from exc
    except ImportError as exc:
        hint = ("pip install -e '.[postgres]'" if parsed.get_backend_name() == "postgresql"
                else "install the Python driver this URL names")
        raise DatabaseURLError(f"the database driver for {parsed.drivername!r} is not installed ({exc})", path=where,
                               hint=hint) from exc
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _lock_timeout(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{max(1, round(lock_wait_s * 1000))}ms",))
            cur.close()
            conn.commit()  # settings made in a transaction that is rolled back would be undone

    return engine


@dataclass
class Superseded:
    """Results of older runs that a newly committed video replaced (their files can go)."""

    video_id: int
    run_keys: list[str] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)


def pgvector_status(engine: Engine) -> Literal["installed", "available", "absent"]:
    """Whether the pgvector extension is created in this database, only installable on its server, or absent.

    Embeddings are stored portably as bytes everywhere; search may add an ANN index where this says
    "installed" (or create the extension where it says "available" and it has the right).
    """
    if engine.dialect.name != "postgresql":
        return "absent"
    with engine.connect() as conn:
        row = conn.execute(text("SELECT installed_version FROM pg_available_extensions WHERE name = :name"),
                           {"name": "vector"}).first()
    if row is None:
        return "absent"
    return "installed" if row[0] is not None else "available"


class Catalog:
    """The SQL index of one output folder: opened (and migrated to the current schema) once per process."""

    def __init__(self, url: str, *, retry_s: float = DB_RETRY_S, lock_wait_s: float = LOCK_WAIT_S,
                 create: bool = True, make_dirs: bool = True):
        """Open (`create`: or create) the index at `url`; `make_dirs` lets a SQLite file's folder be created.

        Without `create`, a place that holds no index is a NoIndexError and nothing is written there.
        """
        self.url = url
        self.where = parse_db_url(url).render_as_string(hide_password=True)
        self.retry_s = retry_s
        if not create and (path := sqlite_file(parse_db_url(url))) is not None and not path.is_file():
            raise NoIndexError("no vidx index here (the file does not exist)", path=self.where, hint=NO_INDEX_HINT)
        try:
            self.engine = make_engine(url, lock_wait_s=lock_wait_s, make_dirs=make_dirs)
        except OperationalError as exc:
            raise IndexError_(f"cannot open the SQL index: {exc.orig}", path=self.where) from exc
        self._connect_once(create)
        self.migration = self.retry("open", lambda: migrations.upgrade(self.engine, where=self.where))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.retry("open", self._stamp_version)
        self.vectors_in_db = self.retry("open", self._has_track_vectors)
        """True where tracks' vectors are also kept in the database for pgvector search (schemas/vectors.py)."""

    def _has_track_vectors(self) -> bool:
        with self.engine.connect() as conn:
            return has_track_vectors(conn)

    def _connect_once(self, create: bool) -> None:
        """Connect before anything else: a server that is down or a URL that points nowhere fails now, in one
        line (the retries are for locks, and for a database that goes away during a job)."""

        def attempt() -> list[str]:
            try:
                with self.engine.connect() as conn:
                    return list(inspect(conn).get_table_names())
            except DBAPIError as exc:
                if is_lock(exc):  # another process holds the database: self.retry waits for it
                    raise
                self.engine.dispose()
                raise IndexError_(f"cannot connect to the SQL index: {first_line(exc)}", path=self.where,
                                  hint="check the --db URL and that the database server is up") from exc

        tables = self.retry("open", attempt)
        if not create and "videos" not in tables:
            self.engine.dispose()
            raise NoIndexError("no vidx index in this database", path=self.where, hint=NO_INDEX_HINT)

    def _stamp_version(self) -> None:
        with contextlib.suppress(IntegrityError), self.session() as s:  # IntegrityError: a concurrent opener did it
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=str(SQL_SCHEMA_VERSION)))

    def retry(self, what: str, fn: Callable[[], R]) -> R:
        """Call `fn` (whole transactions) again with backoff while the database is locked or unreachable."""

        def give_up(last: GaveUp) -> IndexError_:
            return IndexError_(
                f"the SQL index is unavailable ({what}): {first_line(last.error)}; gave up after {last.attempts} "
                f"attempts in {last.seconds:.1f} s", path=self.where,
                hint="check that the database server is up and that no other process holds a lock; "
                     "the job can be resumed")

        def on_retry(exc: BaseException, delay: float) -> None:  # quiet unless -v: the final error says it once
            log.info("SQL index busy or unreachable (%s: %s); retrying in %.2f s", what, first_line(exc), delay)

        try:
            return call_with_retries(fn, RetryPolicy(seconds=self.retry_s), errors=(DBAPIError,),
                                     transient=lambda exc: isinstance(exc, DBAPIError) and is_transient(exc),
                                     give_up=give_up, on_retry=on_retry)
        except OperationalError as exc:  # not transient: disk full, read-only, I/O error: say so, plainly
            raise IndexError_(f"the SQL index cannot be written ({what}): {first_line(exc)}", path=self.where,
                              hint="free space or fix the database, then resume the job") from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as s:
            yield s

    @retrying
    def ensure_run(self, key: str, pipeline_version: str, models: dict[str, str], params: dict[str, Any]) -> Run:
        """The run with this key, created if new; a concurrent driver creating the same one is no error."""
        for attempt in range(2):
            try:
                with self.session() as s:
                    run = s.scalar(select(Run).where(Run.key == key))
                    if run is None:
                        run = Run(key=key, pipeline_version=pipeline_version, models=models, params=params)
                        s.add(run)
                        s.flush()
                    return run
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @retrying
    def register(self, files: list[VideoFile]) -> list[Video]:
        """Upsert video rows; the fingerprint is recomputed only when size or mtime changed."""
        out = []
        with self.session() as s:
            existing = {v.path: v for v in s.scalars(select(Video).where(Video.path.in_([str(f.path) for f in files])))}
            for f in files:
                v = existing.get(str(f.path))
                if v is None:
                    v = Video(path=str(f.path), size=f.size, mtime=f.mtime, fingerprint=video_fingerprint(f))
                    s.add(v)
                elif v.size != f.size or abs(v.mtime - f.mtime) > 1e-6:
                    v.size, v.mtime = f.size, f.mtime
                    v.fingerprint = video_fingerprint(f)
                out.append(v)
            s.flush()
        return out

    @retrying
    def record(self, outcome: VideoOutcome, run: Run, task_id: int | None = None) -> Superseded:
        """Commit one video's outcome in one transaction; says which older results it replaced.

        Search reads tracks from this database, so it sees either the old tracks or the new ones,
        never both or neither. The replaced run's files are deleted after the commit by the caller.
        """
        superseded = Superseded(outcome.video_id)
        with self.session() as s:
            video = s.get(Video, outcome.video_id)
            if video is None:
                raise IndexError_(f"video {outcome.video_id} vanished from the index")
            now = utcnow()
            if outcome.status == "done":
                old: list[Track | PersonTrack] = [
                    *s.scalars(select(Track).where(Track.video_id == video.id, Track.run_id != run.id)),
                    *s.scalars(select(PersonTrack).where(PersonTrack.video_id == video.id,
                                                         PersonTrack.run_id != run.id))]
                superseded.thumbnails = [t.thumbnail for t in old if t.thumbnail]
                old_runs = {t.run_id for t in old}
                s.execute(delete(Track).where(Track.video_id == video.id))
                s.execute(delete(PersonTrack).where(PersonTrack.video_id == video.id))
                tracks = [Track(video_id=video.id, run_id=run.id, track_index=t.track_index, start_s=t.start_s,
                                end_s=t.end_s, n_faces=t.n_faces, embedding=t.embedding, quality=t.quality,
                                best_pts_s=t.best_pts_s, thumbnail=t.thumbnail,
                                person_track_index=t.person_track_index) for t in outcome.tracks]
                s.add_all(tracks)
                if self.vectors_in_db and tracks:
                    s.flush()  # the new tracks' ids; the old ones' vectors went with them (ON DELETE CASCADE)
                    insert_track_vectors(s.connection(), [(t.id, t.embedding) for t in tracks])
                s.add_all(PersonTrack(video_id=video.id, run_id=run.id, track_index=p.track_index, start_s=p.start_s,
                                      end_s=p.end_s, n_detections=p.n_detections, best_pts_s=p.best_pts_s,
                                      thumbnail=p.thumbnail) for p in outcome.person_tracks)
                if video.run_id is not None and video.run_id != run.id:
                    old_runs.add(video.run_id)
                superseded.run_keys = list(s.scalars(select(Run.key).where(Run.id.in_(old_runs))))
                video.status, video.error, video.run_id, video.indexed_at = "indexed", None, run.id, now
                video.codec, video.width, video.height = outcome.codec, outcome.width, outcome.height
                video.fps, video.duration_s = outcome.fps, outcome.duration_s
                video.frames_decoded, video.frames_analysed = outcome.frames_decoded, outcome.frames_analysed
            elif outcome.status == "failed":
                if video.run_id is None:
                    video.status = "failed"
                video.error = outcome.error
            if task_id is not None:
                s.execute(update(Task).where(Task.id == task_id).values(
                    status=outcome.status, error=outcome.error, finished_at=now, frames=outcome.frames_decoded,
                    elapsed_s=outcome.elapsed_s, worker=outcome.worker, duration_s=outcome.duration_s))
        return superseded

    # ------------------------------------------------------------------------------------- jobs

    @retrying
    def finish_job(self, job_id: int, status: str) -> JobSummary:
        summary = self.job_summary(job_id)
        with self.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=db_clock(s),
                                                                 summary=summary.to_json()))
        return summary

    @retrying
    def job_summary(self, job_id: int) -> JobSummary:
        from sqlalchemy import func

        with self.session() as s:
            rows = s.execute(select(Task.status, func.count(), func.coalesce(func.sum(Task.frames), 0))
                             .where(Task.job_id == job_id).group_by(Task.status)).all()
            failed = s.execute(select(Task.path, Task.error).where(Task.job_id == job_id, Task.status == "failed")
                               .order_by(Task.path)).all()
        counts = {status: n for status, n, _ in rows}
        return JobSummary(job_id=job_id, videos=sum(counts.values()), done=counts.get("done", 0),
                          skipped=counts.get("skipped", 0), failed=counts.get("failed", 0),
                          queued=counts.get("queued", 0), running=counts.get("running", 0),
                          frames_decoded=sum(int(fr or 0) for _, _, fr in rows),
                          failures=[{"path": p, "error": e} for p, e in failed])

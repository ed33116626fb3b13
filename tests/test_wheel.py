"""The package as a user gets it: ``python -m build`` makes a wheel and an sdist, and the wheel, installed into a
fresh virtual environment, runs a small service on SQLite (migrations, command, relay, consumer) and the CLI.

The slow part of the suite (about 15 s here: a build in an isolated environment, a venv, a pip install
from the package index's cache), marked ``slow`` so ``-m 'not slow'`` leaves it out of a quick run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SERVICE = textwrap.dedent(
    '''
    import asyncio, sys, tempfile
    from pathlib import Path

    import tidings
    from tidings import Application, Command, DomainEvent, IntegrationEvent, StateStoredAggregate, UnitOfWork, applies, open_store
    from tidings.brokers.local import LocalBroker
    from tidings.runtime import Consumer, HandlerContext, Relay


    class Opened(DomainEvent):
        owner: str


    class Open(Command):
        account_id: str
        owner: str


    class AccountOpened(IntegrationEvent, name="bank.AccountOpened"):
        account_id: str
        owner: str


    class Account(StateStoredAggregate):
        owner: str = ""

        @applies
        def _opened(self, event: Opened) -> None:
            self.owner = event.owner


    async def main() -> None:
        assert "site-packages" in tidings.__file__, tidings.__file__  # the installed copy, not the source tree
        store = await open_store(f"sqlite:///{Path(tempfile.mkdtemp()) / 'bank.db'}")
        app = Application(store, name="bank")

        @app.command_handler(Open)
        def open_account(command: Open, uow: UnitOfWork) -> Account:
            account = Account(command.account_id)
            account.record(Opened(owner=command.owner))
            uow.publish(AccountOpened(account_id=command.account_id, owner=command.owner), key=command.account_id)
            return account

        seen = []
        welcome = Consumer("welcome", store, LocalBroker(store), topics=["bank.AccountOpened"])

        @welcome.handler(AccountOpened)
        async def greet(event: AccountOpened, ctx: HandlerContext) -> None:
            seen.append(event.owner)

        stop = asyncio.Event()
        task = asyncio.create_task(welcome.run(stop))
        await app.handle(Open(account_id="a-1", owner="ada"))
        await Relay(store, LocalBroker(store)).drain()
        for _ in range(400):
            if seen:
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task
        assert seen == ["ada"], seen
        assert (await app.load(Account, "a-1")).owner == "ada"
        await store.close()
        print("service ok")


    asyncio.run(main())
    '''
)


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_service(tmp_path: Path) -> None:
    # Given a copy of the project (the build writes build/ and *.egg-info next to the sources)
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))

    # When it is built: an sdist, and a wheel built from that sdist
    _run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", project, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("tidings-*.whl")
    assert list((tmp_path / "dist").glob("tidings-*.tar.gz")), "no sdist was built"
    names = set(zipfile.ZipFile(wheel).namelist())
    # Then the wheel carries the typing marker and the SQL migrations of both stores
    assert "tidings/py.typed" in names
    assert any(n.startswith("tidings/store/migrations/sqlite/") and n.endswith(".sql") for n in names)
    assert any(n.startswith("tidings/store/migrations/postgresql/") and n.endswith(".sql") for n in names)

    # And installed into a fresh venv, it runs a service and its CLI
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=tmp_path)
    (tmp_path / "service.py").write_text(SERVICE)
    assert "service ok" in _run(python, tmp_path / "service.py", cwd=tmp_path, timeout=120)
    assert "relay" in _run(venv / "bin" / "tidings", "--help", cwd=tmp_path, timeout=60)

"""A private PostgreSQL cluster in a folder we own: the laptop default of `apex serve` and the tests.

With no database URL, `apex serve` runs `initdb` once into its data folder and starts a
`postgres` that listens on a Unix socket only (no TCP port; the socket folder is mode
0700, so only this user can connect; `trust` authentication is safe behind that). The
same code gives the tests a throwaway cluster. PostgreSQL refuses to run as root, so
as root the server binaries run as the `postgres` user (`runuser`) and the folders are
handed to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PORT = 5432  # only names the socket file (.s.PGSQL.5432); each cluster has its own socket folder
SUPERUSER = "apex"


class PostgresError(RuntimeError):
    """The private cluster cannot be created or started."""


def find_bin_dir() -> Path | None:
    """Folder holding initdb and pg_ctl: $APEX_PG_BIN, the PATH, then Debian's /usr/lib/postgresql/N/bin."""
    if os.environ.get("APEX_PG_BIN"):
        return Path(os.environ["APEX_PG_BIN"])
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parents[1].name) if Path(p).parents[1].name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _as_owner(cmd: list[str]) -> list[str]:
    """As root, run a server binary as the `postgres` user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresError("running as root needs `runuser` to start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *cmd]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class LocalPostgres:
    """One cluster in `data_dir` (created on first start), reached through a private socket folder."""

    def __init__(self, data_dir: str | Path, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise PostgresError("PostgreSQL server binaries (initdb, pg_ctl) not found: install the "
                                "`postgresql` package, set APEX_PG_BIN, or point APEX_DATABASE_URL at a server")
        self.cluster = self.data_dir / "pgdata"
        # Unix socket paths are limited to about 100 bytes: keep the socket folder short.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="apex-pg-"))
        os.chmod(self.socket_dir, 0o700)
        _give_to_postgres(self.socket_dir)

    @property
    def url(self) -> str:
        """libpq connection string for the `postgres` database as the cluster's superuser."""
        return f"host={self.socket_dir} port={PORT} user={SUPERUSER} dbname=postgres"

    def _run(self, *args: str) -> None:
        proc = subprocess.run(_as_owner([str(self.bin_dir / args[0]), *args[1:]]), capture_output=True, text=True)
        if proc.returncode != 0:
            raise PostgresError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def start(self) -> str:
        """initdb when the folder is new, then start and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.cluster / "PG_VERSION").is_file():
            self.cluster.mkdir(mode=0o700, exist_ok=True)
            _give_to_postgres(self.cluster)
            self._run("initdb", "-D", str(self.cluster), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--no-locale", "--no-instructions")
        log = self.data_dir / "postgres.log"
        if os.geteuid() == 0 and not log.exists():
            log.touch()
            _give_to_postgres(log)
        options = f"-k {self.socket_dir} -p {PORT} -c listen_addresses='' -c unix_socket_permissions=0700"
        self._run("pg_ctl", "-D", str(self.cluster), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        return self.url

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions); a stopped cluster is left as is."""
        if (self.cluster / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.cluster), "-m", "fast",
                                      "-w", "stop"]), capture_output=True, text=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

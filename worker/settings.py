"""Every setting in one object: defaults of the house plan, then an optional TOML file
(LUMBARNODE_CONFIG_FILE), then environment variables LUMBARNODE_<NAME>, the last winning.

The embedded defaults need no server: everything lives under `data_dir` (spool, results,
the SQLite job database, the SQLite broker of the embedded Celery queue), by default the
user's state folder ($XDG_STATE_HOME/lumbarnode, else ~/.local/state/lumbarnode), so that
every command finds the same node whatever the current folder. A relative path in the
config file is taken from the config file's folder.

This is the one place where settings are checked: a value that cannot be used raises
`SettingsError`, whose message names the variable and the form expected (the command line
prints it as one line and exits 2); an unknown LUMBARNODE_* variable is warned about with
the closest setting's name.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import sys
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_io import tls, uids

if TYPE_CHECKING:
    from dicom_io.stow import WebAuth

REPOSITORY = Path(__file__).resolve().parents[1]
_PREFIX = "LUMBARNODE_"
# LUMBARNODE_* variables that are not settings: the config file's path, the compose files'
# interpolation variables (compose/*.yml) and the test suite's.
OTHER_VARIABLES = frozenset({
    "CONFIG_FILE", "IMAGE", "TAG", "CACHE", "DICOM_BIND", "DICOM_PORT", "PRIVATE_BIND", "REDIS_HOST", "DB_HOST",
    "NFS_SERVER", "NFS_EXPORT", "SHARED_DATA", "TLS_DIR", "GPU_WORKERS", "GPU_DEVICE", "EXPORT_CONCURRENCY",
    "FUZZ_CASES",
})
INCOMPLETE_SERIES_CHOICES = ("skip", "measure")
DICOMWEB_AUTH_CHOICES = ("none", "basic", "bearer")  # dicom_io.stow.AUTH_KINDS
ADMIN_ROLES = ("viewer", "operator", "admin", "sender")  # db.access.Role (settings import nothing from db)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says what is expected."""


def variable(name: str) -> str:
    """The environment variable of a setting: 'port' -> 'LUMBARNODE_PORT'."""
    return f"{_PREFIX}{name.upper()}"


def default_data_dir(environ: dict[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/lumbarnode, else ~/.local/state/lumbarnode (the XDG base directory spec)."""
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "lumbarnode"


@dataclass(frozen=True)
class Destination:
    """A DICOM node to send to: AE title, host, port ("AE@host:port")."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"\s*([^@\s]{1,16})@([^:\s]+):(\d{1,5})\s*", text)
        if not match or not 0 < int(match.group(3)) < 65536:
            raise SettingsError(f"{text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(match.group(1), match.group(2), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb service to send to by STOW-RS: its root URL (http:// or https://)."""

    url: str

    @classmethod
    def parse(cls, text: str) -> WebDestination:
        url = text.strip()
        match = re.fullmatch(r"(https?)://([^/@\s]+@)?[^/\s]+(/\S*)?", url)
        if not match:
            raise SettingsError(f"{text!r}: expected a DICOMweb URL, e.g. https://pacs.example.org/dicom-web")
        if match.group(2):
            raise SettingsError(f"{text!r}: no credentials in the URL (it is shown in logs and on the admin page); "
                                f"set {variable('dicomweb_auth')} and {variable('dicomweb_secret_file')}")
        return cls(url.rstrip("/"))

    def __str__(self) -> str:
        return self.url


def parse_destination(text: str) -> Destination | WebDestination:
    """"AE@host:port" (DICOM, C-STORE) or "https://host/dicom-web" (DICOMweb, STOW-RS)."""
    return WebDestination.parse(text) if re.match(r"\s*https?://", text) else Destination.parse(text)


def parse_callers(text: str) -> dict[str, Destination | WebDestination | None]:
    """"CALLING_AE=RETURN_AE@host:port,OTHER_AE=https://pacs/dicom-web,THIRD_AE" -> {calling AE:
    its return address or None}."""
    callers: dict[str, Destination | WebDestination | None] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        ae, _, address = entry.partition("=")
        if not ae.strip() or len(ae.strip()) > 16:
            raise SettingsError(f"allowed caller {entry!r}: the calling AE title must be 1 to 16 characters")
        callers[ae.strip()] = parse_destination(address) if address.strip() else None
    return callers


@dataclass(frozen=True)
class Settings:
    # the method
    model_dir: Path = REPOSITORY / "models"
    # one model name, or the members of an ensemble, comma-separated (the first names the result);
    # "name:flip" is that network again on the mirrored slices (opt-in: models/MODEL_CARD.md)
    segmentation_model: str = "unet_4class"
    classifier_model: str = "deteclordose"
    lla_low_deg: float = 39.0  # below: hypolordosis
    lla_high_deg: float = 53.0  # at or above: hyperlordosis
    max_obliquity_deg: float = 30.0  # sagittal series may be this oblique
    # the results
    uid_root: str = ""  # organisation UID root of the results; empty: 2.25 UIDs (no registration needed)
    key_image: bool = True  # also send a Secondary Capture of the measured slice with the result burned in
    institution_name: str = ""  # written into the results' equipment module when set
    # the node
    ae_title: str = "LUMBARNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_callers: str = ""  # "CALLING_AE=RETURN_AE@host:port,..." (see parse_callers)
    require_known_caller: bool = True  # reject calling AE titles not in allowed_callers
    destination: str = ""  # "AE@host:port": overrides every caller's return address
    quiet_period_s: float = 2.0  # a series is complete this long after its last instance
    lumbar_body_parts: str = "LSPINE,LUMBAR,LSSPINE,LUMBOSACRAL,SPINE,TLSPINE,L-SPINE"
    lumbar_description_pattern: str = r"(?i)lumb|l-?spine|\blws\b|lendenw|rachis lomb"
    incomplete_series: str = "skip"  # an aborted transfer or gaps: "skip" the series, or "measure" it with a flag
    incomplete_wait_s: float = 120.0  # how long such a series waits for its missing instances first
    export_retries: int = 5  # C-STORE attempts after the first
    export_backoff_s: float = 2.0  # wait before retry n: backoff * 2**(n-1)
    listener_processes: int = 0  # DICOM listener processes sharing the port (worker/listeners.py); 0: one per core
    inference_workers: int = 1  # worker processes `serve` starts for the inference queue
    job_timeout_s: float = 900.0  # a running job silent this long lost its worker: it is queued again
    min_free_spool_mb: int = 500  # below this much free space the listener refuses instances (0xA700)
    # STOW-RS ingest (worker/stow_server.py), in the node beside the listener; 0: off
    stow_port: int = 0
    stow_host: str = "0.0.0.0"
    stow_max_mb: int = 2048  # the largest request taken
    # the retention cleaner (worker/retention.py): days after a job ended that its input and results go;
    # `inf` keeps them. A job whose results were not delivered (export_failed) is never cleaned.
    retention_done_days: float = 7.0  # delivered (done)
    retention_failed_days: float = 30.0  # failed or skipped: kept longer, for a look at what went wrong
    admin_host: str = "127.0.0.1"  # `lumbarnode admin` (page, JSON API, /metrics): loopback unless set
    admin_port: int = 8080
    # who may use the admin page and its API (worker/admin/auth.py); users: `lumbarnode users`
    admin_session_idle_min: float = 30.0  # a browser session ends after this long unused ...
    admin_session_max_h: float = 12.0  # ... and this long after its login, in use or not
    admin_token_days: float = 90.0  # lifetime of an API token unless `users token --days` says otherwise
    admin_login_max_failures: int = 5  # wrong passwords in a row that lock an account ...
    admin_lockout_min: float = 15.0  # ... for this long
    admin_tls_cert: Path | None = None  # HTTPS for the admin page: its certificate (PEM) and ...
    admin_tls_key: Path | None = None  # ... its private key; with both, cookies are Secure
    admin_secure_cookies: bool = False  # behind an HTTPS reverse proxy: cookies Secure too
    admin_trusted_proxies: str = ""  # proxy addresses whose X-Forwarded-For/-Proto are believed ("*": any)
    admin_initial_user: str = ""  # created as an admin at start while there is no user yet, with ...
    admin_initial_password_file: Path | None = None  # ... the password in this file (a secret)
    # OpenID Connect sign-in (a site's identity provider), on when the issuer is set
    oidc_issuer: str = ""  # the provider's issuer URL; discovery at <issuer>/.well-known/openid-configuration
    oidc_client_id: str = ""
    oidc_client_secret_file: Path | None = None  # the client secret, in a file (never a setting's value)
    oidc_username_claim: str = "preferred_username"  # the ID token claim that names the user (else sub)
    oidc_roles_claim: str = "groups"  # the ID token claim listing the user's groups or roles
    oidc_role_map: str = "lumbarnode-admin=admin,lumbarnode-operator=operator,lumbarnode-viewer=viewer"
    # DICOM TLS (see dicom_io.tls): PEM files
    tls_cert: Path | None = None  # the node's certificate; with tls_key the listener speaks TLS only
    tls_key: Path | None = None  # its private key, unencrypted
    tls_ca: Path | None = None  # trusted CA: callers must present a certificate it issued; verifies the PACS
    export_tls: bool = False  # export over TLS (verifying the destination against tls_ca, presenting tls_cert)
    # DICOMweb destinations (a return address or DESTINATION that is an http(s):// URL): STOW-RS
    dicomweb_auth: str = "none"  # none, basic or bearer
    dicomweb_username: str = ""  # basic
    dicomweb_secret_file: Path | None = None  # the password (basic) or the token (bearer), in a file
    dicomweb_ca: Path | None = None  # PEM CA(s) an https:// destination is verified against; default the system's
    dicomweb_verify_tls: bool = True  # false: no certificate check (a test bench only)
    # per destination: a TOML file of tables ["https://pacs/dicom-web"] with auth, username,
    # secret_file, ca, verify_tls (each overriding the DICOMWEB_* above for URLs that begin so)
    dicomweb_destinations_file: Path | None = None
    # where things live
    data_dir: Path | None = None  # default: default_data_dir(); relative: from the working directory
    spool_dir: Path | None = None  # default data_dir/spool
    results_dir: Path | None = None  # default data_dir/results
    database_url: str = ""  # SQLAlchemy URL; default sqlite:///data_dir/lumbarnode.db
    broker_url: str = ""  # Celery broker; default SQLite via kombu (sqla+sqlite:///data_dir/broker.db)

    def __post_init__(self) -> None:
        data = (self.data_dir or default_data_dir()).expanduser().resolve()
        object.__setattr__(self, "data_dir", data)
        object.__setattr__(self, "spool_dir", (self.spool_dir or data / "spool").expanduser().resolve())
        object.__setattr__(self, "results_dir", (self.results_dir or data / "results").expanduser().resolve())
        object.__setattr__(self, "database_url", self.database_url or f"sqlite:///{data / 'lumbarnode.db'}")
        object.__setattr__(self, "broker_url", self.broker_url or f"sqla+sqlite:///{data / 'broker.db'}")
        for name in ("tls_cert", "tls_key", "tls_ca", "admin_tls_cert", "admin_tls_key", "admin_initial_password_file",
                     "oidc_client_secret_file", "dicomweb_secret_file", "dicomweb_ca",
                     "dicomweb_destinations_file"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser().resolve())
        self._check()

    def _check(self) -> None:
        """Every value usable, or a SettingsError naming its variable (at start, not at the first
        association or the first job)."""
        def bad(name: str, expected: str) -> SettingsError:
            return SettingsError(f"{variable(name)}={getattr(self, name)!r}: {expected}")

        try:
            parse_callers(self.allowed_callers)
        except SettingsError as exc:
            raise SettingsError(f"{variable('allowed_callers')}: {exc}; the list is "
                                "CALLING_AE=RETURN_AE@host:port,OTHER_AE=...") from None
        if self.destination:
            try:
                parse_destination(self.destination)
            except SettingsError as exc:
                raise SettingsError(f"{variable('destination')}: {exc}") from None
        for name in ("port", "admin_port"):
            if not 0 < getattr(self, name) < 65536:
                raise bad(name, "expected a TCP port, 1 to 65535")
        if not 0 <= self.stow_port < 65536:
            raise bad("stow_port", "expected a TCP port, 1 to 65535, or 0 (off)")
        if self.stow_max_mb <= 0:
            raise bad("stow_max_mb", "expected a number > 0")
        if not 0 < len(self.ae_title.strip()) <= 16 or "\\" in self.ae_title:
            raise bad("ae_title", "expected an AE title of 1 to 16 characters, no backslash")
        for name in ("quiet_period_s", "incomplete_wait_s", "export_backoff_s", "export_retries", "min_free_spool_mb",
                     "retention_done_days", "retention_failed_days", "listener_processes"):
            if getattr(self, name) < 0:
                raise bad(name, "expected a number >= 0")
        for name in ("inference_workers", "job_timeout_s", "max_obliquity_deg"):
            if getattr(self, name) <= 0:
                raise bad(name, "expected a number > 0")
        if not self.lla_low_deg < self.lla_high_deg:
            raise SettingsError(f"{variable('lla_low_deg')}={self.lla_low_deg} must be below "
                                f"{variable('lla_high_deg')}={self.lla_high_deg}")
        if self.incomplete_series not in INCOMPLETE_SERIES_CHOICES:
            raise bad("incomplete_series", f"expected one of {', '.join(INCOMPLETE_SERIES_CHOICES)}")
        if self.uid_root:
            try:
                uids.check_root(self.uid_root)
            except ValueError as exc:
                raise bad("uid_root", str(exc)) from None
        try:
            re.compile(self.lumbar_description_pattern)
        except re.error as exc:
            raise bad("lumbar_description_pattern", f"not a regular expression ({exc})") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError(f"{variable('tls_cert')} and {variable('tls_key')} go together: set both "
                                "(the listener speaks TLS only) or neither")
        for name in ("admin_session_idle_min", "admin_session_max_h", "admin_token_days", "admin_login_max_failures",
                     "admin_lockout_min"):
            if getattr(self, name) <= 0:
                raise bad(name, "expected a number > 0")
        if (self.admin_tls_cert is None) != (self.admin_tls_key is None):
            raise SettingsError(f"{variable('admin_tls_cert')} and {variable('admin_tls_key')} go together: set both "
                                "(the admin page speaks HTTPS) or neither")
        if self.admin_initial_user and self.admin_initial_password_file is None:
            raise SettingsError(f"{variable('admin_initial_user')} needs {variable('admin_initial_password_file')}, "
                                "a file with its password")
        if self.oidc_issuer:
            if not re.fullmatch(r"https?://\S+", self.oidc_issuer):
                raise bad("oidc_issuer", "expected the identity provider's issuer URL, https://...")
            if not self.oidc_client_id or self.oidc_client_secret_file is None:
                raise SettingsError(f"{variable('oidc_issuer')} needs {variable('oidc_client_id')} and "
                                    f"{variable('oidc_client_secret_file')} (a file with the client secret)")
            self.oidc_roles()
        if self.dicomweb_auth not in DICOMWEB_AUTH_CHOICES:
            raise bad("dicomweb_auth", f"expected one of {', '.join(DICOMWEB_AUTH_CHOICES)}")
        if self.dicomweb_auth != "none" and self.dicomweb_secret_file is None:
            raise SettingsError(f"{variable('dicomweb_auth')}={self.dicomweb_auth} needs "
                                f"{variable('dicomweb_secret_file')}, a file with the "
                                f"{'password' if self.dicomweb_auth == 'basic' else 'token'}")
        if self.dicomweb_auth == "basic" and not self.dicomweb_username:
            raise SettingsError(f"{variable('dicomweb_auth')}=basic needs {variable('dicomweb_username')}")
        if self.dicomweb_destinations_file is not None:
            _destination_tables(self.dicomweb_destinations_file)  # readable and well-formed, at start
        if self.export_tls and self.tls_ca is None:
            raise SettingsError(f"{variable('export_tls')} needs {variable('tls_ca')}, the CA that the "
                                "destination's certificate is verified against")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, warn=None) -> Settings:
        """Settings from the environment (and the config file it names). Unknown LUMBARNODE_*
        variables are passed to `warn` (default: one line each on stderr)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        config_file = environ.get(variable("config_file"))
        if config_file:
            values.update(_read_config_file(Path(config_file).expanduser()))
        for f in fields(cls):
            raw = environ.get(variable(f.name))
            if raw is not None:
                values[f.name] = _parse(raw, f, variable(f.name))
        for message in unknown_variables(environ):
            (warn or _warn)(message)
        try:
            return cls(**values)
        except TypeError as exc:  # a TOML value of the wrong type reached a comparison
            raise SettingsError(f"{config_file}: a value has the wrong type ({exc})") from None

    def listener_tls(self) -> ssl.SSLContext | None:
        """The listener's TLS context (mutual TLS when tls_ca is set); None: plain TCP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return tls.server_context(self.tls_cert, self.tls_key, self.tls_ca)

    def dicomweb_auth_and_verify(self, url: str) -> tuple[WebAuth, bool | str]:
        """The STOW-RS credentials for the destination at `url` and what its certificate is
        verified against: its own table in DICOMWEB_DESTINATIONS_FILE (the longest URL that
        begins it), else the DICOMWEB_* settings. Secret files are read at each export: a
        rotated secret is used at once."""
        from dicom_io.stow import WebAuth

        own = _destination_table(self.dicomweb_destinations_file, url)
        auth = own.get("auth", self.dicomweb_auth)
        username = own.get("username", self.dicomweb_username)
        secret_file = own.get("secret_file", self.dicomweb_secret_file)
        ca = own.get("ca", self.dicomweb_ca)
        secret = Path(secret_file).read_text().strip() if secret_file else ""
        verify: bool | str = str(ca) if ca else True
        if not own.get("verify_tls", self.dicomweb_verify_tls):
            verify = False
        return WebAuth(auth, username, secret), verify

    def export_tls_context(self) -> ssl.SSLContext | None:
        """The exports' TLS context; None: plain TCP."""
        return tls.client_context(self.tls_ca, self.tls_cert, self.tls_key) if self.export_tls else None

    def weights(self, model: str) -> Path:
        return self.model_dir / f"{model}.weights.h5"

    def segmentation_weights(self) -> list[Path]:
        """The U-Net's weights: one file, or one per ensemble member ("name:flip": that
        network again on the mirrored slices, test-time augmentation)."""
        names = [name.strip() for name in self.segmentation_model.split(",") if name.strip()]
        return [Path(f"{self.weights(name.removesuffix(':flip'))}{':flip' if name.endswith(':flip') else ''}")
                for name in names]

    def network_files(self) -> list[Path]:
        """Each member's network file (a mirrored member's is its network's)."""
        return [Path(str(path).removesuffix(":flip")) for path in self.segmentation_weights()]

    def first_network_weights(self) -> Path:
        """The first member's network file (the shipped U-Net itself, whatever passes run it)."""
        return self.network_files()[0]

    def missing_segmentation_weights(self) -> list[Path]:
        """The U-Net weights files that are not there (a mirrored member needs its network's file)."""
        files = self.network_files()
        return [path for path in files if not path.is_file()] if files else [self.model_dir]

    def oidc_roles(self) -> dict[str, str]:
        """OIDC_ROLE_MAP "group=role,...": the identity provider's group (or role) -> lumbarnode role."""
        roles = {}
        for entry in filter(None, (part.strip() for part in self.oidc_role_map.split(","))):
            group, _, role = (part.strip() for part in entry.rpartition("="))
            if not group or role not in ADMIN_ROLES:
                raise SettingsError(f"{variable('oidc_role_map')}: {entry!r}: expected GROUP=ROLE, the role one of "
                                    f"{', '.join(ADMIN_ROLES)}")
            roles[group] = role
        return roles

    @property
    def admin_https(self) -> bool:
        """The admin page is reached over HTTPS (its own, or a proxy's): cookies are Secure."""
        return self.admin_tls_cert is not None or self.admin_secure_cookies

    @property
    def callers(self) -> dict[str, Destination | WebDestination | None]:
        return parse_callers(self.allowed_callers)

    def return_address(self, calling_ae: str) -> Destination | WebDestination | None:
        """Where the results of a study from `calling_ae` go."""
        if self.destination:
            return parse_destination(self.destination)
        return self.callers.get(calling_ae)

    @property
    def listener_count(self) -> int:
        return self.listener_processes or os.cpu_count() or 1

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def environment(self) -> dict[str, str]:
        """These settings as LUMBARNODE_* variables, for the processes a node starts."""
        out = {}
        for k, v in self.as_dict().items():
            if v is None:
                v = ""  # an unset path: empty, which reads back as None
            out[f"{_PREFIX}{k.upper()}"] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


_NAMES = tuple(f.name for f in fields(Settings))
_warned: set[str] = set()


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """A warning for each LUMBARNODE_* variable that is no setting, with the closest name."""
    messages = []
    for key in sorted(environ):
        if not key.startswith(_PREFIX):
            continue
        name = key[len(_PREFIX):]
        if name.lower() in _NAMES or name in OTHER_VARIABLES or name.startswith("TEST_"):
            continue
        close = difflib.get_close_matches(name.lower(), _NAMES, n=1, cutoff=0.6)
        hint = f"; did you mean {variable(close[0])}?" if close else "; `lumbarnode config` lists the settings"
        messages.append(f"{key} is not a lumbarnode setting and is ignored{hint}")
    return messages


def _warn(message: str) -> None:
    if message not in _warned:  # once per process
        _warned.add(message)
        print(f"lumbarnode: warning: {message}", file=sys.stderr)


def _read_config_file(path: Path) -> dict[str, object]:
    """The settings of a TOML file; relative paths in it are taken from its folder."""
    where = f"{variable('config_file')}={path}"
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{where}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"{where}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: not valid TOML ({exc})") from None
    values: dict[str, object] = {}
    for key, raw in table.items():
        f = _field(key, str(path))
        value = _parse(raw, f, f"{key} in {path}")
        if isinstance(value, Path) and not value.expanduser().is_absolute():
            value = path.resolve().parent / value
        values[f.name] = value
    return values


def _field(name: str, source: str):
    for f in fields(Settings):
        if f.name == name.lower():
            return f
    close = difflib.get_close_matches(name.lower(), _NAMES, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SettingsError(f"{source}: unknown setting {name!r}{hint}")


def _parse(raw: object, f, name: str) -> object:
    """A raw value (an environment string, or a TOML value) as the field's type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if not isinstance(raw, str):
        if "Path" in kind or (kind.startswith(("int", "float")) and isinstance(raw, bool)):
            raise SettingsError(f"{name}={raw!r}: expected {'a path' if 'Path' in kind else 'a number'}")
        if kind.startswith("float") and isinstance(raw, int):
            return float(raw)
        expected = {"bool": bool, "int": int, "float": float, "str": str}.get(kind.split(" ")[0])
        if expected is not None and not isinstance(raw, expected):
            raise SettingsError(f"{name}={raw!r}: expected {kind.split(' ')[0]}")
        return raw
    if "bool" in kind:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r}: expected true or false")
    if "Path" in kind:
        return Path(raw) if raw else None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        expected = "a whole number" if kind.startswith("int") else "a number"
        raise SettingsError(f"{name}={raw!r}: expected {expected}") from None
    return raw


_DESTINATION_KEYS = {"auth": str, "username": str, "secret_file": str, "ca": str, "verify_tls": bool}


def _destination_tables(path: Path) -> dict[str, dict[str, object]]:
    """DICOMWEB_DESTINATIONS_FILE: URL -> its settings; relative files from the file's folder."""
    where = f"{variable('dicomweb_destinations_file')}={path}"
    try:
        with open(path, "rb") as handle:
            tables = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"{where}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: not valid TOML ({exc})") from None
    out: dict[str, dict[str, object]] = {}
    for url, table in tables.items():
        if not isinstance(table, dict) or not re.match(r"https?://", url):
            raise SettingsError(f"{where}: expected tables named by destination URL, e.g. [\"https://pacs/dicom-web\"]")
        for key, value in table.items():
            if key not in _DESTINATION_KEYS or not isinstance(value, _DESTINATION_KEYS[key]):
                raise SettingsError(f"{where}: [{url!r}] {key} = {value!r}: expected one of "
                                    f"{', '.join(_DESTINATION_KEYS)} with a value of that type")
        if table.get("auth", "none") not in DICOMWEB_AUTH_CHOICES:
            raise SettingsError(f"{where}: [{url!r}] auth: one of {', '.join(DICOMWEB_AUTH_CHOICES)}")
        if table.get("auth", "none") != "none" and "secret_file" not in table:
            raise SettingsError(f"{where}: [{url!r}] auth = {table['auth']!r} needs secret_file")
        for key in ("secret_file", "ca"):
            if key in table and not Path(str(table[key])).expanduser().is_absolute():
                table[key] = str(path.resolve().parent / str(table[key]))
        out[url.rstrip("/")] = table
    return out


def _destination_table(path: Path | None, url: str) -> dict[str, object]:
    if path is None:
        return {}
    matches = [prefix for prefix in _destination_tables(path) if url.rstrip("/").startswith(prefix)]
    return _destination_tables(path)[max(matches, key=len)] if matches else {}

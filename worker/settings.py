"""Every setting in one object: defaults of the house plan, then an optional TOML file
(LUMBARNODE_CONFIG_FILE), then environment variables LUMBARNODE_<NAME>, the last winning.

The embedded defaults need no server: everything lives under `data_dir` (spool, results,
the SQLite job database, the SQLite broker of the embedded Celery queue).
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from dicom_io import tls

REPOSITORY = Path(__file__).resolve().parents[1]
_PREFIX = "LUMBARNODE_"


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
            raise ValueError(f"{text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(match.group(1), match.group(2), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_callers(text: str) -> dict[str, Destination | None]:
    """"CALLING_AE=RETURN_AE@host:port,OTHER_AE" -> {calling AE: its return address or None}."""
    callers: dict[str, Destination | None] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        ae, _, address = entry.partition("=")
        if not ae.strip() or len(ae.strip()) > 16:
            raise ValueError(f"allowed caller {entry!r}: the calling AE title must be 1 to 16 characters")
        callers[ae.strip()] = Destination.parse(address) if address.strip() else None
    return callers


@dataclass(frozen=True)
class Settings:
    # the method
    model_dir: Path = REPOSITORY / "models"
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
    export_retries: int = 5  # C-STORE attempts after the first
    export_backoff_s: float = 2.0  # wait before retry n: backoff * 2**(n-1)
    inference_workers: int = 1  # worker processes `serve` starts for the inference queue
    job_timeout_s: float = 900.0  # a running job silent this long lost its worker: it is queued again
    min_free_spool_mb: int = 500  # below this much free space the listener refuses instances (0xA700)
    admin_host: str = "127.0.0.1"  # `lumbarnode admin` (page, JSON API, /metrics): loopback unless set
    admin_port: int = 8080
    # DICOM TLS (see dicom_io.tls): PEM files
    tls_cert: Path | None = None  # the node's certificate; with tls_key the listener speaks TLS only
    tls_key: Path | None = None  # its private key, unencrypted
    tls_ca: Path | None = None  # trusted CA: callers must present a certificate it issued; verifies the PACS
    export_tls: bool = False  # export over TLS (verifying the destination against tls_ca, presenting tls_cert)
    # where things live
    data_dir: Path = Path("var")  # relative paths are taken from the working directory
    spool_dir: Path | None = None  # default data_dir/spool
    results_dir: Path | None = None  # default data_dir/results
    database_url: str = ""  # SQLAlchemy URL; default sqlite:///data_dir/lumbarnode.db
    broker_url: str = ""  # Celery broker; default SQLite via kombu (sqla+sqlite:///data_dir/broker.db)

    def __post_init__(self) -> None:
        data = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data)
        object.__setattr__(self, "spool_dir", (self.spool_dir or data / "spool").expanduser().resolve())
        object.__setattr__(self, "results_dir", (self.results_dir or data / "results").expanduser().resolve())
        object.__setattr__(self, "database_url", self.database_url or f"sqlite:///{data / 'lumbarnode.db'}")
        object.__setattr__(self, "broker_url", self.broker_url or f"sqla+sqlite:///{data / 'broker.db'}")
        parse_callers(self.allowed_callers)  # fail at start, not at the first association
        if self.destination:
            Destination.parse(self.destination)
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port")
        if not 0 < len(self.ae_title) <= 16:
            raise ValueError(f"AE title {self.ae_title!r} must be 1 to 16 characters")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser().resolve())
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (the listener speaks TLS only) or neither")
        if self.export_tls and self.tls_ca is None:
            raise ValueError("export_tls needs tls_ca, the CA that the destination's certificate is verified against")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        config_file = environ.get(f"{_PREFIX}CONFIG_FILE")
        if config_file:
            with open(config_file, "rb") as handle:
                for key, raw in tomllib.load(handle).items():
                    values[_field(key, config_file).name] = raw
        for f in fields(cls):
            raw = environ.get(f"{_PREFIX}{f.name.upper()}")
            if raw is not None:
                values[f.name] = raw
        typed = {name: _parse(value, _field(name, "settings"), f"{_PREFIX}{name.upper()}")
                 for name, value in values.items()}
        return cls(**typed)

    def listener_tls(self) -> ssl.SSLContext | None:
        """The listener's TLS context (mutual TLS when tls_ca is set); None: plain TCP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return tls.server_context(self.tls_cert, self.tls_key, self.tls_ca)

    def export_tls_context(self) -> ssl.SSLContext | None:
        """The exports' TLS context; None: plain TCP."""
        return tls.client_context(self.tls_ca, self.tls_cert, self.tls_key) if self.export_tls else None

    def weights(self, model: str) -> Path:
        return self.model_dir / f"{model}.weights.h5"

    @property
    def callers(self) -> dict[str, Destination | None]:
        return parse_callers(self.allowed_callers)

    def return_address(self, calling_ae: str) -> Destination | None:
        """Where the results of a study from `calling_ae` go."""
        if self.destination:
            return Destination.parse(self.destination)
        return self.callers.get(calling_ae)

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


def _field(name: str, source: str):
    for f in fields(Settings):
        if f.name == name.lower():
            return f
    raise ValueError(f"{source}: unknown setting {name!r}")


def _parse(raw: object, f, name: str) -> object:
    if not isinstance(raw, str):
        return raw  # already typed (TOML)
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if "bool" in kind:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={raw!r}: expected true or false")
    if "Path" in kind:
        return Path(raw) if raw else None
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    return raw

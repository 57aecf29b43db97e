"""The `tracking` config node as a dataclass, free of MLflow imports: a run with tracking off stays light.

A password in the tracking URI (``http://user:pass@host``) is used to connect and never written, printed
or logged: ``redact_uri`` gives what appears instead. The same holds for the value of any ``api_key``
(``serve.api_key``, ``target.api_key``) wherever it stands in text: ``redact`` takes out both."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class TrackingSettings:
    enabled: bool = True
    uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch folder
    experiment: str = "rosebench"
    system_metrics: bool = True  # CPU, memory, disk, network (and GPU via nvidia-ml-py) every second
    artifacts: bool = True  # results.json, outputs.jsonl, .hydra/, profile/


def uri_password(uri: str | None) -> str | None:
    """The password in a URI's user info (``http://user:pass@host``), as written in the URI."""
    return urlsplit(uri).password if uri else None


def redact_uri(uri: str | None) -> str | None:
    """``http://user:***@host:port/...``: what rosebench writes, prints or logs instead of the URI."""
    return redact(uri) if uri else uri


# A URI's scheme and authority (user info and host), as it stands in text: a config file, an override
# (Hydra escapes its colons with a backslash in some places), a message.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<authority>[^\s/?#'\"]+)")


REDACTED = "***"  # what stands where a secret was

# An API key's value after its name: an override (serve.api_key=KEY), YAML (api_key: KEY), a dict's repr.
_API_KEY = re.compile(r"""(?P<name>\bapi_key['"]?\s*[=:]\s*)(?P<value>'[^']*'|"[^"]*"|[^\s,'"}\]]+)""")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it, and every ``api_key``'s value, replaced by ``***``,
    where it stands: found by reading each URI's authority (user info ends at its last ``@``) and each key's
    name, never by searching for the secret's text, which may be a short string found everywhere (``8``)."""

    def hide_key(match: re.Match[str]) -> str:
        if match["value"].strip("'\"") in ("null", "None", "~", ""):
            return match[0]
        return f"{match['name']}{REDACTED}"

    def hide(match: re.Match[str]) -> str:
        authority = match["authority"]
        if "@" not in authority:
            return match[0]
        user_info, host = authority.rsplit("@", 1)
        user, colon, _ = user_info.partition(":")
        if not colon:
            return match[0]
        return f"{match['scheme']}{user}:{REDACTED}@{host}"

    return _API_KEY.sub(hide_key, _AUTHORITY.sub(hide, text))


def describe_error(error: BaseException) -> str:
    """`Type: message` on one line, any URI's password taken out; a long message keeps its head and its tail
    (where the cause is). Redacted before it is cut: a cut through a URI could keep part of a password."""
    text = redact(" ".join(str(error).split()))
    if len(text) > 300:
        text = f"{text[:120]} ... {text[-170:]}"
    return f"{type(error).__name__}: {text}"


_redacting_logs = False


def redact_logs() -> None:
    """Take URI passwords out of every log record made in this process from now on (Hydra echoes each sweep
    job's overrides, the tracking URI included, to the console and to log files). A record factory, not
    a handler filter: Hydra's launchers reconfigure logging, and replace the handlers, after this runs."""
    global _redacting_logs
    if _redacting_logs:  # one factory per process, however many runs a pooled worker does
        return
    _redacting_logs = True
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(redacting_factory)
